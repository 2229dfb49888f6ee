"""A stop is bounded: a close that never finishes is left behind, and after SIGTERM the
kernel ends a process whose Python never gets back to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from otaflow import bounded_stop
from otaflow.dev import devstack

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


# A SIGTERM that arrives while the main thread holds the stop event's lock: as when the
# handler that runs for one signal of a burst is inside ``stop.set()`` when the next
# arrives. A handler that set the event itself waited for that lock for ever.
_SIGNAL_WHILE_THE_EVENT_IS_LOCKED = """
import os, signal, threading, time
from otaflow import bounded_stop
stop = threading.Event()
bounded_stop.stop_on_signals(stop, 5)
with stop._cond:  # CPython's Event: the lock its set() holds
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):
        time.sleep(0.001)  # Python runs signal handlers between these
print("stopped" if stop.wait(5) else "not stopped", flush=True)
"""


def test_a_signal_while_the_stop_event_is_locked_still_stops_the_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_WHILE_THE_EVENT_IS_LOCKED],
        cwd=REPO,
        capture_output=True,
        timeout=30,
    )
    assert (proc.returncode, proc.stdout) == (0, b"stopped\n")


# The batcher's case: its worker, a process with many threads, is killed with SIGKILL and
# PR_SET_PDEATHSIG sends the batcher a burst of SIGTERMs.
_CHILD = """
import threading, time
from otaflow import bounded_stop
stop = threading.Event()
bounded_stop.stop_on_signals(stop, 20)
print("ready", flush=True)
while not stop.is_set():
    time.sleep(0.001)
print("stopped", flush=True)
"""
_MANY_THREADED_PARENT = """
import subprocess, sys, threading, time
from otaflow import bounded_stop
child = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1]], preexec_fn=bounded_stop.die_with_parent,
    stdout=open(sys.argv[2], "wb"),
)
for _ in range(40):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_child_whose_many_threaded_parent_is_killed_stops_on_its_own(tmp_path: Path) -> None:
    for trial in range(5):
        out = tmp_path / f"child{trial}.out"
        parent = subprocess.Popen(
            [sys.executable, "-c", _MANY_THREADED_PARENT, _CHILD, str(out)],
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 15.0
        while b"ready" not in out.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        parent.kill()
        parent.wait(10)
        # The child is the init process's now: it is gone from /proc once it ends.
        while devstack.pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            assert not devstack.pid_alive(child), f"trial {trial}: the orphan still runs"
            assert out.read_bytes() == b"ready\nstopped\n", f"trial {trial}"
        finally:
            if devstack.pid_alive(child):
                os.kill(child, signal.SIGKILL)
