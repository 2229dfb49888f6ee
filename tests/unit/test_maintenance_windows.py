"""Maintenance windows: the pure calendar, and the engine holding pushes over a
simulated week across the end of daylight-saving time (Europe/Berlin, 25 Oct 2026)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otaflow.domain.maintenance import (
    WindowError,
    advance_open_time,
    is_open,
    next_open,
    open_between,
    parse_windows,
)
from otaflow.domain.simulation import MINUTE, Partition, dynamic_batch

BERLIN = ZoneInfo("Europe/Berlin")
WINDOW = "Mon-Fri 02:00 120 Europe/Berlin"
HOUR = 60 * MINUTE


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp() * 1000)


def test_the_window_follows_berlin_wall_time_across_the_dst_change() -> None:
    windows = parse_windows([WINDOW])
    # Friday 23 Oct (CEST, UTC+2): 02:00-04:00 local is 00:00-02:00 UTC.
    assert is_open(windows, ms(2026, 10, 23, 0, 0))
    assert not is_open(windows, ms(2026, 10, 23, 2, 0))
    # Monday 26 Oct (CET, UTC+1): 01:00-03:00 UTC.
    assert not is_open(windows, ms(2026, 10, 26, 0, 30))
    assert is_open(windows, ms(2026, 10, 26, 2, 59))
    assert next_open(windows, ms(2026, 10, 23, 2, 0)) == ms(2026, 10, 26, 1, 0)
    # Thursday to Thursday: five windows of two hours.
    assert open_between(windows, ms(2026, 10, 22, 12), ms(2026, 10, 29, 12)) == 10 * HOUR
    # 3 h of window time from Friday 01:00 UTC: 1 h on Friday, 2 h on Monday.
    assert advance_open_time(windows, ms(2026, 10, 23, 1), 3 * HOUR) == ms(2026, 10, 26, 3)


def test_a_spring_forward_gap_starts_the_window_after_the_gap() -> None:
    windows = parse_windows(["Sun 02:30 60 Europe/Berlin"])  # 29 Mar 2026: 02:00 -> 03:00
    assert next_open(windows, ms(2026, 3, 28, 12)) == ms(2026, 3, 29, 1, 0)  # 03:00 CEST


@pytest.mark.parametrize(
    "text",
    ["Mon-Fri 2:00", "Xyz 02:00 60 UTC", "Mon 24:00 60 UTC", "Mon 02:00 0 UTC", "Mon 02:00 60 X/Y"],
)
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(WindowError):
        parse_windows([text])


def test_pushes_happen_only_inside_the_window_over_a_week_across_dst() -> None:
    start = ms(2026, 10, 22, 0)  # Thursday
    end = ms(2026, 10, 29, 0)
    p = Partition()
    p.start(dynamic_batch("W", ["1.0"], at=start, maintenance_windows=(WINDOW,)))
    pushed_at: dict[str, int] = {}
    now = start
    device = 0
    while now < end:
        if (now - start) % HOUR == 0:  # a new device says 1.0 every hour
            p.version(f"d{device:03d}", "1.0", now)
            device += 1
        p.tick(now)
        before = len(p.pushes())
        p.release(now)
        for push in p.pushes()[before:]:
            pushed_at[push["device_name"]] = push["event_time"]
        now += 5 * MINUTE
    assert pushed_at, "nothing was pushed all week"
    for at in pushed_at.values():
        local = dt.datetime.fromtimestamp(at / 1000, BERLIN)
        assert local.weekday() < 5 and 2 <= local.hour < 4, local
    utc_hours = {
        (
            dt.datetime.fromtimestamp(at / 1000, dt.UTC).day,
            dt.datetime.fromtimestamp(at / 1000, dt.UTC).hour,
        )
        for at in pushed_at.values()
    }
    assert (23, 0) in utc_hours  # Friday, summer time: 02:00 Berlin = 00:00 UTC
    assert (26, 1) in utc_hours and (26, 0) not in utc_hours  # Monday, winter time
    # Devices that came between Friday 04:00 and Monday 02:00 waited, and went Monday.
    weekend = [f"d{h:03d}" for h in range(26 + 2, 24 * 4)]
    assert all(pushed_at[d] == ms(2026, 10, 26, 1, 0) for d in weekend[:40])
    # Those after the last window still wait, queued.
    last = f"d{device - 1:03d}"
    assert last not in pushed_at and p.tasks(last) == [("W", "QUEUED")]


def test_the_rate_counts_only_window_time_and_never_bursts_after_a_closed_night() -> None:
    from otaflow.domain.rate import MeterState, RateConfig, record_release, releasable
    from otaflow.domain.rate_windows import meter_time

    windows = ("Mon-Fri 02:00 120 Europe/Berlin",)
    origin = ms(2026, 10, 23, 1, 30)  # Friday, inside the window (00:00-02:00 UTC)
    meter = MeterState.start(RateConfig.constant(100))
    per_minute: dict[int, int] = {}
    now = origin
    while now < ms(2026, 10, 26, 1, 5):  # to Monday five minutes into the window
        clock = meter_time(windows, origin, now)
        if clock is None:  # closed: nothing to release until the next opening
            now = next_open(parse_windows(windows), now) or now + 1000
            continue
        n = releasable(meter, clock)
        if n:
            meter = record_release(meter, clock, n)
            minute = (now - origin) // MINUTE
            per_minute[minute] = per_minute.get(minute, 0) + n
        now += 1000
    friday = [m for m in per_minute if m < 30]
    monday = [m for m in per_minute if m >= 30]
    assert sorted(friday) == list(range(30))  # the 30 window minutes on Friday
    assert all(per_minute[m] == 100 for m in friday)
    assert len(monday) == 5 and all(per_minute[m] == 100 for m in monday)  # no burst


ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata")


def _window_texts() -> st.SearchStrategy[str]:
    return st.builds(
        lambda days, h, m, dur, zone: f"{days} {h:02d}:{m:02d} {dur} {zone}",
        st.sampled_from(["Mon-Fri", "Sat,Sun", "*", "Fri-Mon", "Wed"]),
        st.integers(0, 23),
        st.sampled_from([0, 15, 30, 59]),
        st.one_of(st.integers(1, 600), st.integers(600, 7 * 24 * 60)),
        st.sampled_from(ZONES),
    )


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(_window_texts(), min_size=1, max_size=2),
    now=st.integers(ms(2026, 1, 1), ms(2027, 12, 31)),
    span=st.integers(0, 3 * 24 * 60),
)
def test_window_calendar_is_consistent(texts: list[str], now: int, span: int) -> None:
    windows = parse_windows(texts)
    opens = next_open(windows, now)
    assert opens is not None and opens >= now
    assert is_open(windows, opens)
    if opens > now:  # nothing open in between (sampled every 15 minutes)
        assert not any(is_open(windows, t) for t in range(now, opens, 15 * MINUTE))
    mid, end = now + span * MINUTE // 2, now + span * MINUTE
    total = open_between(windows, now, end)
    assert total == open_between(windows, now, mid) + open_between(windows, mid, end)
    if total > 0:
        assert advance_open_time(windows, now, total) <= end


def test_a_window_longer_than_a_day_is_open_days_after_it_began() -> None:
    windows = parse_windows(["Wed 00:00 7000 UTC"])  # Wednesday to Sunday 20:40
    assert is_open(windows, ms(2026, 10, 24, 12))  # Saturday noon
    assert not is_open(windows, ms(2026, 10, 25, 21))
