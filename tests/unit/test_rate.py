"""Push-rate domain: schedule, event-time window meter, plan, and the platform's rules."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from otaflow.domain.rate import (
    MAX_CATCH_UP_MS,
    WINDOW_MS,
    MeterState,
    OverReleaseError,
    PlanStep,
    RateCondition,
    RateConfig,
    RateSchedule,
    RateStep,
    RateTypeChangeError,
    WindowMeter,
    advance,
    allowance,
    change_config,
    current_rate,
    plan,
    record_release,
    record_success,
    record_unsent,
    releasable,
)
from otaflow.domain.rate_rules import ERROR_CODES, RateRuleError, validate_rate

DOC = RateConfig.variable(
    base_rate=50, factor=2, max_rate=10_000, threshold=1_000, condition=RateCondition.PUSHED
)
DOC_STEPS = [
    (50, 0),
    (100, 1_000),
    (200, 2_000),
    (400, 3_000),
    (800, 4_000),
    (1_600, 5_000),
    (3_200, 6_000),
    (6_400, 7_000),
    (10_000, 8_000),
]


def last_ms(window: int) -> int:
    return window * WINDOW_MS + WINDOW_MS - 1


def window_counts(ticks: list[int], config: RateConfig) -> dict[int, int]:
    """Run a meter with devices always waiting; check invariants at every tick."""
    state = MeterState.start(config)
    counts: dict[int, int] = {}
    for t in ticks:
        n = releasable(state, t)
        state = record_release(state, t, n)
        assert releasable(state, t) == 0  # greedy: nothing left at the same instant
        assert state.released_in_window <= config.max_rate
        # exactly the even line: floor(rate * seconds elapsed / 60), within one device of ideal
        ideal = config.rate * ((t % WINDOW_MS) // 1000 + 1) / 60
        assert ideal - 1 < state.released_in_window <= ideal
        counts[t // WINDOW_MS] = state.released_in_window
    return counts


# --- config ---------------------------------------------------------------------------------


def test_factor_is_exact_decimal_and_kind_is_reported() -> None:
    assert RateConfig.variable(1, 1.2, 10, 1, "pushed").factor == Decimal("1.2")
    assert RateConfig.variable(1, 2.35, 10, 1, "succeeded").factor == Decimal("2.35")
    assert RateConfig.variable(1, "2.35", 10, 1).condition is RateCondition.PUSHED
    assert RateConfig.constant(10).kind == "constant"
    assert DOC.kind == "variable"
    assert RateCondition("succeeded") is RateCondition.SUCCEEDED


def test_config_and_state_round_trip_through_dicts() -> None:
    for cfg in (DOC, RateConfig.constant(600), RateConfig.variable(3, "2.35", 99, 7, "succeeded")):
        assert RateConfig.from_dict(cfg.to_dict()) == cfg
    state = change_config(
        record_release(MeterState.start(DOC), 59_999, 50), RateConfig.variable(60, 2, 900, 5)
    )
    assert MeterState.from_dict(state.to_dict()) == state


# --- schedule -------------------------------------------------------------------------------


def test_console_doc_example_rate_after_each_thousand_pushed() -> None:
    sched = RateSchedule(DOC)
    expected = [50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000, 10_000]
    for k, rate in enumerate(expected):
        assert sched.rate_at(k * 1_000) == rate, k
        assert sched.rate_at(k * 1_000 + 999) == rate, k
    assert sched.rate_at(999) == 50
    assert sched.rate_at(1_000_000) == 10_000  # capped, not 12,800 or more
    assert sched.steps(20_000) == [RateStep(r, c) for r, c in DOC_STEPS]
    assert sched.steps(8_000) == [RateStep(r, c) for r, c in DOC_STEPS[:-1]]
    assert sched.next_change(7_500) == 8_000
    assert sched.next_change(8_000) is None


def test_rates_are_floor_of_exact_power_not_float_or_stepwise() -> None:
    # 125 * 1.2**3 = 216 exactly; in floats it is 215.99999999999997.
    assert RateSchedule(RateConfig.variable(125, "1.2", 10_000, 10)).rate_at(30) == 216
    # 3 * 2.35**k = 3, 7.05, 16.5675, 38.93...
    sched = RateSchedule(RateConfig.variable(3, 2.35, 10_000, 1))
    assert [sched.rate_at(k) for k in range(4)] == [3, 7, 16, 38]
    # Stepwise flooring would keep base 1 x1.2 at 1 for ever; 1.2**4 = 2.0736 -> 2.
    grow = RateSchedule(RateConfig.variable(1, "1.2", 10_000, 10))
    assert [grow.rate_at(k * 10) for k in range(6)] == [1, 1, 1, 1, 2, 2]
    # steps() lists distinct rates only, from the count where each first applies
    assert grow.steps(60)[:2] == [RateStep(1, 0), RateStep(2, 40)]


def test_constant_schedule_never_changes() -> None:
    sched = RateSchedule(RateConfig.constant(600))
    assert {sched.rate_at(c) for c in (0, 1, 10**9)} == {600}
    assert sched.next_change(0) is None
    assert sched.steps(10**6) == [RateStep(600, 0)]


def test_schedule_refuses_arithmetically_impossible_configs() -> None:
    with pytest.raises(ValueError):
        RateSchedule(RateConfig.constant(0))
    with pytest.raises(ValueError):
        RateSchedule(RateConfig.variable(1, 2, 10, 0))
    with pytest.raises(ValueError):
        RateSchedule(RateConfig.variable(5, "0.5", 10, 1))


# --- pacing within a window -------------------------------------------------------------------


@pytest.mark.parametrize("rate", [10, 600, 10_000, 7, 59, 61])
def test_allowance_spreads_evenly_and_reaches_exactly_rate_at_last_ms(rate: int) -> None:
    values = [allowance(rate, t) for t in range(0, WINDOW_MS, 250)]
    assert values == sorted(values)
    assert max(values) == rate
    assert allowance(rate, last_ms(3)) == rate
    assert allowance(rate, 3 * WINDOW_MS) == rate // 60  # first second of window 3
    for s in range(60):  # each one-second slice gets floor/ceil of rate/60
        step = allowance(rate, s * 1000) - (allowance(rate, s * 1000 - 1) if s else 0)
        assert rate // 60 <= step <= -(-rate // 60)


@pytest.mark.parametrize("rate", [10, 600, 10_000])
@pytest.mark.parametrize("phase_ms", [0, 1, 500, 999])
def test_constant_rate_held_over_30_windows_ticked_every_second(rate: int, phase_ms: int) -> None:
    ticks = [phase_ms + i * 1000 for i in range(30 * 60)]
    counts = window_counts(ticks, RateConfig.constant(rate))
    assert sorted(counts) == list(range(30))
    assert all(abs(c - rate) <= 1 for c in counts.values())
    assert set(counts.values()) == {rate}  # ticks in the last second reach exactly rate


@settings(max_examples=30, deadline=None)
@given(
    rate=st.sampled_from([10, 600, 10_000]),
    start=st.integers(0, 999),
    # >= 100 ms only to bound the tick count over 30 windows; sparse_random covers 1 ms gaps
    gaps=st.lists(st.integers(100, 1000), min_size=1, max_size=300),
)
def test_constant_rate_held_with_irregular_ticks_at_most_a_second_apart(
    rate: int, start: int, gaps: list[int]
) -> None:
    ticks, t, i = [], start, 0
    while t < 30 * WINDOW_MS:  # cycle the drawn gaps until 30 windows are closed
        ticks.append(t)
        t += gaps[i % len(gaps)]
        i += 1
    counts = window_counts(ticks, RateConfig.constant(rate))
    assert all(abs(counts[w] - rate) <= 1 for w in range(30))
    assert all(counts[w] == rate for w in range(30))


@settings(max_examples=100, deadline=None)
@given(
    rate=st.sampled_from([10, 600, 10_000]),
    ticks=st.lists(st.integers(0, 30 * WINDOW_MS - 1), min_size=1, max_size=200).map(sorted),
    waiting=st.lists(st.integers(0, 5_000), min_size=200, max_size=200),
)
def test_sparse_random_ticks_never_exceed_rate_in_any_window(
    rate: int, ticks: list[int], waiting: list[int]
) -> None:
    meter = WindowMeter.start(RateConfig.constant(rate))
    per_window: dict[int, int] = {}
    for t, queue in zip(ticks, waiting, strict=False):
        n, meter = meter.take(t, queue)
        assert 0 <= n <= queue
        per_window[t // WINDOW_MS] = per_window.get(t // WINDOW_MS, 0) + n
        assert per_window[t // WINDOW_MS] == meter.state.released_in_window
        assert meter.state.released_in_window <= allowance(rate, t) <= rate
        if queue > n:  # held back only by the rate: caught up to the even line exactly
            assert meter.state.released_in_window == allowance(rate, t)
    assert sum(per_window.values()) == meter.state.pushed_total


def test_variable_step_mid_window_applies_from_that_instant_only() -> None:
    """Issue 12: a step reached mid-window is a new speed from then on, never a burst."""
    state = MeterState(config=DOC, window=0, pushed_total=975)
    # by second 30: 25 at 50/min reach 1,000 exactly at 30 s; the new rate has had no time
    assert releasable(state, 29_500) == 25
    # by the window's end: 25 at 50/min, then 30 s at 100/min = 50 (the old meter gave 100)
    assert releasable(state, 59_999) == 75
    state = record_release(state, 59_999, 75)
    assert current_rate(state) == 100
    assert state.pushed_total == 1_050


def test_a_step_reached_by_devices_that_arrived_late_starts_at_their_release() -> None:
    """Credit left unused while the queue was empty never takes a step back in time."""
    meter = WindowMeter(MeterState(config=DOC, window=0, pushed_total=975))
    n, meter = meter.take(10_000, 5)  # 9 allowed, only 5 waiting: the queue ran empty
    assert n == 5 and meter.state.starved
    # At 40 s, 100 arrive: 20 reach 1,000 now (not at 30 s, when the credit would have);
    # then 1 s at 100/min: 50/min x 40 s + 100/min x 1 s = 35.8 -> 35 in the window.
    n, meter = meter.take(40_000, 100)
    assert n == 30 and meter.state.released_in_window == 35 and not meter.state.starved
    # Had they been waiting all along, the step would have come at 30 s (credit 43.3).
    waiting = WindowMeter(MeterState(config=DOC, window=0, pushed_total=975))
    n, waiting = waiting.take(10_000, 500)
    n, waiting = waiting.take(40_000, 500)
    assert waiting.state.released_in_window == 43


def test_console_doc_example_each_step_lasts_its_time() -> None:
    """`otaflow plan --base-rate 50 --factor 2 --max-rate 10000 --threshold 1000 --on pushed
    --devices 20000`: 8,000 pushed at 39.84 minutes, 20,000 at 41.04 (issue 12)."""
    result = plan(DOC, 20_000)
    starts = [s.start_ms for s in result.steps]
    assert starts == [
        0,
        20 * WINDOW_MS,  # 1,000 at 50/min: 20 minutes
        30 * WINDOW_MS,
        35 * WINDOW_MS,
        37 * WINDOW_MS + 30_000,
        38 * WINDOW_MS + 45_000,
        39 * WINDOW_MS + 22_500,
        39 * WINDOW_MS + 41_250,
        39 * WINDOW_MS + 50_625,
    ]
    durations = {s.rate: b - a for s, a, b in zip(result.steps, starts, starts[1:], strict=False)}
    assert (durations[1_600], durations[3_200], durations[6_400]) == (37_500, 18_750, 9_375)
    assert round(result.steps[-1].start_ms / WINDOW_MS, 2) == 39.84  # 8,000 pushed
    assert result.finished_ms is not None
    assert round(result.finished_ms / WINDOW_MS, 2) == 41.04  # 20,000 pushed
    totals = [0] + [m.pushed for m in result.minutes]
    per_minute = [b - a for a, b in pairwise(totals)]
    # minute 37: 400/min for 30 s, then 800/min (the old meter pushed 10,000 here)
    assert per_minute[37:] == [600, 1_000, 4_162, 10_000, 438]
    assert result.total_minutes == 42


@settings(max_examples=40, deadline=None)
@given(
    base=st.integers(20, 400),
    factor=st.sampled_from(["1.2", "1.5", "2", "2.35", "5"]),
    max_rate=st.integers(400, 3_000),
    threshold=st.integers(1, 300),
    devices=st.integers(1, 4_000),
    phase=st.integers(0, 999),
    gaps=st.lists(st.integers(50, 1_000), min_size=1, max_size=40),
)
def test_how_often_the_meter_is_asked_never_changes_what_it_releases(
    base: int,
    factor: str,
    max_rate: int,
    threshold: int,
    devices: int,
    phase: int,
    gaps: list[int],
) -> None:
    """The plan (one tick a minute), an agent ticking irregularly: the same per minute."""
    config = RateConfig.variable(base, factor, max_rate, threshold)
    expected = plan(config, devices)
    assume(expected.total_minutes <= 20)  # bounds the ticks, not the cases: steps still vary
    meter, totals, t, i = WindowMeter.start(config), [], phase, 0
    for minute in range(expected.total_minutes):
        end = (minute + 1) * WINDOW_MS
        while t < end - 1_000:  # irregular ticks, then one in the window's last second
            _, meter = meter.take(t, devices - meter.state.pushed_total)
            t += gaps[i % len(gaps)]
            i += 1
        _, meter = meter.take(end - 1, devices - meter.state.pushed_total)
        t = max(t, end)
        totals.append(meter.state.pushed_total)
        # A speed: never more in a window than the rates in force allowed, instant by instant.
        st = meter.state
        credit = st.credit_units + current_rate(st) * (WINDOW_MS - st.credit_at_ms)
        assert st.released_in_window * WINDOW_MS <= credit
    assert totals == [m.pushed for m in expected.minutes]


def test_unsent_releases_leave_the_pushed_count_and_free_their_slots() -> None:
    """Issue 12: "pushed" counts offers actually sent, not permits the device agent dropped."""
    # 40 of the window's 50 (at 50/min) released already; the last 10 reach 1,000.
    start = MeterState(config=DOC, window=0, pushed_total=990, released_in_window=40)
    state = record_release(start, 59_999, 10)
    assert current_rate(state) == 100 and state.released_in_window == 50
    assert releasable(state, 59_999) == 0
    state = record_unsent(state, 3, 59_999, released_at_ms=59_999)
    assert state.pushed_total == 997 and current_rate(state) == 50
    assert state.released_in_window == 47 and releasable(state, 59_999) == 3
    # Taken back in a later window: the count drops, that window's slots stay used.
    later = record_release(advance(state, WINDOW_MS), WINDOW_MS + 1_999, 1)
    later = record_unsent(later, 2, WINDOW_MS + 1_999, released_at_ms=59_999)
    assert later.pushed_total == 996 and later.released_in_window == 1
    with pytest.raises(ValueError):
        record_unsent(state, -1, 0, 0)
    assert record_unsent(MeterState.start(DOC), 5, 0, 0).pushed_total == 0


@settings(max_examples=60, deadline=None)
@given(
    base=st.integers(1, 60),
    factor=st.sampled_from(["1.2", "1.5", "2", "2.35", "5"]),
    max_rate=st.integers(60, 400),
    threshold=st.integers(1, 120),
    start=st.integers(0, 2_000),
    already=st.integers(0, 30),
    t=st.integers(0, WINDOW_MS - 1),
)
def test_greedy_releasable_equals_releasing_one_at_a_time(
    base: int, factor: str, max_rate: int, threshold: int, start: int, already: int, t: int
) -> None:
    config = RateConfig.variable(base, factor, max_rate, threshold)
    state = MeterState(config=config, window=0, pushed_total=start, released_in_window=already)
    bulk = releasable(state, t)
    one_by_one = 0
    while releasable(state, t) > 0:
        state = record_release(state, t, 1)
        one_by_one += 1
    assert bulk == one_by_one
    assert state.released_in_window <= max(already, current_rate(state))


def test_succeeded_condition_moves_only_on_successes() -> None:
    cfg = RateConfig.variable(10, 2, 100, 5, RateCondition.SUCCEEDED)
    state = record_release(MeterState.start(cfg), 29_999, 5)
    assert current_rate(state) == 10 and releasable(state, 29_999) == 0
    assert record_release(state, 59_999, 5).pushed_total == 10  # pushing moves nothing
    state = record_success(state, 5, 30_000)  # mid-window: 20/min from 30 s on
    assert current_rate(state) == 20
    # 10/min for 30 s, 20/min for 30 s: 15 in the window (not 20 at once)
    assert releasable(state, 59_999) == 10


def test_config_change_applies_from_next_window_only() -> None:
    state = record_release(MeterState.start(RateConfig.constant(10)), 30_000, 5)
    state = change_config(state, RateConfig.constant(600))
    assert state.config == RateConfig.constant(10)
    assert releasable(state, 59_999) == 5  # still 10/min this window
    with pytest.raises(OverReleaseError):
        record_release(state, 59_999, 6)
    nxt = advance(state, WINDOW_MS)
    assert nxt.config == RateConfig.constant(600) and nxt.pending_config is None
    assert releasable(state, last_ms(1)) == 600
    # lowering the rate also waits for the next window
    low = change_config(record_release(nxt, last_ms(1), 600), RateConfig.constant(10))
    assert releasable(low, last_ms(2)) == 10


def test_config_change_before_first_event_applies_at_once() -> None:
    state = change_config(MeterState.start(RateConfig.constant(10)), RateConfig.constant(600))
    assert releasable(state, 59_999) == 600


def test_rate_type_change_is_refused() -> None:
    with pytest.raises(RateTypeChangeError) as err:
        change_config(MeterState.start(RateConfig.constant(10)), DOC)
    assert err.value.code == "iot.ota.RateTypeChangeNotAllowed"
    with pytest.raises(RateTypeChangeError):
        WindowMeter.start(DOC).with_config(RateConfig.constant(10))
    same_kind = WindowMeter.start(DOC).with_config(RateConfig.variable(5, 3, 500, 10))
    assert same_kind.rate == 5


def test_late_event_never_reopens_a_window() -> None:
    state = record_release(MeterState.start(RateConfig.constant(600)), last_ms(5), 600)
    assert releasable(state, last_ms(3)) == 0
    again = record_release(state, last_ms(3), 0)
    assert again.window == 5 and again.released_in_window == 600


def test_record_rejects_negative_and_over_release() -> None:
    state = MeterState.start(RateConfig.constant(60))
    with pytest.raises(ValueError):
        record_release(state, 0, -1)
    with pytest.raises(ValueError):
        record_success(state, -1, 0)
    with pytest.raises(OverReleaseError):
        record_release(state, 0, 2)  # 60/min allows 1 in the first second
    assert record_release(state, 0, 1).pushed_total == 1


# --- plan -----------------------------------------------------------------------------------


def test_plan_console_doc_example() -> None:
    result = plan(DOC, 20_000)
    assert [(s.rate, s.pushed_at_start) for s in result.steps] == DOC_STEPS
    assert [s.start_minute for s in result.steps] == [0, 20, 30, 35, 37, 38, 39, 39, 39]
    assert result.total_minutes == 42 == len(result.minutes)
    pushed = [m.pushed for m in result.minutes]
    assert pushed[0] == 50 and pushed[18] == 950 and pushed[19] == 1_000 and pushed[20] == 1_100
    assert pushed[-1] == 20_000 and pushed == sorted(pushed)
    assert [m.minute for m in result.minutes] == list(range(42))
    assert all(b - a <= 10_000 for a, b in zip([0, *pushed], pushed, strict=False))


def test_plan_omits_rates_reached_only_after_the_last_device() -> None:
    result = plan(DOC, 8_000)
    assert [s.rate for s in result.steps] == [r for r, _ in DOC_STEPS[:-1]]
    assert result.minutes[-1].pushed == 8_000


def test_plan_constant_rates() -> None:
    result = plan(RateConfig.constant(10_000), 20_000)
    assert result.total_minutes == 2
    assert [(m.minute, m.pushed) for m in result.minutes] == [(0, 10_000), (1, 20_000)]
    assert result.steps == [PlanStep(10_000, 0, 0)]
    assert result.finished_ms == WINDOW_MS + 59_999 + 1  # the minute's last credit
    assert [m.pushed for m in plan(RateConfig.constant(10), 25).minutes] == [10, 20, 25]
    empty = plan(RateConfig.constant(10), 0)
    assert (empty.total_minutes, empty.minutes, len(empty.steps)) == (0, [], 1)


def test_plan_matches_a_meter_ticked_every_second() -> None:
    """The plan's one tick per minute must equal what the live agent reaches by ticking."""
    result = plan(DOC, 20_000)
    meter, minute_totals = WindowMeter.start(DOC), []
    for minute in range(result.total_minutes):
        for s in range(60):
            _, meter = meter.take(
                minute * WINDOW_MS + s * 1000 + 137, 20_000 - meter.state.pushed_total
            )
        minute_totals.append(meter.state.pushed_total)
    assert minute_totals == [m.pushed for m in result.minutes]


def test_plan_succeeded_condition_steps_from_next_minute() -> None:
    cfg = RateConfig.variable(10, 2, 40, 10, RateCondition.SUCCEEDED)
    result = plan(cfg, 100, success_ratio=0.5)
    assert result.steps == [
        PlanStep(10, 0, 0),
        PlanStep(20, 20, 2, 2 * WINDOW_MS),
        PlanStep(40, 40, 3, 3 * WINDOW_MS),
    ]
    assert [m.pushed for m in result.minutes] == [10, 20, 40, 80, 100]
    # ratio applied exactly: floor(100 * 0.29) = 29 (floats give 28.999... -> 28)
    exact = plan(RateConfig.variable(100, 2, 200, 29, "succeeded"), 1_000, success_ratio=0.29)
    assert exact.steps[1] == PlanStep(200, 100, 1, WINDOW_MS)
    with pytest.raises(ValueError):
        plan(cfg, 100, success_ratio=1.5)


# --- platform rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        DOC,
        RateConfig.constant(10),
        RateConfig.constant(10_000),
        RateConfig.variable(1, "1.20", 10, 1, "succeeded"),
        RateConfig.variable(10_000, "5.00", 10_000, 100_000),
        RateConfig.variable(7, 2.35, 70, 3),
    ],
)
def test_valid_rates_pass(cfg: RateConfig) -> None:
    validate_rate(cfg)  # raises RateRuleError if refused


@pytest.mark.parametrize(
    ("cfg", "code"),
    [
        (RateConfig.constant(9), "iot.ota.InvalidConstantRate"),
        (RateConfig.constant(10_001), "iot.ota.InvalidConstantRate"),
        (RateConfig.constant(True), "iot.ota.InvalidConstantRate"),
        (RateConfig.variable(0, 2, 100, 1), "iot.ota.InvalidBaseRate"),
        (RateConfig.variable(10_001, 2, 10_000, 1), "iot.ota.InvalidBaseRate"),
        (RateConfig.variable(101, 2, 100, 1), "iot.ota.BaseRateExceedsMaxRate"),
        (RateConfig.variable(1, "1.19", 100, 1), "iot.ota.InvalidIncrementalFactor"),
        (RateConfig.variable(1, "5.01", 100, 1), "iot.ota.InvalidIncrementalFactor"),
        (RateConfig.variable(1, "1.234", 100, 1), "iot.ota.InvalidIncrementalFactor"),
        (RateConfig.variable(1, 2, 9, 1), "iot.ota.InvalidMaxRate"),
        (RateConfig.variable(1, 2, 10_001, 1), "iot.ota.InvalidMaxRate"),
        (RateConfig.variable(1, 2, 100, 0), "iot.ota.InvalidRateThreshold"),
        (RateConfig.variable(1, 2, 100, 100_001), "iot.ota.InvalidRateThreshold"),
        (RateConfig("variable", 1, 100, Decimal(2), 5, None), "iot.ota.InvalidRateCondition"),
        (RateConfig("bursty", 1, 100), "iot.ota.InvalidRateType"),  # type: ignore[arg-type]
    ],
)
def test_invalid_rates_report_codes(cfg: RateConfig, code: str) -> None:
    with pytest.raises(RateRuleError) as err:
        validate_rate(cfg)
    assert err.value.code == code
    assert code in ERROR_CODES
    assert err.value.message and code in str(err.value)


def test_rate_settings_records_round_trip_exactly() -> None:
    from otaflow.domain.rate_settings import from_settings, to_settings

    for config in (
        RateConfig.constant(600),
        RateConfig.variable(50, "2.35", 10_000, 1_000, RateCondition.SUCCEEDED),
        RateConfig.variable(1, "1.2", 10, 1, RateCondition.PUSHED),
    ):
        record = to_settings(config)
        assert record is not None
        assert from_settings(record) == config
    assert to_settings(RateConfig.variable(1, "2.35", 10, 1))["factor_hundredths"] == 235  # type: ignore[index]
    assert from_settings(None) is None and to_settings(None) is None


# --- the rate through faults (issue 16) ------------------------------------------------------


def per_second(releases: list[tuple[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for t, n in releases:
        out[t // 1000] = out.get(t // 1000, 0) + n
    return out


def drive(meter: WindowMeter, ticks: list[int], waiting: int) -> list[tuple[int, int]]:
    """Release from a queue of ``waiting`` devices at each tick; (tick, released) pairs."""
    out = []
    for t in ticks:
        n, meter = meter.take(t, waiting)
        waiting -= n
        out.append((t, n))
    return out


@pytest.mark.parametrize("stall", [(10_500, 40_500), (50_500, 75_500), (30_500, 150_500)])
def test_a_stalled_meter_drains_its_backlog_at_the_rate_not_in_a_burst(
    stall: tuple[int, int],
) -> None:
    """A worker killed for 30 s mid-window: the next ticks release the rate's pace, never
    the seconds the stall missed (the old meter released 3,000 in one second here)."""
    rate, start, end = 6_000, *stall
    ticks = [t for t in range(500, 240_000, 1000) if not start < t < end]
    releases = drive(WindowMeter.start(RateConfig.constant(rate), MAX_CATCH_UP_MS), ticks, 10**6)
    slice_ = rate // 60
    assert max(per_second(releases).values()) <= 2 * slice_
    assert dict(releases)[end] == 2 * slice_  # two slices at once at most, then the pace
    assert all(n == slice_ for t, n in releases if t > end + 1000)
    per_window: dict[int, int] = {}
    for t, n in releases:
        per_window[t // WINDOW_MS] = per_window.get(t // WINDOW_MS, 0) + n
    assert all(count <= rate for count in per_window.values())
    assert per_window[3] == rate  # a window after the stall reaches its rate again


def test_a_queue_that_was_empty_is_paced_too() -> None:
    """A dynamic batch's devices arriving after 40 idle seconds are not all sent at once."""
    meter = WindowMeter.start(RateConfig.constant(600), MAX_CATCH_UP_MS)
    n, meter = meter.take(40_200, 1_000)
    assert n == 20  # two slices of 10, not the 410 credit of 41 seconds


def test_a_stalled_variable_rate_steps_at_its_pace() -> None:
    """Variable rate on pushed: after a stall the steps still come one at a time, each at
    its own rate, and no second releases more than two slices of the rate in force."""
    meter = WindowMeter(MeterState(config=DOC, window=0, pushed_total=7_000), MAX_CATCH_UP_MS)
    waiting = 10**6
    for t in [500, 1_500, *range(30_500, 60_000, 1000)]:
        n, meter = meter.take(t, waiting)
        waiting -= n
        # the rate after the tick is the highest in force during its slice
        assert n <= 2 * -(-meter.rate // 60)  # the old meter: 3,100 at 30.5 s


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([10, 600, 6_000, 10_000]),
    ticks=st.lists(st.integers(0, 10 * WINDOW_MS - 1), min_size=1, max_size=300).map(sorted),
)
def test_a_live_meter_never_releases_more_than_two_slices_in_a_second(
    rate: int, ticks: list[int]
) -> None:
    releases = drive(WindowMeter.start(RateConfig.constant(rate), MAX_CATCH_UP_MS), ticks, 10**6)
    assert max(per_second(releases).values()) <= max(1, 2 * rate // 60)


@pytest.mark.parametrize("rate", [10, 600, 10_000])
@pytest.mark.parametrize("phase_ms", [0, 1, 500, 999])
def test_a_live_meter_ticked_every_second_still_reaches_its_rate(rate: int, phase_ms: int) -> None:
    ticks = [phase_ms + i * 1000 for i in range(10 * 60)]
    releases = drive(WindowMeter.start(RateConfig.constant(rate), MAX_CATCH_UP_MS), ticks, 10**6)
    per_window: dict[int, int] = {}
    for t, n in releases:
        per_window[t // WINDOW_MS] = per_window.get(t // WINDOW_MS, 0) + n
    assert set(per_window.values()) == {rate}
