"""``otaflow batch watch``: when it ends, what the board says, that it fits 80 columns."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from otaflow.cli.watch import Snapshot, Watch, board, watch_batch


def job(status: str = "IN_PROGRESS", selection: str = "STATIC", **stats: int) -> dict[str, Any]:
    return {
        "JobId": "UNZ0123456789ABCDEFGHIJ",
        "ProductKey": "a1Prod",
        "DestVersion": "2.0",
        "SelectionType": selection,
        "TargetSelection": "ALL",
        "JobStatus": status,
        "MaximumPerMinute": 600,
        "Statistics": {"Total": sum(stats.values()), **stats},
    }


class Fake:
    """Answers in turn; a clock that moves only when the watch sleeps."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.calls = 0
        self.now = 0.0

    def query(self) -> dict[str, Any]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(
    answers: list[dict[str, Any]], terminal: bool, timeout: float | None = None
) -> tuple[int, str, Fake]:
    fake = Fake(answers)
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=80, color_system=None)
    status = watch_batch(
        fake.query, console, interval=10, timeout=timeout, clock=lambda: fake.now, sleep=fake.sleep
    )
    return status, out.getvalue(), fake


def test_a_static_batch_is_done_when_no_task_is_unfinished_on_two_polls() -> None:
    answers = [
        job(Queued=4),
        job(Notified=2, Succeeded=2),
        job(Succeeded=3, Failed=1),  # done once: a partition may still be creating tasks
        job(Succeeded=4, Failed=1),
        job(Succeeded=4, Failed=1),
    ]
    status, text, fake = run(answers, terminal=False)
    assert status == 0
    assert fake.calls == 5
    lines = text.splitlines()
    assert lines[0].endswith("IN_PROGRESS Queued=4")
    assert "Succeeded=4 Failed=1" in text
    assert "5/5 finished" in text  # the final board


def test_a_completed_or_canceled_job_ends_at_once_and_a_dynamic_one_does_not() -> None:
    assert run([job("CANCELED", Queued=3)], terminal=False)[0] == 0
    dynamic = [job(selection="DYNAMIC", Succeeded=3)]
    status, _, fake = run(dynamic, terminal=False, timeout=60)
    assert status == 2 and fake.calls > 2  # new devices may still match: it kept watching


def test_the_push_rate_is_measured_over_the_last_minute() -> None:
    watch = Watch()
    watch.add(Snapshot(0.0, job(Queued=100)))
    assert watch.pushes_per_minute() is None
    watch.add(Snapshot(30.0, job(Queued=50, Notified=50)))
    assert watch.pushes_per_minute() == 100
    watch.add(Snapshot(90.0, job(Queued=20, Notified=50, Succeeded=30)))
    # The first snapshot fell out of the window: 30 more pushes in 60 s.
    assert watch.pushes_per_minute() == 30


def test_the_board_fits_80_columns_and_shows_rate_against_the_plan() -> None:
    watch = Watch()
    watch.add(Snapshot(0.0, job(Queued=1_000_000)))
    watch.add(Snapshot(60.0, job(Queued=999_400, Notified=600)))
    console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    console.print(board(watch))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "600/min (rate 600/min)" in text
    assert "999,400" in text and "Queued" in text


def test_on_a_terminal_it_redraws_until_done() -> None:
    status, text, _ = run([job(Queued=1), job(Succeeded=1), job(Succeeded=1)], terminal=True)
    assert status == 0
    assert "1/1 finished" in text


def test_until_idle_ends_a_dynamic_batch_once_its_tasks_have_ended() -> None:
    answers = [
        job(selection="DYNAMIC"),  # no task yet: its device has not reported
        job(selection="DYNAMIC", Notified=1),
        job(selection="DYNAMIC", Succeeded=1),
        job(selection="DYNAMIC", Succeeded=1),
    ]
    fake = Fake(answers)
    console = Console(file=io.StringIO(), width=80, color_system=None)
    status = watch_batch(
        fake.query,
        console,
        interval=10,
        timeout=600,
        clock=lambda: fake.now,
        sleep=fake.sleep,
        until_idle=True,
    )
    assert (status, fake.calls) == (0, 4)
