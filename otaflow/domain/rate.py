"""Push rate: how many devices per minute a batch may hand a download URL to.

This module is pure (no Kafka, no clock, no I/O) so the same code drives three
things that must never disagree: the rate agent that meters a live batch on
*event time*, the ``otaflow plan`` command that predicts how long a rollout
will take, and the tests that pin the console's documented behaviour.

Semantics (from the console's "Push rate" section):

* **Constant rate** -- ``rate`` devices per minute, for ever.
* **Variable rate** -- start at ``base_rate``; every time the *counted* devices
  (pushed, or succeeded, per ``condition``) reach another multiple of
  ``threshold`` the rate is multiplied by ``factor``, never exceeding
  ``max_rate``. Base 50, factor 2, max 10,000, threshold 1,000 pushed gives
  50 for counts 0..999, 100 from 1,000, 200 from 2,000 ... 6,400 from 7,000
  and 10,000 (not 12,800) from 8,000 on.

Rounding: the rate of step ``k`` is ``min(max_rate, floor(base_rate * factor**k))``
computed *exactly* (``factor`` is a :class:`~decimal.Decimal`, the power is taken
in integers). We deliberately do not floor step by step: with base 1 and factor
1.20 step-wise flooring would give ``floor(1 * 1.2) = 1`` for ever and the rate
would never grow, while the exact power gives 1, 1, 1, 1, 2 (1.2**4 = 2.07), ...
which is what an operator who picked "x1.2 per threshold" expects.

The rate is a *speed*, never a burst: the rate in force at an instant is the one
the counted devices give at that instant, and a step reached mid-window applies
from that instant on, never to the part of the window already gone (issue 12). For
the example above 1,000 at 1,600/min take 37.5 s, 8,000 are pushed at 39.84 minutes
and 20,000 at 41.04 (:func:`plan`).

Metering works on one-minute windows of event time, ``window = t_ms // 60_000``:
a window's quota is credit accrued at the rate in force, released in one-second
slices (:func:`allowance` for a constant rate, :func:`_walk` in general).
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Literal

__all__ = [
    "MAX_CATCH_UP_MS",
    "PACING_SLICE_MS",
    "WINDOW_MS",
    "MeterState",
    "OverReleaseError",
    "Plan",
    "PlanMinute",
    "PlanStep",
    "RateCondition",
    "RateConfig",
    "RateKind",
    "RateSchedule",
    "RateStep",
    "RateTypeChangeError",
    "WindowMeter",
    "advance",
    "allowance",
    "change_config",
    "current_rate",
    "plan",
    "record_release",
    "record_success",
    "releasable",
    "schedule_for",
]

#: One rate window: the console's rates are "devices per minute".
WINDOW_MS = 60_000

#: Granularity of pacing inside a window. The quota is released in 60 even
#: one-second slices rather than per millisecond so that a rate agent ticking
#: once per second *at any phase* still reaches the full rate by its last tick
#: of the minute (with per-ms pacing a tick at second 59.000 would leave up to
#: ``rate/60`` devices of the minute unused, e.g. 166 at 10,000/min).
PACING_SLICE_MS = 1_000

_SLICES_PER_WINDOW = WINDOW_MS // PACING_SLICE_MS

#: Most unused credit a live meter keeps (issue 16): two pacing slices. Credit that a
#: stall left unused (a worker killed, a rate agent that was not asked for a while, a
#: queue that ran empty) is forfeited beyond this, so a backlog drains at the rate's
#: pace (at most two slices' worth at once, then one slice a second) instead of
#: catching up the missed seconds of its window in one burst. Two slices, not one, so a
#: tick that comes a little late (ticks a second apart at any phase) loses nothing.
MAX_CATCH_UP_MS = 2 * PACING_SLICE_MS

RateKind = Literal["constant", "variable"]


class RateCondition(enum.Enum):
    """Which counter advances a variable rate (console: "Condition to increase push rate")."""

    PUSHED = "pushed"
    SUCCEEDED = "succeeded"


class RateTypeChangeError(ValueError):
    """Raised when an operator tries to switch a live batch between constant and variable.

    The console forbids it ("you cannot change the rate type"); carrying a
    ``code`` lets the API answer with the same shape as :class:`RateRuleError`.
    """

    code = "iot.ota.RateTypeChangeNotAllowed"

    def __init__(self, old: RateKind, new: RateKind) -> None:
        self.message = f"cannot change the push rate type from {old} to {new}"
        super().__init__(self.message)


class OverReleaseError(ValueError):
    """Raised when a caller records more releases than the meter allowed.

    Recording is strict on purpose: the meter is the single authority on the
    rate, so a caller that pushes more than :func:`releasable` said has a bug
    that must surface rather than silently exceed the operator's rate.
    """


def _to_decimal(value: Decimal | str | int | float) -> Decimal:
    """Exact decimal for ``value``; floats go through ``str`` so ``1.2`` stays 1.2."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("factor must be a number, not a bool")
    try:
        return Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"factor {value!r} is not a decimal number") from exc


@dataclass(frozen=True)
class RateConfig:
    """An operator's push-rate setting; build it with :meth:`constant` or :meth:`variable`.

    A constant rate is stored as ``base_rate == max_rate == rate`` so the
    schedule needs no special case. Range checks (10..10,000 and so on) live in
    :mod:`otaflow.domain.rate_rules`, because the API must report them with
    error codes while the engine only needs the arithmetic to be well defined.
    """

    kind: RateKind
    base_rate: int
    max_rate: int
    factor: Decimal = Decimal(1)
    threshold: int | None = None
    condition: RateCondition | None = None

    def __post_init__(self) -> None:
        # Coerce here too so a directly built config can never hold a float factor.
        object.__setattr__(self, "factor", _to_decimal(self.factor))

    @classmethod
    def constant(cls, rate: int) -> RateConfig:
        """``rate`` devices per minute for the whole batch."""
        return cls(kind="constant", base_rate=rate, max_rate=rate)

    @classmethod
    def variable(
        cls,
        base_rate: int,
        factor: Decimal | str | int | float,
        max_rate: int,
        threshold: int,
        condition: RateCondition | str = RateCondition.PUSHED,
    ) -> RateConfig:
        """Start at ``base_rate``; multiply by ``factor`` every ``threshold`` counted devices."""
        return cls(
            kind="variable",
            base_rate=base_rate,
            max_rate=max_rate,
            factor=_to_decimal(factor),
            threshold=threshold,
            condition=RateCondition(condition),
        )

    @property
    def rate(self) -> int:
        """The constant rate (for a variable config: its base rate)."""
        return self.base_rate

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (factor as a string, to stay exact) for tables and the API."""
        if self.kind == "constant":
            return {"kind": "constant", "rate": self.base_rate}
        return {
            "kind": "variable",
            "base_rate": self.base_rate,
            "factor": str(self.factor),
            "max_rate": self.max_rate,
            "threshold": self.threshold,
            "condition": self.condition.value if self.condition else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RateConfig:
        """Inverse of :meth:`to_dict`."""
        if data["kind"] == "constant":
            return cls.constant(int(data["rate"]))
        if data["kind"] != "variable":
            raise ValueError(f"unknown rate kind {data['kind']!r}")
        return cls.variable(
            base_rate=int(data["base_rate"]),
            factor=Decimal(str(data["factor"])),
            max_rate=int(data["max_rate"]),
            threshold=int(data["threshold"]),
            condition=RateCondition(data["condition"]),
        )


@dataclass(frozen=True)
class RateStep:
    """A rate and the counted-device total from which it is in force."""

    rate: int
    count_at_start: int


class RateSchedule:
    """The rate as a function of the counted devices, for one :class:`RateConfig`.

    Only the arithmetic preconditions are checked here (rates >= 1,
    threshold >= 1, factor >= 1) -- without them metering could stall or
    never reach the cap. Platform ranges are :func:`rate_rules.validate_rate`'s job.
    """

    def __init__(self, config: RateConfig) -> None:
        self.config = config
        if config.base_rate < 1 or config.max_rate < 1:
            raise ValueError("rates must be at least 1 device per minute")
        # _rates[k] is the rate of step k for every k before the cap; from
        # step len(_rates) on the rate is max_rate (or, when the rate can
        # never change, _rates has one entry used for every step).
        self._rates: list[int]
        self._capped: bool
        if config.kind == "constant":
            self._rates, self._capped = [config.base_rate], False
            return
        if config.threshold is None or config.threshold < 1:
            raise ValueError("a variable rate needs a threshold of at least 1")
        if config.condition is None:
            raise ValueError("a variable rate needs a condition")
        factor = Fraction(config.factor)
        if factor < 1:
            raise ValueError("a variable rate's factor must be at least 1")
        self._rates, self._capped = [], True
        if factor == 1:
            self._rates, self._capped = [min(config.base_rate, config.max_rate)], False
            return
        exact = Fraction(config.base_rate)
        while exact < config.max_rate:  # at most ~51 rounds for factor >= 1.20
            self._rates.append(math.floor(exact))
            exact *= factor

    @property
    def counts_pushed(self) -> bool:
        """True when releasing devices can itself move the rate (variable, on pushed)."""
        return self.config.kind == "variable" and self.config.condition is RateCondition.PUSHED

    def _rate_of_step(self, k: int) -> int:
        if not self._capped:
            return self._rates[0]
        return self._rates[k] if k < len(self._rates) else self.config.max_rate

    def rate_at(self, count: int) -> int:
        """Rate (devices/minute) in force once ``count`` devices are counted."""
        if count < 0:
            raise ValueError("count must be >= 0")
        if self.config.kind == "constant":
            return self.config.base_rate
        assert self.config.threshold is not None
        return self._rate_of_step(count // self.config.threshold)

    def next_change(self, count: int) -> int | None:
        """Smallest count above ``count`` at which the rate differs, or None if it never will.

        Steps whose floored rate equals the previous one (base 1, factor 1.2)
        are skipped, so callers iterate over distinct rates only.
        """
        if not self._capped:
            return None
        assert self.config.threshold is not None
        k = count // self.config.threshold
        current = self._rate_of_step(k)
        for j in range(k + 1, len(self._rates) + 1):
            if self._rate_of_step(j) != current:
                return j * self.config.threshold
        return None

    def steps(self, limit_count: int) -> list[RateStep]:
        """Each distinct rate in force while the count runs over ``0 .. limit_count - 1``.

        The first step (count 0) is always included, even for ``limit_count <= 0``.
        """
        out = [RateStep(self.rate_at(0), 0)]
        nxt = self.next_change(0)
        while nxt is not None and nxt < limit_count:
            out.append(RateStep(self.rate_at(nxt), nxt))
            nxt = self.next_change(nxt)
        return out


@functools.lru_cache(maxsize=1024)
def schedule_for(config: RateConfig) -> RateSchedule:
    """Cached :class:`RateSchedule`: the meter asks for it on every tick."""
    return RateSchedule(config)


def _slice_end(offset_ms: int) -> int:
    """End of the pacing slice (see :data:`PACING_SLICE_MS`) holding ``offset_ms`` in a window."""
    return min(WINDOW_MS, (offset_ms // PACING_SLICE_MS + 1) * PACING_SLICE_MS)


def allowance(rate: int, t_ms: int) -> int:
    """Devices a window may have released by event time ``t_ms`` at a constant ``rate``/minute.

    ``floor(rate * (slice + 1) / 60)`` where ``slice`` is the whole second of
    the window ``t_ms`` falls in: the quota is spread evenly over 60 one-second
    slices, rounding down so the meter is never ahead of the even line at the
    end of the current second, and the last second allows exactly ``rate``
    -- never more. (See :data:`PACING_SLICE_MS` for why seconds, not ms.)
    """
    return rate * _slice_end(t_ms % WINDOW_MS) // WINDOW_MS


@dataclass(frozen=True)
class MeterState:
    """Everything the rate agent must persist per batch, as an immutable value.

    ``window`` is None until the first event. Totals are batch-wide and never
    reset: the variable rate counts them across windows and config changes.
    ``pending_config`` holds an operator's change until the next window opens.

    The rate is a *speed*: the window's quota is credit that accrues at the rate in
    force at each instant. ``credit_units`` is the credit accrued from the window's
    start up to ``credit_at_ms`` (ms into the window; the last instant the rate in force
    changed), in rate x ms (one device is :data:`WINDOW_MS` units: 10/min for a minute
    is 10 devices). A rate that changes
    mid-window (a threshold reached, a success) therefore applies from that instant
    on, never to the part of the window already gone. ``starved`` says the last
    release emptied the queue: devices released later arrived after it, so a
    threshold they reach is reached when they are released, not earlier.
    """

    config: RateConfig
    window: int | None = None
    released_in_window: int = 0
    pushed_total: int = 0
    succeeded_total: int = 0
    pending_config: RateConfig | None = field(default=None)
    credit_units: int = 0
    credit_at_ms: int = 0
    starved: bool = False

    @classmethod
    def start(cls, config: RateConfig) -> MeterState:
        """A fresh meter for a batch that has pushed nothing yet."""
        return cls(config=config)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for a state table / changelog."""
        return {
            "config": self.config.to_dict(),
            "window": self.window,
            "released_in_window": self.released_in_window,
            "pushed_total": self.pushed_total,
            "succeeded_total": self.succeeded_total,
            "pending_config": self.pending_config.to_dict() if self.pending_config else None,
            "credit_units": self.credit_units,
            "credit_at_ms": self.credit_at_ms,
            "starved": self.starved,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeterState:
        """Inverse of :meth:`to_dict`."""
        pending = data.get("pending_config")
        return cls(
            config=RateConfig.from_dict(data["config"]),
            window=data.get("window"),
            released_in_window=int(data.get("released_in_window", 0)),
            pushed_total=int(data.get("pushed_total", 0)),
            succeeded_total=int(data.get("succeeded_total", 0)),
            pending_config=RateConfig.from_dict(pending) if pending else None,
            credit_units=int(data.get("credit_units", 0)),
            credit_at_ms=int(data.get("credit_at_ms", 0)),
            starved=bool(data.get("starved", False)),
        )


def _counted(state: MeterState) -> int:
    cond = state.config.condition
    return state.succeeded_total if cond is RateCondition.SUCCEEDED else state.pushed_total


def current_rate(state: MeterState) -> int:
    """Rate in force now under the active (not the pending) config."""
    return schedule_for(state.config).rate_at(_counted(state))


def _effective_time(state: MeterState, t_ms: int) -> int:
    """Event time clamped so a late event never reopens a window already left.

    A regressed timestamp is treated as the first ms of the current window:
    the most conservative moment, so out-of-order events can never over-release.
    """
    if state.window is not None and t_ms // WINDOW_MS < state.window:
        return state.window * WINDOW_MS
    return t_ms


def advance(state: MeterState, t_ms: int) -> MeterState:
    """State as seen at event time ``t_ms``: opens a new window if ``t_ms`` is past the current.

    Opening a window resets ``released_in_window`` and the window's credit, and
    activates a pending config -- the only place a config change takes effect.
    """
    window = _effective_time(state, t_ms) // WINDOW_MS
    if state.window == window:
        return state
    return replace(
        state,
        window=window,
        released_in_window=0,
        credit_units=0,
        credit_at_ms=0,
        config=state.pending_config or state.config,
        pending_config=None,
    )


def _offset(state: MeterState, t_ms: int) -> int:
    """ms into the (already advanced) current window."""
    assert state.window is not None
    return _effective_time(state, t_ms) - state.window * WINDOW_MS


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class _Walk:
    """One release at one instant, as :func:`_walk` computed it."""

    released: int
    state: MeterState
    #: (count reached, ms into the window) for each rate step reached on the way.
    steps: tuple[tuple[int, int], ...]
    #: ms into the window at which the credit for the last device released accrued.
    last_at: int | None


def _walk(
    state: MeterState,
    t_ms: int,
    limit: int | None,
    queue_empty: bool,
    catch_up_ms: int | None = None,
) -> _Walk:
    """Release up to ``limit`` devices (None: as many as allowed) at event time ``t_ms``.

    The credit accrues up to the end of ``t_ms``'s pacing slice at the rate in force.
    For a variable rate counted on pushed devices, releasing moves the rate: the
    devices up to the next threshold are taken at the current rate; the instant the
    credit reached that threshold's last device is the instant the step was reached
    (devices were waiting all along, as the last release left some), or this release's
    own instant when the queue had run empty; the credit after it accrues at the new
    rate. So the result does not depend on how often the meter is asked: a meter ticked
    once a minute and one ticked every second release the same devices by a window's
    end, and each step lasts its time (1,000 at 1,600/min: 37.5 s).

    ``catch_up_ms`` (a live meter: :data:`MAX_CATCH_UP_MS`) bounds the unused credit:
    at most that many ms of the rate in force are released at once, whatever the time
    since the meter was last asked (see :func:`_forfeit_stale_credit`). None keeps all
    the window's credit: what :func:`plan` uses, as the meter asked every second.
    """
    st = advance(state, t_ms)
    offset = _offset(st, t_ms)
    end = max(_slice_end(offset), st.credit_at_ms)
    sched = schedule_for(st.config)
    count = _counted(st)
    credit, at, released = st.credit_units, st.credit_at_ms, st.released_in_window
    if catch_up_ms is not None:
        credit, at = _forfeit_stale_credit(
            credit, at, released, sched.rate_at(count), end, catch_up_ms
        )
    earliest = max(offset, at) if st.starved else at
    taken, steps, last_at = 0, [], None
    while True:
        rate = sched.rate_at(count)
        room = (credit + rate * (end - at)) // WINDOW_MS - released
        if limit is not None:
            room = min(room, limit - taken)
        if room <= 0:
            break
        nxt = sched.next_change(count) if sched.counts_pushed else None
        if nxt is None or count + room < nxt:
            taken, released = taken + room, released + room
            last_at = max(earliest, at + max(0, _ceil_div(released * WINDOW_MS - credit, rate)))
            if sched.counts_pushed:
                count += room
            break
        take = nxt - count
        taken, released, count = taken + take, released + take, nxt
        reached = max(earliest, at + max(0, _ceil_div(released * WINDOW_MS - credit, rate)))
        credit, at = credit + rate * (reached - at), reached
        steps.append((nxt, reached))
        last_at = reached
    # The credit is kept as of the last step reached, not accrued up to ``end``: the rate
    # has been constant since, so later calls accrue it exactly; and a step that a later
    # release reaches may lie between that instant and this one.
    pushed = st.pushed_total + taken
    after = replace(
        st,
        released_in_window=released,
        pushed_total=pushed,
        credit_units=credit,
        credit_at_ms=at,
        starved=queue_empty if limit is not None else st.starved,
    )
    return _Walk(taken, after, tuple(steps), last_at)


def _forfeit_stale_credit(
    credit: int, at: int, released: int, rate: int, end: int, catch_up_ms: int
) -> tuple[int, int]:
    """``(credit, at)`` with the unused credit at ``end`` cut to ``catch_up_ms`` of ``rate``.

    A token bucket of ``catch_up_ms`` x ``rate``: the rate has been constant since ``at``
    (:class:`_Walk`'s invariant) and nothing was released between the last call and
    this one, so capping the surplus now is the same as capping it all along. Where the
    cut lies after ``at``, the meter restarts that long before ``end`` with nothing in
    hand (a step reached later is timed from there); otherwise the credit at ``at``
    shrinks by the excess.
    """
    # At least one device and a slice, so a rate under a device per two slices (10/min:
    # one every 6 s) still accrues whole devices and loses no fraction of one.
    bucket = max(rate * catch_up_ms, WINDOW_MS + rate * PACING_SLICE_MS)
    excess = credit + rate * (end - at) - released * WINDOW_MS - bucket
    if excess <= 0:
        return credit, at
    restart = end - bucket // rate
    if restart >= at:
        return released * WINDOW_MS, restart
    return credit - excess, at


def releasable(state: MeterState, t_ms: int, *, catch_up_ms: int | None = None) -> int:
    """How many devices may be released at event time ``t_ms`` (assuming all are waiting).

    See :func:`_walk`: one loop round per distinct rate reached, not per device.
    ``catch_up_ms``: a live meter's bound on unused credit (:data:`MAX_CATCH_UP_MS`).
    """
    return _walk(state, t_ms, None, False, catch_up_ms).released


def record_release(
    state: MeterState,
    t_ms: int,
    n: int,
    *,
    queue_empty: bool = False,
    catch_up_ms: int | None = None,
) -> MeterState:
    """Record that ``n`` devices were handed their URL at event time ``t_ms``.

    ``queue_empty``: no device was left waiting after these (a threshold that later
    devices reach is then reached no earlier than their own release).
    ``catch_up_ms``: as for :func:`releasable` (pass the same to both).
    Raises :class:`OverReleaseError` when ``n`` exceeds :func:`releasable`.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    # releases min(n, what is allowed)
    walk = _walk(state, t_ms, n, queue_empty, catch_up_ms)
    if walk.released < n:
        allowed = releasable(state, t_ms, catch_up_ms=catch_up_ms)
        raise OverReleaseError(f"{n} devices released but only {allowed} allowed at {t_ms}")
    return walk.state


def _accrued(state: MeterState, t_ms: int) -> MeterState:
    """The state with the window's credit accrued up to ``t_ms`` at the rate in force."""
    st = advance(state, t_ms)
    at = max(_offset(st, t_ms), st.credit_at_ms)
    credit = st.credit_units + current_rate(st) * (at - st.credit_at_ms)
    return replace(st, credit_units=credit, credit_at_ms=at)


def record_success(state: MeterState, n: int, t_ms: int) -> MeterState:
    """Record ``n`` devices reporting success at event time ``t_ms``.

    A rate counted on succeeded devices moves from that instant: the credit up to
    ``t_ms`` accrued at the old rate.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    st = _accrued(state, t_ms)
    return replace(st, succeeded_total=st.succeeded_total + n)


def record_unsent(state: MeterState, n: int, t_ms: int, released_at_ms: int) -> MeterState:
    """Take back ``n`` releases of event time ``released_at_ms`` that sent nothing.

    The device agent drops a release whose device went offline, or whose task was
    canceled, pulled or pushed meanwhile; "pushed" counts devices actually sent an
    offer, so those leave the pushed total (a rate counted on pushed devices is the
    one that total gives, from ``t_ms`` on) and, when released in the current window,
    free their slots in it for devices that are waiting.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    st = _accrued(state, t_ms)
    n = min(n, st.pushed_total)
    same_window = released_at_ms // WINDOW_MS == st.window
    return replace(
        st,
        pushed_total=st.pushed_total - n,
        released_in_window=max(0, st.released_in_window - n)
        if same_window
        else st.released_in_window,
    )


def change_config(state: MeterState, new_config: RateConfig) -> MeterState:
    """Queue an operator's new rate setting; it takes effect when the next window opens.

    Deferring to the next window keeps every window metered by one config, so
    lowering the rate can never retroactively over-release the current minute.
    Before the first event the "next window" is the first one, so the change
    applies at once. A later change replaces a still-pending one.
    Raises :class:`RateTypeChangeError` on constant <-> variable.
    """
    if new_config.kind != state.config.kind:
        raise RateTypeChangeError(state.config.kind, new_config.kind)
    if state.window is None:
        return replace(state, config=new_config, pending_config=None)
    return replace(state, pending_config=new_config)


@dataclass(frozen=True)
class WindowMeter:
    """Object-style façade over the functions above, for callers that prefer methods.

    Immutable like :class:`MeterState`: every update returns a new meter.
    """

    state: MeterState
    #: See :func:`releasable`; a live meter passes :data:`MAX_CATCH_UP_MS`.
    catch_up_ms: int | None = None

    @classmethod
    def start(cls, config: RateConfig, catch_up_ms: int | None = None) -> WindowMeter:
        return cls(MeterState.start(config), catch_up_ms)

    def releasable(self, t_ms: int) -> int:
        return releasable(self.state, t_ms, catch_up_ms=self.catch_up_ms)

    def release(self, t_ms: int, n: int, *, queue_empty: bool = False) -> WindowMeter:
        after = record_release(
            self.state, t_ms, n, queue_empty=queue_empty, catch_up_ms=self.catch_up_ms
        )
        return replace(self, state=after)

    def take(self, t_ms: int, waiting: int) -> tuple[int, WindowMeter]:
        """Release as many of ``waiting`` devices as allowed; returns (released, meter)."""
        waiting = max(waiting, 0)
        n = min(waiting, self.releasable(t_ms))
        return n, self.release(t_ms, n, queue_empty=n == waiting)

    def succeed(self, n: int, t_ms: int) -> WindowMeter:
        return replace(self, state=record_success(self.state, n, t_ms))

    def unsent(self, n: int, t_ms: int, released_at_ms: int) -> WindowMeter:
        return replace(self, state=record_unsent(self.state, n, t_ms, released_at_ms))

    def with_config(self, new_config: RateConfig) -> WindowMeter:
        """New config from the next window (raises :class:`RateTypeChangeError`)."""
        return replace(self, state=change_config(self.state, new_config))

    @property
    def rate(self) -> int:
        return current_rate(self.state)


@dataclass(frozen=True)
class PlanStep:
    """A rate, the counted total from which it is in force and when it came into force.

    ``start_ms``: batch time (ms from the start) at which the rate came into force;
    ``start_minute``: the 0-based minute window holding that instant.
    """

    rate: int
    pushed_at_start: int
    start_minute: int
    start_ms: int = 0


@dataclass(frozen=True)
class PlanMinute:
    """Cumulative devices pushed by the end of 0-based ``minute``."""

    minute: int
    pushed: int


@dataclass(frozen=True)
class Plan:
    steps: list[PlanStep]
    minutes: list[PlanMinute]
    total_minutes: int
    #: Batch time (ms) at which the last device is pushed (None: no device).
    finished_ms: int | None = None


def plan(config: RateConfig, devices: int, success_ratio: float = 1.0) -> Plan:
    """Predict a rollout of ``devices`` devices minute by minute.

    Runs the real meter (:func:`releasable` / :func:`record_release` /
    :func:`record_success`) with one tick at the last ms of each minute --
    which releases exactly what a meter ticking every second would by the
    window's end (see :func:`_walk`) -- assuming devices are always waiting.

    For a rate counted on *succeeded* devices, ``floor(pushed * success_ratio)``
    (exact decimal arithmetic) of the devices pushed so far are taken to have
    succeeded by the end of the minute they were pushed in, so a step reached
    that way is in force from the *next* minute. Real devices take longer;
    the plan is therefore the fastest case for that condition.

    ``steps`` lists each rate in force while devices remained (plus the
    starting rate) with the instant it came into force; ``total_minutes`` is the
    number of minute windows until the last device is pushed, ``finished_ms`` the
    instant it is.
    """
    if devices < 0:
        raise ValueError("devices must be >= 0")
    if not 0 <= success_ratio <= 1:
        raise ValueError("success_ratio must be between 0 and 1")
    ratio = Decimal(str(success_ratio))
    sched = schedule_for(config)
    state = MeterState.start(config)
    steps = [PlanStep(sched.rate_at(0), 0, 0, 0)]
    minutes: list[PlanMinute] = []
    minute = 0
    finished: int | None = None
    while state.pushed_total < devices:
        window_start = minute * WINDOW_MS
        t_end = window_start + WINDOW_MS - 1
        left = devices - state.pushed_total
        walk = _walk(state, t_end, min(releasable(state, t_end), left), False)
        state = replace(walk.state, starved=walk.released == left)
        for count, at in walk.steps:
            if count < devices:
                reached = window_start + at
                steps.append(PlanStep(sched.rate_at(count), count, reached // WINDOW_MS, reached))
        if state.pushed_total == devices and walk.last_at is not None:
            finished = window_start + walk.last_at
        if config.kind == "variable" and not sched.counts_pushed:
            target = int(state.pushed_total * ratio)  # int() floors a non-negative Decimal
            rate_before = current_rate(state)
            state = record_success(state, target - state.succeeded_total, t_end)
            rate_after = current_rate(state)
            if rate_after != rate_before and state.pushed_total < devices:
                at = window_start + WINDOW_MS
                steps.append(PlanStep(rate_after, state.pushed_total, minute + 1, at))
        minutes.append(PlanMinute(minute, state.pushed_total))
        minute += 1
    return Plan(steps=steps, minutes=minutes, total_minutes=minute, finished_ms=finished)
