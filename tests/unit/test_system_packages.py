"""Every program the code, tests and benchmarks look up is installed by ``make setup``.

A fresh machine once failed ``make test`` because the egress benchmark called
``mosquitto_sub`` and nothing installed it: the developers' machines had it by chance.
This reads the tree for the ways otaflow finds a program and checks each name against
:mod:`otaflow.dev.system_packages` (what set-up installs) or the machine the README asks for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from otaflow.dev import system_packages

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("otaflow", "streams", "connectors", "benchmarks", "tests", "examples")
# A program found by name: shutil.which or system_packages.find with a literal.
LOOKUP = re.compile(r"""(?:\bwhich|system_packages\.find)\(\s*["']([\w.+-]+)["']""")
# Interpreters the virtualenv or the machine always has.
ALWAYS_THERE = frozenset({"python3"})


def programs_named_in_tree() -> dict[str, list[str]]:
    named: dict[str, list[str]] = {}
    for folder in SOURCES:
        root = REPO / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            if path == Path(__file__).resolve():
                continue  # its own made-up names
            for match in LOOKUP.finditer(path.read_text(encoding="utf-8")):
                named.setdefault(match.group(1), []).append(str(path.relative_to(REPO)))
    return named


def test_the_scan_sees_the_lookups_it_guards() -> None:
    # Without these the check below would pass on an empty scan.
    named = programs_named_in_tree()
    assert "mosquitto_sub" in named
    assert "java" in named


def test_every_program_looked_up_is_installed_by_setup_or_asked_of_the_machine() -> None:
    provided = {program.name for program in system_packages.EVERYTHING}
    allowed = provided | system_packages.MACHINE_PROGRAMS | ALWAYS_THERE
    unprovided = {
        name: where for name, where in programs_named_in_tree().items() if name not in allowed
    }
    assert not unprovided, (
        "programs looked up but installed by nothing: add each to "
        f"otaflow.dev.system_packages.PROGRAMS: {unprovided}"
    )


def test_missing_lists_a_program_that_is_not_there() -> None:
    ghost = system_packages.Program("otaflow-no-such-program", "no-such-package")
    assert system_packages.missing([ghost]) == [ghost]
    assert system_packages.find("otaflow-no-such-program") is None


def test_ensure_installs_nothing_when_nothing_is_missing() -> None:
    present = system_packages.Program("python3", "python3")
    assert system_packages.ensure([present]) == []


def test_a_header_file_counts_as_found_by_its_path() -> None:
    # Headers are not executable; a file that exists at a listed path is there.
    header = next(p for p in system_packages.PLUGIN_BUILD if p.paths)
    if all(os.path.exists(path) for path in header.paths):
        assert system_packages.find(header.name) == header.paths[0]
    assert system_packages.missing([system_packages.Program("x.h", "pkg", (__file__,))]) == []
