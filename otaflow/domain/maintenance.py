"""Recurring maintenance windows, in a named time zone. Pure.

A window is written ``DAYS HH:MM MINUTES ZONE``, e.g. ``Mon-Fri 02:00 120 Europe/Berlin``:
on each of the days (``Mon-Fri``, ``Sat,Sun``, ``*``), from the local wall-clock start, for
that many real minutes. Local times follow the zone's daylight-saving rules (zoneinfo),
so "02:00 Berlin" is 01:00 UTC in winter and 00:00 UTC in summer; a start that falls in
a spring-forward gap begins at the first instant after it.

A batch with windows pushes only inside one of them; outside, its tasks wait in the
queue. ``open_between`` counts the window time inside an interval, so a rate's windows
can count only time inside a maintenance window.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
MINUTE_MS = 60_000
_FORM = re.compile(r"^\s*(\S+)\s+(\d{1,2}):(\d{2})\s+(\d+)\s+(\S+)\s*$")


class WindowError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    weekdays: frozenset[int]  # 0 = Monday
    start_minute: int  # minutes after local midnight
    duration_minutes: int
    zone: str

    def starts_on(self, day: dt.date) -> int:
        """The window's start on local ``day``, in epoch ms (gaps resolve forward)."""
        tz = ZoneInfo(self.zone)
        naive = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=self.start_minute)
        local = naive.replace(tzinfo=tz)
        # A wall time in a spring-forward gap does not round-trip: start after the gap.
        back = local.astimezone(dt.UTC).astimezone(tz)
        if back.replace(tzinfo=None) == naive:
            return int(local.timestamp() * 1000)
        # In the gap: the first whole minute whose wall time is at or after the start.
        at = int(naive.replace(tzinfo=tz, fold=1).timestamp()) // 60 * 60
        while dt.datetime.fromtimestamp(at, tz).replace(tzinfo=None) < naive:
            at += 60
        return at * 1000

    def occurrences(self, around: int, days_before: int = 1, days_after: int = 8) -> list[int]:
        """Start times (epoch ms) of the occurrences on local days near ``around``."""
        tz = ZoneInfo(self.zone)
        today = dt.datetime.fromtimestamp(around / 1000, tz).date()
        starts = []
        for offset in range(-days_before, days_after + 1):
            day = today + dt.timedelta(days=offset)
            if day.weekday() in self.weekdays:
                starts.append(self.starts_on(day))
        return starts


def _days(text: str) -> frozenset[int]:
    if text == "*":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.upper().split(","):
        if "-" in part:
            first, last = part.split("-", 1)
            a, b = _day(first), _day(last)
            days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        else:
            days.add(_day(part))
    return frozenset(days)


def _day(text: str) -> int:
    try:
        return DAYS.index(text[:3])
    except ValueError:
        raise WindowError(f"{text!r} is not a day (Mon..Sun)") from None


@lru_cache(maxsize=256)
def parse_window(text: str) -> MaintenanceWindow:
    match = _FORM.match(text)
    if match is None:
        raise WindowError(
            f"{text!r}: expected 'DAYS HH:MM MINUTES ZONE', e.g. 'Mon-Fri 02:00 120 UTC'"
        )
    days, hour, minute, duration, zone = match.groups()
    if int(hour) > 23 or int(minute) > 59:
        raise WindowError(f"{text!r}: start must be 00:00..23:59")
    if not 1 <= int(duration) <= 7 * 24 * 60:
        raise WindowError(f"{text!r}: duration must be 1..10080 minutes")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"{text!r}: unknown time zone {zone!r}") from None
    return MaintenanceWindow(_days(days), int(hour) * 60 + int(minute), int(duration), zone)


def parse_windows(texts: Iterable[str]) -> tuple[MaintenanceWindow, ...]:
    return tuple(parse_window(t) for t in texts)


def _spans(windows: Sequence[MaintenanceWindow], around: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for window in windows:
        length = window.duration_minutes * MINUTE_MS
        # Look back far enough for a long window that began days ago to still be open.
        back = window.duration_minutes // (24 * 60) + 1
        spans.extend((s, s + length) for s in window.occurrences(around, days_before=back))
    return sorted(spans)


def is_open(windows: Sequence[MaintenanceWindow], now: int) -> bool:
    return not windows or any(s <= now < e for s, e in _spans(windows, now))


def next_open(windows: Sequence[MaintenanceWindow], now: int) -> int | None:
    """``now`` if a window is open, else the next opening (None: no windows at all)."""
    if not windows:
        return None
    later = None
    for start, end in _spans(windows, now):
        if start <= now < end:
            return now
        if start > now and (later is None or start < later):
            later = start
    return later


def next_close(windows: Sequence[MaintenanceWindow], now: int) -> int | None:
    """When the window open at ``now`` closes (None: none is open)."""
    ends = [e for s, e in _spans(windows, now) if s <= now < e]
    return max(ends) if ends else None


def open_between(windows: Sequence[MaintenanceWindow], start: int, end: int) -> int:
    """Milliseconds of ``[start, end)`` inside a window (all of it without windows)."""
    if not windows:
        return max(0, end - start)
    total, cursor = 0, start
    while cursor < end:
        opened = next_open(windows, cursor)
        if opened is None or opened >= end:
            break
        closes = next_close(windows, opened) or end
        total += min(closes, end) - opened
        cursor = min(closes, end)
    return total


def advance_open_time(windows: Sequence[MaintenanceWindow], start: int, open_ms: int) -> int:
    """The instant when ``open_ms`` of window time has passed since ``start``."""
    if not windows:
        return start + open_ms
    cursor, left = start, open_ms
    while True:
        opened = next_open(windows, cursor)
        if opened is None:
            raise WindowError("the windows never open")
        closes = next_close(windows, opened) or opened
        if closes - opened >= left:
            return opened + left
        left -= closes - opened
        cursor = closes
