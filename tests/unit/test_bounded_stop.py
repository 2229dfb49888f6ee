"""A stop is bounded: a close that never finishes is left behind, and after SIGTERM the
kernel ends a process whose Python never gets back to it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from otaflow import bounded_stop

REPO = Path(__file__).resolve().parents[2]


class _Client:
    def __init__(self, finishes: bool) -> None:
        self.finishes = finishes
        self.release = threading.Event()

    def close(self) -> None:
        if not self.finishes:
            self.release.wait()  # as a librdkafka close that never returns


def test_a_close_that_finishes_is_reported_closed() -> None:
    assert bounded_stop.close_within(_Client(finishes=True), 5.0, "client")


def test_a_close_that_never_finishes_is_left_after_its_bound() -> None:
    client = _Client(finishes=False)
    started = time.monotonic()
    try:
        assert not bounded_stop.close_within(client, 0.2, "client")
        assert time.monotonic() - started < 5.0
    finally:
        client.release.set()


# A process whose main thread, after SIGTERM, waits on something that never comes (as a
# librdkafka destroy at Python's exit does).
_STUCK_AFTER_SIGTERM = """
import sys, threading
from otaflow import bounded_stop
stop = threading.Event()
bounded_stop.stop_on_signals(stop, 1)
print("ready", flush=True)
stop.wait()
threading.Event().wait()
"""


def test_the_kernel_ends_a_process_stuck_after_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUCK_AFTER_SIGTERM], cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15.0
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode == -signal.SIGALRM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
