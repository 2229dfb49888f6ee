"""A push rate inside maintenance windows: the meter's clock counts window time only. Pure.

The rate's one-minute windows count from the batch's start; with maintenance windows
(``domain.maintenance``) they count only time inside a window, so a batch at 100/min
pushes 100 in each minute a window is open and none between, and a plan's minutes map
to wall time by skipping closed time.
"""

from __future__ import annotations

from collections.abc import Sequence

from otaflow.domain.maintenance import (
    MaintenanceWindow,
    advance_open_time,
    is_open,
    open_between,
    parse_windows,
)

MINUTE_MS = 60_000


def meter_time(windows: Sequence[str], origin: int, now: int) -> int | None:
    """The meter's time since ``origin`` at ``now`` (None: a window is closed, push nothing)."""
    if not windows:
        return max(0, now - origin)
    parsed = parse_windows(windows)
    if not is_open(parsed, now):
        return None
    return open_between(parsed, origin, now)


def last_push_at(windows: Sequence[MaintenanceWindow], start: int, total_minutes: int) -> int:
    """Wall time (epoch ms) at which a plan of ``total_minutes`` meter minutes, started at
    ``start``, pushes its last device."""
    return advance_open_time(windows, start, total_minutes * MINUTE_MS)
