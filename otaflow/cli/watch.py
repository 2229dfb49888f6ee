"""``otaflow batch watch JOB``: a batch's live board in the terminal until it completes.

Every ``--interval`` seconds one QueryOTAJob (the batch's settings and its ``Statistics``
from the API's task view) redraws the board: tasks per status with bars, how many are
finished, the push rate achieved over the last minute against the configured one, and
the batch's status. The watch ends, with status 0, when the batch is COMPLETED or
CANCELED, or when a static batch has tasks and none of them is unfinished on two polls
in a row with the same number of tasks (a partition may still be creating tasks when the
others are done). Dynamic batches keep matching new devices: watch those until Ctrl-C,
or give ``--until-idle`` to end the same way as a static batch (once it has tasks and all
of them have ended). Off a terminal (a pipe, a log) it prints one line per change instead
of redrawing.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

STATUSES = ("Confirm", "Queued", "Notified", "InProgress", "Succeeded", "Failed", "Canceled")
UNFINISHED = ("Confirm", "Queued", "Notified", "InProgress")
# Tasks that have had their push (or pulled their update): the rate counts these.
PUSHED = ("Notified", "InProgress", "Succeeded", "Failed")
FINAL_JOB_STATUSES = ("COMPLETED", "CANCELED")
BAR_WIDTH = 30
RATE_WINDOW_S = 60.0


@dataclass
class Snapshot:
    at: float
    job: dict[str, Any]

    @property
    def stats(self) -> Mapping[str, int]:
        stats: Mapping[str, int] = self.job.get("Statistics") or {}
        return stats

    def count(self, status: str) -> int:
        return int(self.stats.get(status, 0))

    @property
    def total(self) -> int:
        return sum(self.count(s) for s in STATUSES)

    @property
    def unfinished(self) -> int:
        return sum(self.count(s) for s in UNFINISHED)

    @property
    def pushed(self) -> int:
        return sum(self.count(s) for s in PUSHED)


@dataclass
class Watch:
    """What the board knows across polls (pure: fed snapshots, no I/O)."""

    history: deque[Snapshot] = field(default_factory=deque)
    done_polls: int = 0
    until_idle: bool = False  # a dynamic batch ends too once its tasks have all ended

    def add(self, snapshot: Snapshot) -> None:
        previous = self.history[-1] if self.history else None
        self.history.append(snapshot)
        while self.history and snapshot.at - self.history[0].at > RATE_WINDOW_S:
            self.history.popleft()
        if not self.finished_now(snapshot):
            self.done_polls = 0
        elif previous is not None and previous.total == snapshot.total:
            self.done_polls += 1
        else:
            self.done_polls = 1

    def finished_now(self, snapshot: Snapshot) -> bool:
        job = snapshot.job
        if job.get("JobStatus") in FINAL_JOB_STATUSES:
            return True
        static = job.get("SelectionType") == "STATIC"
        return (static or self.until_idle) and snapshot.total > 0 and snapshot.unfinished == 0

    @property
    def complete(self) -> bool:
        last = self.history[-1] if self.history else None
        if last is not None and last.job.get("JobStatus") in FINAL_JOB_STATUSES:
            return True
        return self.done_polls >= 2

    def pushes_per_minute(self) -> float | None:
        """Pushes per minute over the window the history covers (None: too short)."""
        if len(self.history) < 2:
            return None
        first, last = self.history[0], self.history[-1]
        seconds = last.at - first.at
        if seconds <= 0:
            return None
        return max(0, last.pushed - first.pushed) * 60.0 / seconds


def board(watch: Watch) -> Group:
    """The board for the latest snapshot (fits 80 columns)."""
    last = watch.history[-1]
    job = last.job
    total = last.total
    title = (
        f"batch {job.get('JobId', '?')} · {job.get('ProductKey', '?')} → "
        f"{job.get('DestVersion', '?')} · {job.get('SelectionType', '?')} "
        f"{job.get('TargetSelection', '')} · {job.get('JobStatus', '?')}"
    )
    table = Table(title=title, show_edge=False, title_justify="left")
    table.add_column("status", min_width=10)
    table.add_column("tasks", justify="right", min_width=9)
    table.add_column("share", justify="right", min_width=6)
    table.add_column("", min_width=BAR_WIDTH, max_width=BAR_WIDTH)
    for status in STATUSES:
        n = last.count(status)
        share = n / total if total else 0.0
        table.add_row(status, f"{n:,}", f"{share:6.1%}", "█" * round(BAR_WIDTH * share))
    finished = total - last.unfinished
    rate = watch.pushes_per_minute()
    planned = job.get("MaximumPerMinute")
    achieved = "…" if rate is None else f"{rate:,.0f}/min"
    line = f"{finished:,}/{total:,} finished · pushes {achieved}"
    if planned is not None:
        line += f" (rate {int(planned):,}/min"
        if job.get("RateType") == "variable":
            line += f", from {int(job.get('BaseRatePerMinute') or 0):,}"
        line += ")"
    return Group(table, Text(line))


def summary_line(watch: Watch) -> str:
    last = watch.history[-1]
    counts = " ".join(f"{s}={last.count(s)}" for s in STATUSES if last.count(s))
    rate = watch.pushes_per_minute()
    pushes = "" if rate is None else f" pushes={rate:.0f}/min"
    return f"{last.job.get('JobId')} {last.job.get('JobStatus')} {counts or 'no tasks'}{pushes}"


def watch_batch(
    query: Callable[[], dict[str, Any]],
    console: Console,
    interval: float = 2.0,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    until_idle: bool = False,
) -> int:
    """Poll ``query`` (one QueryOTAJob's ``Data``) and draw until the batch completes;
    0 when it did, 2 when ``timeout`` passed first."""
    watch = Watch(until_idle=until_idle)
    started = clock()
    watch.add(Snapshot(clock(), query()))
    if console.is_terminal:
        with Live(board(watch), console=console, refresh_per_second=4) as live:
            while not watch.complete:
                if timeout is not None and clock() - started > timeout:
                    return 2
                sleep(interval)
                watch.add(Snapshot(clock(), query()))
                live.update(board(watch))
        return 0
    printed = ""
    while True:
        line = summary_line(watch)
        if line != printed:
            console.print(line, highlight=False, soft_wrap=True)
            printed = line
        if watch.complete:
            console.print(board(watch))
            return 0
        if timeout is not None and clock() - started > timeout:
            return 2
        sleep(interval)
        watch.add(Snapshot(clock(), query()))


def batch_watch(c: Any, a: argparse.Namespace, out: Callable[[Any], None]) -> Any:
    """``otaflow batch watch`` through ``ops.run`` (the client and error handling)."""

    def query() -> dict[str, Any]:
        data: dict[str, Any] = c.call("QueryOTAJob", {"JobId": a.job_id})["Data"]
        return data

    status = watch_batch(
        query, Console(), interval=a.interval, timeout=a.timeout, until_idle=a.until_idle
    )
    if status:
        raise SystemExit(status)
    return {"JobId": a.job_id, "Watched": True}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    p.add_argument("--timeout", type=float, help="give up (exit 2) after this many seconds")
    p.add_argument(
        "--until-idle",
        action="store_true",
        help="a dynamic batch: end once it has tasks and all of them have ended",
    )
