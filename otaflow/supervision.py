"""``otaflow up`` keeps its components running: one that exits is started again.

A component exiting used to stop every other one with it, so one bad input in one
process took the whole deployment down. Now each is restarted on its own, after a delay
that doubles with each exit in a row (1 s, 2 s, 4 s ... at most 30 s), so a component
that cannot start (a broker away, a port taken) is retried without spinning the CPU and
its log is not flooded; a component that then ran for a minute counts as healthy again
and its next exit is retried after 1 s. Every exit and restart is logged with its code.

The policy (:class:`RestartBackoff`) is plain and clocked from outside, so it is tested
without processes; :class:`Supervisor` applies it to a :class:`ProcessGroup`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from otaflow.processes import ProcessGroup

log = logging.getLogger("otaflow.up")

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
HEALTHY_AFTER_S = 60.0


@dataclass
class RestartBackoff:
    """When to start a component again after it exits."""

    first_delay_s: float = FIRST_DELAY_S
    max_delay_s: float = MAX_DELAY_S
    healthy_after_s: float = HEALTHY_AFTER_S
    _exits_in_a_row: int = 0
    _started_at: float = 0.0

    def started(self, now: float) -> None:
        self._started_at = now

    def exited(self, now: float) -> float:
        """Record an exit at ``now``; returns the delay before the next start."""
        if now - self._started_at >= self.healthy_after_s:
            self._exits_in_a_row = 0
        self._exits_in_a_row += 1
        return min(self.max_delay_s, self.first_delay_s * 2 ** (self._exits_in_a_row - 1))

    @property
    def exits_in_a_row(self) -> int:
        return self._exits_in_a_row


@dataclass
class Supervisor:
    """Starts ``names`` in ``group`` and restarts any that exits, with :class:`RestartBackoff`."""

    group: ProcessGroup
    names: list[str]
    # argv after the interpreter, per name; COMPONENTS' when absent.
    commands: dict[str, list[str]] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    backoffs: dict[str, RestartBackoff] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)  # name -> when to start it again
    restarts: int = 0

    def start_all(self) -> None:
        for name in self.names:
            self._start(name)

    def _start(self, name: str) -> None:
        self.group.start(name, self.commands.get(name))
        self.backoffs.setdefault(name, RestartBackoff()).started(self.clock())

    def check(self) -> None:
        """Notice exits and start what is due; call it every fraction of a second."""
        now = self.clock()
        for name, code in self.group.exited().items():
            if name in self.due:
                continue
            delay = self.backoffs[name].exited(now)
            self.due[name] = now + delay
            log.warning(
                "%s exited with code %s; starting it again in %.0f s (exit %d in a row)",
                name,
                code,
                delay,
                self.backoffs[name].exits_in_a_row,
            )
        for name, when in list(self.due.items()):
            if now >= when:
                del self.due[name]
                del self.group.procs[name]
                self.restarts += 1
                log.warning("starting %s again", name)
                self._start(name)
