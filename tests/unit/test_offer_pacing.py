"""The egress's event-time pacing: a backlog goes out with the spacing it was released at."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.offer_pacing import MAX_LATE_MS, EventTimePacer, PullSlots


def replay(events: list[int], start_ms: int, step_ms: int = 5) -> list[tuple[int, int]]:
    """Everything offered at ``start_ms`` (a backlog), then polled every ``step_ms``."""
    pacer: EventTimePacer[int] = EventTimePacer()
    sent = [(start_ms, e) for e in events if pacer.offer(e % 7, e, e, start_ms)]
    now = start_ms
    while pacer:
        now += step_ms
        sent.extend((now, e) for e in pacer.due(now))
    return sent


def test_a_backlog_goes_out_at_the_rate_it_was_released_at() -> None:
    """An egress back after 60 s finds 6,000 offers released at 100/s: 100/s, not 6,000."""
    released = [1_000_000 + i * 10 for i in range(6_000)]
    sent = replay(released, start_ms=1_000_000 + 60_000)
    per_second = Counter((t - sent[0][0]) // 1000 for t, _ in sent)
    assert len(sent) == 6_000 and [e for _, e in sent] == released
    assert max(per_second.values()) <= 101
    assert sent[-1][0] - sent[0][0] >= 59_990  # the replay takes the time the release took


def test_offers_released_at_one_instant_go_out_together() -> None:
    """The throughput case: many batches' releases of one tick are not spread out."""
    sent = replay(list(range(5_000, 5_050)) * 20, start_ms=9_000)
    assert len(sent) == 1_000
    assert max(t for t, _ in sent) <= 9_000 + 55


def test_a_stall_while_draining_moves_the_rest_later_instead_of_bursting() -> None:
    pacer: EventTimePacer[int] = EventTimePacer()
    for i in range(200):
        pacer.offer(0, i * 10, i, 0)
    assert len(pacer) == 199
    assert pacer.due(95) == list(range(1, 10))
    # The broker was away for 30 s: what is due now is the next one, then the pace again.
    assert pacer.due(30_000) == [10]
    assert pacer.due(30_000 + 50) == [11, 12, 13, 14, 15]


def test_a_record_a_little_late_goes_out_without_moving_the_replay() -> None:
    pacer: EventTimePacer[str] = EventTimePacer()
    assert pacer.offer(0, 0, "a", 1_000)  # the first sets the shift: due at once
    assert pacer.offer(0, 100, "b", 1_100 + MAX_LATE_MS)  # late within the tolerance
    assert pacer.shift == 1_000
    assert not pacer.offer(0, 300, "c", 1_250)  # early: held
    assert pacer.due(1_299) == [] and pacer.due(1_300) == ["c"]


def test_the_broker_away_holds_offers_here_and_they_leave_paced() -> None:
    pacer: EventTimePacer[int] = EventTimePacer()
    assert not pacer.offer(0, 0, 0, 0, can_send=False)
    assert not pacer.offer(0, 10, 1, 5, can_send=False)
    assert pacer.due(20_000) == [0]  # back 20 s later: the first now, the next 10 ms on
    assert pacer.due(20_005) == [] and pacer.due(20_010) == [1]


def test_idle_ends_the_shift_only_when_nothing_is_held() -> None:
    pacer: EventTimePacer[int] = EventTimePacer()
    pacer.offer(0, 0, 0, 60_000)  # a stale offer: shift 60 s
    pacer.offer(0, 10, 1, 60_000)
    pacer.idle()
    assert pacer.shift == 60_000  # one still held: still replaying
    assert pacer.due(60_010) == [1]
    pacer.idle()
    assert pacer.shift is None and pacer.offer(0, 70_000, 2, 70_005)  # fresh: at once


def test_drop_removes_a_revoked_lane_only() -> None:
    pacer: EventTimePacer[int] = EventTimePacer()
    for i in range(6):
        pacer.offer(i % 2, i * 1000, i, 0)
    assert pacer.drop({1}) == [1, 3, 5] and len(pacer) == 2  # 0 went out at once
    assert pacer.due(2_000) == [2] and pacer.due(4_000) == [4]


def test_a_lane_is_not_held_behind_another_lanes_later_records() -> None:
    """Partitions consumed one after the other: each is replayed at its own times."""
    pacer: EventTimePacer[str] = EventTimePacer()
    pacer.offer(0, 0, "p0-0", 60_000)
    for i in range(1, 10):
        pacer.offer(0, i * 1000, f"p0-{i}", 60_000)
    for i in range(10):
        pacer.offer(1, i * 1000 + 500, f"p1-{i}", 60_000)
    assert pacer.due(60_500) == ["p1-0"]
    assert pacer.due(61_000) == ["p0-1"]


@settings(max_examples=50, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 2_000), min_size=1, max_size=300),
    lateness=st.integers(0, 600_000),
    polls=st.lists(st.integers(1, 3_000), min_size=1, max_size=50),
)
def test_any_span_of_the_replay_is_no_shorter_than_the_release_minus_the_tolerance(
    gaps: list[int], lateness: int, polls: list[int]
) -> None:
    """For any two offers, the replay puts them at least as far apart as their release,
    less the tolerance: a burst can only be what was released together."""
    events, t = [], 0
    for gap in gaps:
        t += gap
        events.append(t)
    pacer: EventTimePacer[int] = EventTimePacer()
    now = events[0] + lateness
    sent = [(now, e) for e in events if pacer.offer(0, e, e, now)]
    i = 0
    while pacer:
        now += polls[i % len(polls)]
        i += 1
        sent.extend((now, e) for e in pacer.due(now))
    assert [e for _, e in sent] == events
    for (t1, e1), (t2, e2) in itertools.pairwise(sent):
        assert t2 - t1 >= e2 - e1 - MAX_LATE_MS


def test_pull_offers_are_spaced_to_their_limit() -> None:
    """1,800 devices asking in one second after a broker restart, at 6,000 pull offers a
    minute: 100 a second go out, the first at once."""
    slots = PullSlots(6_000)
    pacer: EventTimePacer[int] = EventTimePacer()
    asked = [10_000 + i // 2 for i in range(1_800)]  # all within one second
    sent = [(12_000, i) for i, e in enumerate(asked) if pacer.offer(1, slots.take(e), i, 12_000)]
    now = 12_000
    while pacer:
        now += 5
        sent.extend((now, i) for i in pacer.due(now))
    per_second = Counter((t - 12_000) // 1000 for t, _ in sent)
    assert len(sent) == 1_800 and sent[0] == (12_000, 0)
    assert max(per_second.values()) <= 100 + 1
    assert PullSlots(6_000).take(5) == 5  # a lone pull is not delayed
