"""The programs otaflow, its tests and its benchmarks run, and the Debian packages that bring them.

One list, so a fresh machine gets everything from ``make setup`` (``otaflow devstack up``
calls :func:`ensure`): a program that only a developer's machine happened to have once
kept CI green while a new machine failed (``mosquitto_sub``, used by the egress
benchmark that ``make test`` runs). ``tests/unit/test_system_packages.py`` reads the
source tree for programs looked up by name and checks that every program named there is
either here or part of the machine the README asks for (JDK, Maven, apt itself).

Installing needs root and apt-get; elsewhere :func:`ensure` says which packages to
install by hand and fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass

APT_TIMEOUT_S = 900


class SystemPackageError(RuntimeError):
    """A program otaflow needs is missing and could not be installed."""


@dataclass(frozen=True)
class Program:
    """A program found on PATH (or a file at one of ``paths``, such as a header), installed
    by Debian ``package``."""

    name: str
    package: str
    paths: tuple[str, ...] = ()


# Programs the provisioning scripts, the connectors' tests and the benchmarks call.
PROGRAMS: tuple[Program, ...] = (
    Program("mosquitto", "mosquitto", ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")),
    # The egress benchmark counts what the broker delivers with the broker's own C client,
    # so the instrument costs little next to what it measures.
    Program("mosquitto_sub", "mosquitto-clients"),
    Program("mosquitto_pub", "mosquitto-clients"),
    # A real third-party Kafka client: the integration tests read the public JSON topics
    # with it, as a team's own tools would (docs/kafka-integration.md).
    Program("kcat", "kcat"),
    # The web console's browser test drives Debian's Chromium headless with Playwright
    # (Playwright's own browser download cannot work here).
    Program("chromium", "chromium", ("/usr/bin/chromium",)),
    # The README's CLI walkthrough picks ids out of `--json` answers with it (its blocks
    # run in tests/integration/test_readme.py).
    Program("jq", "jq"),
)

# What building the broker's device-authentication plugin takes (otaflow.edge.broker):
# the compiler, and header files, found by path.
PLUGIN_BUILD: tuple[Program, ...] = (
    Program("gcc", "gcc"),
    Program("mosquitto_broker.h", "mosquitto-dev", ("/usr/include/mosquitto_broker.h",)),
    Program("mosquitto.h", "libmosquitto-dev", ("/usr/include/mosquitto.h",)),
    Program("openssl/hmac.h", "libssl-dev", ("/usr/include/openssl/hmac.h",)),
)

# Everything `make setup` installs (otaflow devstack up builds the plugin too).
EVERYTHING: tuple[Program, ...] = PROGRAMS + PLUGIN_BUILD

# Programs the README asks of the machine itself (Debian 12 with JDK 17 and Maven): not
# installed by otaflow, checked with a clear message where they are used.
MACHINE_PROGRAMS: frozenset[str] = frozenset({"java", "mvn", "apt-get", "git"})


def locate(program: Program) -> str | None:
    """Where ``program`` is: on PATH, or the first of its ``paths`` that exists."""
    found = shutil.which(program.name)
    if found:
        return found
    return next((path for path in program.paths if os.path.exists(path)), None)


def find(name: str) -> str | None:
    """The path of program ``name`` (one of :data:`EVERYTHING`, or any on PATH), or None."""
    known = next((program for program in EVERYTHING if program.name == name), None)
    return locate(known) if known is not None else shutil.which(name)


def missing(programs: Iterable[Program] = EVERYTHING) -> list[Program]:
    return [program for program in programs if locate(program) is None]


def ensure(programs: Iterable[Program] = EVERYTHING) -> list[str]:
    """Install the Debian packages of every missing program, in one apt-get run.

    Returns the packages installed (empty when nothing was missing).
    """
    absent = missing(programs)
    packages = sorted({program.package for program in absent})
    if not packages:
        return []
    names = ", ".join(program.name for program in absent)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemPackageError(
            f"missing {names}; install the Debian packages yourself "
            f"(`sudo apt-get install -y {' '.join(packages)}` or your system's equivalent)"
        )
    print(
        f"devstack: installing {' '.join(packages)} with apt-get ...", file=sys.stderr, flush=True
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        try:
            result = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise SystemPackageError(
                f"`{' '.join(cmd)}` did not finish in {APT_TIMEOUT_S}s"
            ) from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()[-20:]
            raise SystemPackageError(
                f"`{' '.join(cmd)}` failed (exit {result.returncode}), so {names} could not "
                "be installed:\n  " + "\n  ".join(output)
            )
    still = missing(absent)
    if still:
        raise SystemPackageError(
            "apt-get installed "
            + " ".join(packages)
            + ", yet these are still missing: "
            + ", ".join(program.name for program in still)
        )
    return packages
