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

import logging
import os
import signal
import threading
from typing import Any, NoReturn

log = logging.getLogger("otaflow.stop")


def stop_on_signals(stop: threading.Event, deadline_s: int) -> None:
    """SIGINT and SIGTERM set ``stop``; the first of them also has the kernel end the
    process ``deadline_s`` seconds later if it is still running (SIGALRM, default
    action). Nothing else in these processes may use ``signal.alarm``."""

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        armed = signal.alarm(0)  # a later signal keeps the first one's deadline
        signal.alarm(armed or deadline_s)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)


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
