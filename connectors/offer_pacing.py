"""Offers leave the egress no faster than the rate agent released them (issue 16).

A ``Notification`` carries its ``event_time``: for a push, the instant the batch's rate
agent released it. The rate agent paces those instants (otaflow.domain.rate), so the
stream of notifications is already at every batch's rate *in event time*. An egress
that was stopped, lost its broker or fell behind finds a backlog on Kafka; sent as
fast as it can (870-939 offers/s measured at 100/s configured), that backlog would be a
burst the rate was meant to prevent.

:class:`EventTimePacer` replays the notifications with the spacing of their event
times, shifted: a record of event time ``e`` is due at wall time ``e + shift``. The
shift is set by the first record after the egress was idle (that record goes out at
once), and grows whenever a record would go out more than ``max_late_ms`` after it was
due (the egress or its broker stalled, or the worker delivered late): the stall moves
the whole replay later instead of compressing it. It falls back to nothing when the
egress is idle (nothing held, nothing more on Kafka), so the delay a stall added ends
with the backlog. The egress needs no knowledge of rates or batches: keeping the
spacing keeps every batch's rate, whatever mix of batches a partition holds.

Pure (no clock, no I/O): the caller passes wall time in ms.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

Item = TypeVar("Item")

#: A record up to this late on its due time goes out at once; later, the shift grows.
#: Small against a pacing slice (1 s), large against the pipeline's jitter.
MAX_LATE_MS = 200


class EventTimePacer(Generic[Item]):
    """Items held until their event time, shifted to wall time, is due; one FIFO per lane.

    A lane is a Kafka partition: its records are in event-time order (near enough), while
    two partitions' records interleave in any order as they are consumed, so one FIFO
    for all would hold a partition's due records behind another's later ones. Lanes
    share the shift: it is one replay of one release stream.
    """

    def __init__(self, max_late_ms: int = MAX_LATE_MS) -> None:
        self.max_late_ms = max_late_ms
        #: wall ms - event ms; None while idle (the next record sets it).
        self.shift: int | None = None
        self.lanes: dict[int, deque[tuple[int, Item]]] = {}
        self._held = 0

    def __len__(self) -> int:
        return self._held

    def _due(self, event_ms: int, now_ms: int) -> bool:
        if self.shift is None:
            self.shift = now_ms - event_ms
            return True
        late = now_ms - (event_ms + self.shift)
        if late < 0:
            return False
        if late > self.max_late_ms:
            self.shift += late  # a stall: the rest of the replay moves with it
        return True

    def offer(
        self, lane: int, event_ms: int, item: Item, now_ms: int, *, can_send: bool = True
    ) -> bool:
        """True: send ``item`` now. False: it is held (behind others of its lane, not due
        yet, or ``can_send`` is False: the broker is away, so it waits here, paced, not
        in the MQTT client where it would all go out at once on the reconnect)."""
        held = self.lanes.get(lane)
        if can_send and not held and self._due(event_ms, now_ms):
            return True
        if held is None:
            held = self.lanes[lane] = deque()
        held.append((event_ms, item))
        self._held += 1
        return False

    def due(self, now_ms: int) -> list[Item]:
        """The held items due by ``now_ms`` (call only when they can be sent)."""
        out: list[Item] = []
        for held in self.lanes.values():
            while held and self._due(held[0][0], now_ms):
                out.append(held.popleft()[1])
        self._held -= len(out)
        return out

    def idle(self) -> None:
        """Nothing more to read: if nothing is held either, the next record starts anew."""
        if not self._held:
            self.shift = None

    def drop(self, lanes: set[int]) -> list[Item]:
        """Remove the held items of ``lanes`` (revoked partitions); returns them."""
        dropped = [item for lane in lanes for _, item in self.lanes.pop(lane, ())]
        self._held -= len(dropped)
        return dropped


#: Offers handed out in answer to device pulls, per minute and egress process, by default:
#: the platform's highest push rate.
DEFAULT_PULL_OFFERS_PER_MINUTE = 10_000


class PullSlots:
    """Spaces the offers answering device pulls (``firmware/get``) to ``per_minute``.

    A pull is the device's request, not the rate agent's release, so its event time
    carries no pacing: after a broker restart a fleet reconnects and asks at once
    (1,800 in one second measured). Each offer a pull gets is given a send time at
    least ``60,000 / per_minute`` ms after the previous one's (in event time); the
    :class:`EventTimePacer` then sends it then. Pulls answered with no offer are not
    limited (they hand out no download).
    """

    def __init__(self, per_minute: int = DEFAULT_PULL_OFFERS_PER_MINUTE) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.spacing_ms = 60_000 / per_minute
        self._next_ms = float("-inf")

    def take(self, event_ms: int) -> int:
        """The event time to pace an offer asked for at ``event_ms`` by."""
        at = max(float(event_ms), self._next_ms)
        self._next_ms = at + self.spacing_ms
        return int(at)
