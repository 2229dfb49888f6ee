"""``otaflow up`` restarts a component that exits, with a doubling delay, and never stops
the others (one exiting used to stop them all)."""

from __future__ import annotations

import time

from otaflow.processes import ProcessGroup
from otaflow.supervision import RestartBackoff, Supervisor


def test_delays_double_up_to_the_cap_and_reset_after_a_healthy_run() -> None:
    backoff = RestartBackoff(first_delay_s=1, max_delay_s=8, healthy_after_s=60)
    backoff.started(0)
    delays = []
    now = 0.0
    for _ in range(6):
        now += 1
        delays.append(backoff.exited(now))
        backoff.started(now)
    assert delays == [1, 2, 4, 8, 8, 8]
    backoff.started(100)
    assert backoff.exited(161) == 1  # ran for a minute: healthy again
    assert backoff.exits_in_a_row == 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wait_exited(group: ProcessGroup, name: str) -> None:
    deadline = time.monotonic() + 30
    while name not in group.exited():
        assert time.monotonic() < deadline, f"{name} never exited"
        time.sleep(0.02)


def test_an_exiting_component_is_restarted_and_the_others_keep_running() -> None:
    clock = Clock()
    with ProcessGroup() as group:
        supervisor = Supervisor(
            group,
            ["flaky", "steady"],
            commands={
                "flaky": ["-c", "import sys; sys.exit(3)"],
                "steady": ["-c", "import time; time.sleep(60)"],
            },
            clock=clock,
        )
        supervisor.start_all()
        steady = group.procs["steady"]
        first = group.procs["flaky"]
        wait_exited(group, "flaky")
        supervisor.check()
        assert supervisor.due == {"flaky": 1.0}
        assert group.procs["flaky"] is first  # not before its delay

        clock.now = 1.0
        supervisor.check()
        assert supervisor.restarts == 1
        assert group.procs["flaky"] is not first
        wait_exited(group, "flaky")
        clock.now = 1.5
        supervisor.check()
        assert supervisor.due == {"flaky": 3.5}  # second exit in a row: 2 s
        assert steady.poll() is None and group.procs["steady"] is steady
