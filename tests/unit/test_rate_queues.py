"""The rate agent's queue and meters without Faust: FIFO order across chunks, releases
at the batch's rate on event time, acknowledged before the queue advances, cancels,
dead letters, and the partition's watermark."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from otaflow.codec import codec
from otaflow.domain.rate import RateConfig
from otaflow.domain.rate_settings import to_settings
from otaflow.domain.simulation import control_record, make_batch
from streams.rate_queues import BatchMeter, RateQueues, chunk_key

CODEC = codec()
T0 = 1_000_000_000


class Harness:
    """Tables as dicts, two device partitions by the key's last character, sends recorded."""

    def __init__(self, fail_sends: bool = False) -> None:
        self.meters: dict[bytes, bytes] = {}
        self.queue: dict[bytes, bytes] = {}
        self.sent: list[dict[int, bytes]] = []
        self.dead: list[tuple[str, str, int]] = []
        self.fail_sends = fail_sends
        self.queues = RateQueues(
            self.meters,
            self.queue,
            self._scan,
            lambda key: int(key[-1]) % 2,
            self._send,
            self._dead_letter,
        )

    def _scan(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted(self.meters.items()))

    async def _send(self, envelopes: dict[int, bytes]) -> None:
        if self.fail_sends:
            raise ConnectionError("not acknowledged")
        self.sent.append(envelopes)

    async def _dead_letter(self, source: str, reason: str, raw: bytes, now: int) -> None:
        self.dead.append((source, reason, now))

    def event(self, body_name: str, body: dict[str, Any]) -> None:
        value = CODEC.encode("RateEvent", {"body": (f"otaflow.{body_name}", body)})
        asyncio.run(self.queues.process(0, value))

    def start(self, rate: int, at: int = T0) -> None:
        batch = make_batch("b1", rate=to_settings(RateConfig.constant(rate)))
        self.event("BatchControl", control_record("START", batch, at))

    def enqueue(self, names: list[str], at: int) -> None:
        tasks = [{"task_id": f"t-{n}", "product_key": "pk", "device_name": n} for n in names]
        self.event("TasksQueued", {"batch_id": "b1", "tasks": tasks, "event_time": at})

    def released(self) -> list[tuple[int, str]]:
        out = []
        for envelopes in self.sent:
            for partition, envelope in sorted(envelopes.items()):
                for item in CODEC.decode_as("DeviceEventBatch", envelope)["items"]:
                    out.append((partition, CODEC.decode_as("TaskRelease", item)["device_name"]))
        return out

    def meter(self) -> dict[str, Any]:
        return CODEC.decode_as("BatchMeter", self.meters[b"b1"])


def test_a_batch_without_a_rate_queues_and_releases_nothing() -> None:
    h = Harness()
    h.enqueue(["d1", "d2"], T0)
    assert h.sent == []
    assert h.meter()["queued"] == 2 and chunk_key("b1", 0) in h.queue


def test_releases_follow_the_rate_in_fifo_order_across_chunks() -> None:
    h = Harness()
    h.start(rate=60, at=T0)  # one a second
    h.enqueue(["d1", "d2", "d3"], T0)
    h.enqueue(["d4", "d5"], T0)
    first = len(h.released())
    for second in range(1, 11):  # ticks every second, as the workers' ticker sends them
        h.event("Tick", {"event_time": T0 + second * 1000})
    names = [name for _, name in h.released()]
    assert first < 5 and names == ["d1", "d2", "d3", "d4", "d5"]
    assert {p for p, _ in h.released()} == {0, 1}  # each to its device's partition
    meter = h.meter()
    assert meter["queued"] == 0 and meter["queue_head"] == meter["queue_tail"] == 2
    assert h.queue == {}  # used chunks deleted once the releases were acknowledged


def test_a_release_that_is_not_acknowledged_leaves_the_queue_and_meter_as_they_were() -> None:
    h = Harness()
    h.start(rate=60, at=T0)
    h.enqueue(["d1", "d2", "d3", "d4"], T0)
    released = len(h.released())
    h.fail_sends = True
    before = dict(h.queue), dict(h.meters)
    with pytest.raises(ConnectionError):
        h.event("Tick", {"event_time": T0 + 1000})
    assert (h.queue, h.meters) == before
    h.fail_sends = False  # the replay of the tick releases what was due
    h.event("Tick", {"event_time": T0 + 1000})
    assert len(h.released()) > released


def test_a_cancel_of_queued_tasks_empties_the_queue() -> None:
    h = Harness()
    h.start(rate=10, at=T0)
    h.enqueue([f"d{i}" for i in range(40)], T0)
    batch = make_batch("b1", rate=to_settings(RateConfig.constant(10)))
    h.event("BatchControl", control_record("CANCEL_TASKS", batch, T0 + 1, ["QUEUED"]))
    released = len(h.released())
    assert h.queue == {} and h.meter()["queued"] == 0
    for second in range(1, 61):
        h.event("Tick", {"event_time": T0 + second * 1000})
    assert len(h.released()) == released


def test_a_corrupt_event_is_dead_lettered_at_the_partitions_watermark() -> None:
    h = Harness()
    h.event("Tick", {"event_time": T0})
    asyncio.run(h.queues.process(0, b"garbage"))
    assert h.dead and h.dead[0][0] == "rate-events/0" and h.dead[0][2] == T0
    h.event("Tick", {"event_time": T0 - 5})  # late: the watermark stays
    assert h.queues.watermarks[0] == T0


def test_pop_tasks_reads_a_chunk_once_and_keeps_its_place_inside_it() -> None:
    h = Harness()
    h.enqueue(["d1", "d2", "d3"], T0)
    meter = h.queues.load_meter("b1", 0)
    assert [t["device_name"] for t in h.queues.pop_tasks(meter, 2)] == ["d1", "d2"]
    h.queue[chunk_key("b1", 0)] = b"changed behind the cache"
    assert [t["device_name"] for t in h.queues.pop_tasks(meter, 5)] == ["d3"]
    assert meter.record["queue_head"] == 1 and meter.record["queued"] == 0


def test_a_new_meter_round_trips_through_its_record() -> None:
    meter = BatchMeter.new("b9", 3)
    assert meter.state is None
    decoded = CODEC.decode_as("BatchMeter", meter.encode())
    assert (decoded["batch_id"], decoded["partition"], decoded["queued"]) == ("b9", 3, 0)
