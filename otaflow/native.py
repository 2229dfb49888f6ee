"""Compiled builds of the hot-path modules, used only while they match their source.

The device agent's per-report work (parse a version report, splice the device's new
state, the envelope loop around it) is plain Python, and at fleet scale it was the
worker's whole budget. ``make setup`` compiles these modules, unchanged, with mypyc
(``otaflow.dev.native``): the extension modules sit beside their ``.py`` files, and
Python imports an extension before a source file of the same name. One source stays
the one definition; the compiled build only runs it faster (figures in
docs/compiled-hot-path.md).

A compiled module runs the source it was built from, not the one in the tree now. So
a build records each source's SHA-256 in a manifest, and ``install`` (run by
``import otaflow`` and ``import streams``, before any of these modules is imported)
makes them all load from their ``.py`` unless the manifest vouches for every one: an
edited source without a rebuild is slower, never stale. ``OTAFLOW_NATIVE=0`` loads
them all from source (``make test`` runs the byte-path tests that way too, so the
fallback stays tested).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# Compiled by ``make setup``: the device agent's byte paths (a plain device's version
# report, a START over plain devices) and its envelope loop.
MODULES: tuple[str, ...] = (
    "otaflow.device_avro",
    "otaflow.plain_reports",
    "otaflow.start_splicer",
    "streams.envelope_store",
    "streams.device_envelopes",
)
ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "build" / "native" / "manifest.json"
DISABLE_ENV = "OTAFLOW_NATIVE"


def source_path(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(path: Path = MANIFEST) -> dict[str, str]:
    """Module name -> SHA-256 of the source its extension was built from."""
    try:
        built = json.loads(path.read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return built if isinstance(built, dict) else {}


def built_from_sources(
    modules: Sequence[str] = MODULES, manifest: Path = MANIFEST, root: Path = ROOT
) -> bool:
    """Was every module's compiled build made from its source as it is now?"""
    built = read_manifest(manifest)
    for module in modules:
        source = source_path(module, root)
        if module not in built or not source.exists() or built[module] != source_digest(source):
            return False
    return True


def runs_compiled(
    modules: Sequence[str] = MODULES, manifest: Path = MANIFEST, root: Path = ROOT
) -> bool:
    """Do ``modules`` run compiled: every one's build made from its source as it is now,
    and ``OTAFLOW_NATIVE`` not 0?

    All or none: compiled modules built together call each other's compiled functions
    directly, so a module that loads from source because it was edited would leave its
    old compiled code running behind the others.
    """
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return False
    return built_from_sources(modules, manifest, root)


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds ``modules`` as their ``.py`` files, ahead of any extension beside them."""

    def __init__(self, modules: frozenset[str]) -> None:
        self.modules = modules

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path or ():
            source = Path(entry) / f"{leaf}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


_installed: SourceFinder | None = None


def install() -> None:
    """Make the modules of ``MODULES`` load from source unless a fresh build vouches
    for all of them (once per process; before any of them is imported)."""
    global _installed
    if _installed is not None:
        return
    _installed = SourceFinder(frozenset() if runs_compiled() else frozenset(MODULES))
    sys.meta_path.insert(0, _installed)


def compiled(module: ModuleType) -> bool:
    """Is this imported module an extension (a compiled build)?"""
    return not str(getattr(module, "__file__", "")).endswith(".py")


def summary() -> str:
    """For a process's start-up log: which hot-path modules run compiled."""
    loaded = [name for name in MODULES if name in sys.modules]
    native = [name for name in loaded if compiled(sys.modules[name])]
    if not loaded:
        return "hot-path modules: none imported"
    if len(native) == len(loaded):
        return f"hot-path modules compiled ({len(native)} of {len(loaded)})"
    source = sorted(set(loaded) - set(native))
    return (
        f"hot-path modules compiled: {len(native)} of {len(loaded)}; from source: "
        f"{', '.join(source)} (run `make setup` to build them; {DISABLE_ENV}=0 forces source)"
    )
