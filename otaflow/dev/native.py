"""``python -m otaflow.dev.native``: compile the hot-path modules with mypyc (``make setup``).

Builds ``otaflow.native.MODULES`` from their unchanged sources into extension modules
beside them, then records each source's SHA-256 in the manifest that lets the runtime
use them (``otaflow.native``). Idempotent: nothing is built while the manifest matches
every source and every extension is in place.

mypyc comes with mypy (a dev dependency); the compiler is Debian's gcc, which ``make
setup`` installs (``otaflow.dev.system_packages``). Without a compiler or the
interpreter's headers this says so and leaves the modules to run from source: slower,
the same results.

Each extension is built under ``build/native`` and then moved into place with a
rename, so a worker running while ``make setup`` runs again keeps the file it mapped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

from otaflow import native


def missing_tools() -> list[str]:
    """What compiling needs and this machine lacks."""
    missing = []
    if shutil.which("gcc") is None:
        missing.append("gcc (make setup installs it)")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        missing.append(f"the interpreter's headers ({headers}; Debian: python3-dev)")
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        missing.append("mypyc (pip install -e '.[dev]')")
    return missing


def up_to_date(modules: Sequence[str], root: Path, manifest: Path) -> bool:
    # Whatever OTAFLOW_NATIVE says: it chooses what runs, not what needs building.
    if not native.built_from_sources(modules, manifest, root):
        return False
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return all(native.source_path(m, root).with_suffix(suffix).exists() for m in modules)


def build(
    modules: Sequence[str] = native.MODULES,
    root: Path = native.ROOT,
    manifest: Path = native.MANIFEST,
    force: bool = False,
) -> bool:
    """Compile ``modules`` (their sources under ``root``) and vouch for them in
    ``manifest``; False (with the reason printed) when this machine cannot, and the
    modules run from source."""
    if not force and up_to_date(modules, root, manifest):
        print("hot-path modules: compiled builds are up to date")
        return True
    missing = missing_tools()
    if missing:
        print(f"hot-path modules run from source; to compile them install: {', '.join(missing)}")
        return False
    from mypyc.build import mypycify
    from setuptools.dist import Distribution

    started = time.monotonic()
    sources = {m: native.source_path(m, root) for m in modules}
    digests = {m: native.source_digest(path) for m, path in sources.items()}
    build_dir = manifest.parent
    lib = build_dir / "lib"
    shutil.rmtree(lib, ignore_errors=True)
    here = Path.cwd()
    os.chdir(root)  # mypyc names the modules by their paths from here
    try:
        extensions = mypycify(
            [str(path.relative_to(root)) for path in sources.values()],
            opt_level="3",
            # One shared library per module, so each is replaced on its own.
            separate=True,
            target_dir=str(build_dir / "c"),
        )
        # A bare Distribution: setuptools must not read pyproject.toml for this.
        dist = Distribution({"name": "otaflow-native", "ext_modules": extensions})
        command = dist.get_command_obj("build_ext")
        command.build_lib = str(lib)
        command.build_temp = str(build_dir / "temp")
        dist.run_command("build_ext")
    finally:
        os.chdir(here)
    for built in sorted(lib.rglob("*.so")):
        target = root / built.relative_to(lib)
        staged = target.with_name(f".{target.name}.new")
        shutil.copy2(built, staged)
        os.replace(staged, target)  # a new file: running processes keep the old one
    manifest.write_text(
        json.dumps({"python": sys.version.split()[0], "modules": digests}, indent=2) + "\n"
    )
    took = time.monotonic() - started
    print(f"hot-path modules: compiled {len(sources)} with mypyc in {took:.0f} s")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="build even if up to date")
    args = parser.parse_args(argv)
    build(force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
