"""Stopping a Kafka process within a bound, whatever the brokers and topics do.

librdkafka can wait a long time, or forever, on the way out: a producer flush for
envelopes whose topic was deleted waits for its timeout, and a consumer close racing
a topic deletion can wait forever (librdkafka#4362), as can destroying the client
when Python exits. A batcher whose worker was SIGKILLed (PR_SET_PDEATHSIG sends it
SIGTERM) then stayed alive, orphaned, minutes later. So:

- every wait on the stop path has its own short bound (``close_within``), and a
  process whose clients did not finish leaves without destroying them (``exit_now``);
- as a backstop, the first SIGINT or SIGTERM arms ``signal.alarm``: SIGALRM's default
  action is the kernel's, so the process ends ``deadline_s`` later even when Python
  itself waits (a hung interpreter shutdown runs no Python code, so no Python timer
  would fire).

Leaving without the last commit is safe in otaflow: every process commits source
offsets only after what it produced from them was acknowledged, so what was not
committed is read again by the next owner, whose consumer (the device agent, the
egress) skips or re-sends what it already has.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
from typing import Any, NoReturn

log = logging.getLogger("otaflow.stop")

PR_SET_PDEATHSIG = 1


def stop_on_signals(stop: threading.Event, deadline_s: int) -> None:
    """SIGINT and SIGTERM set ``stop``; the first of them also has the kernel end the
    process ``deadline_s`` seconds later if it is still running (SIGALRM, default
    action). Nothing else in these processes may use ``signal.alarm`` or
    ``signal.set_wakeup_fd``. Call it from the main thread.

    The Python-level handler does nothing: ``stop`` is set, and the deadline armed, by a
    thread that the signal wakes through ``signal.set_wakeup_fd``. A handler runs in the
    main thread between any two bytecodes, including inside itself, and a worker killed
    with SIGKILL sends its batcher not one SIGTERM but a burst (the kernel sends
    PR_SET_PDEATHSIG again each time the orphan is handed to another of the dying
    process's threads). A handler that called ``stop.set()`` was, now and then,
    interrupted while it held the event's lock by another call of itself, which then
    waited for that lock for ever: 3 of 30 such children of a SIGKILLed 40-thread parent
    hung (the alarm not armed yet), and an orphaned batcher kept its dead worker's partitions
    from the survivor for minutes. The wake-up byte is written by CPython's C handler, so
    nothing on the signal path takes a lock."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)

    def relay() -> None:
        # The pipe has a byte (the signal's number) for every signal that has a Python
        # handler; the first SIGINT or SIGTERM is the stop, later ones are left there.
        while os.read(wake_read, 1)[0] not in (signal.SIGINT, signal.SIGTERM):
            pass
        arm_deadline(deadline_s)
        stop.set()

    threading.Thread(target=relay, name="stop-signals", daemon=True).start()
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _wake_only)


def _wake_only(signum: int, frame: Any) -> None:
    """The Python-level handler: the wake-up fd has the signal already (stop_on_signals)."""


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive its parent, even one killed with
    SIGKILL: PR_SET_PDEATHSIG has the kernel send it SIGTERM (more than once: see
    ``stop_on_signals``)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def arm_deadline(deadline_s: int) -> None:
    """End the process ``deadline_s`` from now at the latest (a stop without a signal:
    an error on the way out), unless a deadline is already armed."""
    armed = signal.alarm(0)
    signal.alarm(armed or deadline_s)


def close_within(client: Any, seconds: float, what: str) -> bool:
    """``client.close()`` in a helper thread; whether it finished within ``seconds``.
    When it did not, the caller should leave with ``exit_now``: the client may never
    finish, and destroying it at Python's exit would wait on the same thing."""
    closer = threading.Thread(target=client.close, name=f"close-{what}", daemon=True)
    closer.start()
    closer.join(seconds)
    if closer.is_alive():
        log.warning("%s did not close within %.0f s; leaving without it", what, seconds)
        return False
    return True


def exit_now(code: int) -> NoReturn:
    """End the process at once: logs flushed, no Python shutdown (which would destroy
    Kafka clients still waiting inside librdkafka, and wait with them)."""
    logging.shutdown()
    os._exit(code)
