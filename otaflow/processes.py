"""Start and stop otaflow's processes together (what ``otaflow up`` and the demo run).

Each component is its own OS process (worker with its batcher, ingress, egress, API):
that is how they scale (run more of any) and how a crash stays contained. Children
die with their parent (PR_SET_PDEATHSIG), so Ctrl-C or a killed ``otaflow up``
never leaves orphans behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from otaflow import bounded_stop

REPO = Path(__file__).resolve().parent.parent

COMPONENTS: dict[str, list[str]] = {
    "worker": ["-m", "streams.worker"],
    "ingress": ["-m", "connectors.ingress"],
    "egress": ["-m", "connectors.egress"],
    "file-download": ["-m", "connectors.file_download"],
    "api": ["-m", "otaflow.api_main"],
    "console": ["-m", "otaflow.web.console"],
}


class ProcessGroup:
    def __init__(self, env: Mapping[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONPATH", str(REPO))
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._pumps: list[threading.Thread] = []

    def start(
        self,
        name: str,
        args: list[str] | None = None,
        echo: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start ``name`` (``env``: variables for this process only, over the group's)."""
        argv = [sys.executable, *(args or COMPONENTS[name])]
        out: int | IO[bytes]
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{name}.log").open("ab")
        else:
            out = subprocess.PIPE
        proc = subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=bounded_stop.die_with_parent,
        )
        self.procs[name] = proc
        if out is subprocess.PIPE and echo:
            pump = threading.Thread(target=self._pump, args=(name, proc), daemon=True)
            pump.start()
            self._pumps.append(pump)

    @staticmethod
    def _pump(name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            text = line.decode(errors="replace").rstrip()
            if text:
                print(f"{name:>8} | {text}", flush=True)

    def exited(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def stop(self, timeout: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
