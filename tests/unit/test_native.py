"""Compiled builds of the hot-path modules (otaflow.native): used while they match their
source, never when they do not, and built by ``make setup``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otaflow import native
from otaflow.dev import native as native_build

FORCED_SOURCE = os.environ.get(native.DISABLE_ENV) == "0"


MODULES = ["hotpkg.hot", "hotpkg.caller"]
CALLER = "from hotpkg.hot import answer\n\n\ndef ask() -> int:\n    return answer()\n"


def _package(root: Path, body: str) -> None:
    """``hotpkg.hot`` with ``body``, and ``hotpkg.caller``, which calls it."""
    package = root / "hotpkg"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "hot.py").write_text(textwrap.dedent(body))
    (package / "caller.py").write_text(CALLER)


def _import_hot(root: Path, manifest: Path, env: dict[str, str] | None = None) -> list[str]:
    """In a fresh interpreter, as ``otaflow.native.install`` does for ``MODULES``: what
    ``answer()`` returns, called directly and through ``caller``, and whether each
    module is compiled."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from otaflow import native
        modules = {MODULES!r}
        compiled = native.runs_compiled(modules, Path({str(manifest)!r}), Path({str(root)!r}))
        from_source = frozenset() if compiled else frozenset(modules)
        sys.meta_path.insert(0, native.SourceFinder(from_source))
        sys.path.insert(0, {str(root)!r})
        import hotpkg.caller, hotpkg.hot
        print(hotpkg.hot.answer(), hotpkg.caller.ask(),
              native.compiled(hotpkg.hot), native.compiled(hotpkg.caller))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, native.DISABLE_ENV: "1", **(env or {})},
    )
    return out.stdout.split()


@pytest.mark.skipif(bool(native_build.missing_tools()), reason="no compiler on this machine")
def test_a_compiled_build_runs_only_while_its_source_is_the_one_it_was_built_from(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "build" / "manifest.json"
    _package(tmp_path, "def answer() -> int:\n    return 1\n")
    assert native_build.build(MODULES, tmp_path, manifest)
    assert json.loads(manifest.read_text())["modules"]["hotpkg.hot"] == native.source_digest(
        tmp_path / "hotpkg" / "hot.py"
    )
    # Beside their sources, the extensions are what Python imports.
    assert _import_hot(tmp_path, manifest) == ["1", "1", "True", "True"]
    # Forced to source.
    forced = _import_hot(tmp_path, manifest, {native.DISABLE_ENV: "0"})
    assert forced == ["1", "1", "False", "False"]
    # hot.py changed and nobody rebuilt: its new source runs, called directly and through
    # the caller, whose own source did not change (compiled, it would call the old
    # compiled answer).
    _package(tmp_path, "def answer() -> int:\n    return 2\n")
    assert _import_hot(tmp_path, manifest) == ["2", "2", "False", "False"]
    # Without a manifest nothing is vouched for.
    manifest.unlink()
    assert _import_hot(tmp_path, manifest) == ["2", "2", "False", "False"]


def test_only_digests_that_match_every_source_vouch_for_the_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)
    _package(tmp_path, "X = 1\n")
    digest = native.source_digest(tmp_path / "hotpkg" / "hot.py")
    manifest = tmp_path / "manifest.json"
    (tmp_path / "hotpkg" / "cold.py").write_text("Y = 1\n")
    cold = native.source_digest(tmp_path / "hotpkg" / "cold.py")
    both = ["hotpkg.hot", "hotpkg.cold"]
    manifest.write_text(json.dumps({"modules": {"hotpkg.hot": digest, "hotpkg.cold": cold}}))
    assert native.runs_compiled(both, manifest, tmp_path)
    # One edited module makes them all load from source (they call each other compiled).
    (tmp_path / "hotpkg" / "cold.py").write_text("Y = 2\n")
    assert not native.runs_compiled(both, manifest, tmp_path)
    manifest.write_text(json.dumps({"modules": {"hotpkg.hot": digest}}))
    assert not native.runs_compiled(both, manifest, tmp_path)  # one never built
    manifest.write_text(json.dumps({"modules": {"hotpkg.hot": "0" * 64}}))
    assert not native.runs_compiled(["hotpkg.hot"], manifest, tmp_path)
    manifest.write_text("not json")
    assert not native.runs_compiled(["hotpkg.hot"], manifest, tmp_path)
    manifest.write_text(json.dumps({"modules": {"hotpkg.hot": digest}}))
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    assert not native.runs_compiled(["hotpkg.hot"], manifest, tmp_path)
    # Forced to source, the build is still up to date: make setup does not compile again.
    assert native.built_from_sources(["hotpkg.hot"], manifest, tmp_path)


def test_the_source_finder_answers_for_its_modules_only(tmp_path: Path) -> None:
    _package(tmp_path, "X = 1\n")
    finder = native.SourceFinder(frozenset({"hotpkg.hot"}))
    spec = finder.find_spec("hotpkg.hot", [str(tmp_path / "hotpkg")])
    assert spec is not None and spec.origin == str(tmp_path / "hotpkg" / "hot.py")
    assert finder.find_spec("hotpkg.other", [str(tmp_path / "hotpkg")]) is None
    assert finder.find_spec("hotpkg.hot", [str(tmp_path)]) is None  # no such file there


@pytest.mark.skipif(
    FORCED_SOURCE or bool(native_build.missing_tools()), reason="from source in this run"
)
def test_make_setup_compiled_the_hot_path_modules_this_suite_runs() -> None:
    import streams.device_envelopes
    import streams.envelope_store  # noqa: F401

    source = [name for name in native.MODULES if not native.compiled(sys.modules[name])]
    assert source == [], f"{native.summary()}: run `make setup` after editing them"
