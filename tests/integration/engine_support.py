"""Driving the device engine on real Kafka with the records the command agent sends.

``EngineDriver`` writes ``DeviceEventBatch`` envelopes straight onto
``otaflow.device-events`` — device-scoped records (reports, registrations, targets,
task commands) to their device's partition, controls and group changes to every
partition, batch controls to the rate agent too — all through one idempotent
producer, so every partition sees them in the order the test wrote them (a
report sent before a START is applied before it). Ticks go the same way.

``check_task_view`` replays the task-status topic into the API's task view and
requires ListOTATaskByJob and QueryOTAJob's statistics to agree with it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import Producer

from otaflow import topics
from otaflow.api.views import TaskView
from otaflow.codec import codec
from otaflow.device_keys import device_key
from otaflow.domain.batches import Batch
from otaflow.domain.rate import RateConfig
from otaflow.domain.rate_settings import to_settings
from otaflow.domain.simulation import (
    command_record,
    control_record,
    group_record,
    registration_record,
    report_record,
    target_record,
)
from otaflow.kafka_partitions import CONFLUENT_PARTITIONER, partition_for
from tests.integration.conftest import Otaflow

CODEC = codec()
ENVELOPE_LIMIT = 700_000
T0 = 1_800_000_000_000  # event time of the tests' world, far from the wall clock
S = 1000
FAST = to_settings(RateConfig.constant(10_000))


class EngineDriver:
    def __init__(self, otaflow: Otaflow) -> None:
        self.otaflow = otaflow
        self.settings = otaflow.settings
        self.partitions = otaflow.settings.partitions
        self.events_topic = topics.DEVICE_EVENTS.full_name(self.settings)
        self.rate_topic = topics.RATE_EVENTS.full_name(self.settings)
        self.producer = Producer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                # Keyed records (batch controls to the rate agent) go where Faust's
                # own producers send the same keys.
                "partitioner": CONFLUENT_PARTITIONER,
                "enable.idempotence": True,
                "linger.ms": 5,
                "batch.size": 1_000_000,
                "message.max.bytes": 1_000_000,
                "queue.buffering.max.messages": 2_000_000,
            }
        )
        self.pending: dict[int, list[bytes]] = defaultdict(list)

    # -- sending ---------------------------------------------------------------------------

    def partition_of(self, pk: str, dn: str) -> int:
        return partition_for(device_key(pk, dn).encode(), self.partitions)

    def to_device(self, pk: str, dn: str, schema: str, record: dict[str, Any]) -> None:
        """Queue a device-scoped record; ``send()`` packs and writes what is queued."""
        self.pending[self.partition_of(pk, dn)].append(CODEC.encode(schema, record))

    def send(self) -> None:
        for partition, items in sorted(self.pending.items()):
            chunk: list[bytes] = []
            size = 0
            for item in items:
                if chunk and size + len(item) + 8 > ENVELOPE_LIMIT:
                    self._produce(partition, chunk)
                    chunk, size = [], 0
                chunk.append(item)
                size += len(item) + 8
            if chunk:
                self._produce(partition, chunk)
        self.pending.clear()
        self.producer.flush(30)

    def _produce(self, partition: int, items: list[bytes]) -> None:
        envelope = CODEC.encode("DeviceEventBatch", {"items": items})
        while True:
            try:
                self.producer.produce(self.events_topic, value=envelope, partition=partition)
                return
            except BufferError:
                self.producer.poll(0.1)

    def broadcast(self, schema: str, record: dict[str, Any]) -> None:
        self.send()
        item = CODEC.encode(schema, record)
        for partition in range(self.partitions):
            self._produce(partition, [item])
        self.producer.flush(30)

    # -- the records ---------------------------------------------------------------------

    def report(self, pk: str, dn: str, kind: str, at: int, **fields: Any) -> None:
        self.to_device(pk, dn, "DeviceReport", report_record(pk, dn, kind, at, **fields))

    def version(self, pk: str, dn: str, version: str, at: int, module: str = "default") -> None:
        self.report(pk, dn, "VERSION", at, version=version, module=module)

    def progress(
        self, pk: str, dn: str, step: int, at: int, module: str = "default", desc: str = ""
    ) -> None:
        self.report(pk, dn, "PROGRESS", at, step=step, module=module, desc=desc)

    def register(self, pk: str, dn: str, at: int, **fields: Any) -> None:
        """``fields``: ``registration_record``'s (province, city, groups, action)."""
        self.to_device(pk, dn, "DeviceRegistration", registration_record(pk, dn, at, **fields))

    def target(self, batch: Batch, names: Iterable[str], at: int) -> None:
        for dn in names:
            record = target_record(batch.batch_id, batch.product_key, dn, at)
            self.to_device(batch.product_key, dn, "BatchTarget", record)

    def command(self, action: str, pk: str, dn: str, at: int, **fields: Any) -> None:
        self.to_device(pk, dn, "TaskCommand", command_record(action, pk, dn, at, **fields))

    def control(self, action: str, batch: Batch, at: int, statuses: Sequence[str] = ()) -> None:
        """What the command agent's ``broadcast_control`` sends: rate agent, then partitions."""
        control = control_record(action, batch, at, statuses)
        self.send()
        self.producer.produce(
            self.rate_topic,
            key=batch.batch_id.encode(),
            value=CODEC.encode("RateEvent", {"body": ("otaflow.BatchControl", control)}),
        )
        self.broadcast("BatchControl", control)

    def start(self, batch: Batch) -> None:
        self.control("START", batch, batch.created_at)

    def group(self, group_id: str, at: int, **fields: Any) -> None:
        """``fields``: ``group_record``'s (expression, parent_id, deleted)."""
        self.broadcast("GroupControl", group_record(group_id, at, **fields))

    def tick(self, at: int, rate: bool = True) -> None:
        """Event time for every partition of the device and (unless not ``rate``) the
        rate topic."""
        self.send()
        tick = {"event_time": at}
        item = CODEC.encode("Tick", tick)
        rate_tick = CODEC.encode("RateEvent", {"body": ("otaflow.Tick", tick)})
        for partition in range(self.partitions):
            self._produce(partition, [item])
            if rate:
                self.producer.produce(self.rate_topic, value=rate_tick, partition=partition)
        self.producer.flush(30)


# -- reading -----------------------------------------------------------------------------


def latest(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last event of every task."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        out[e["task_id"]] = e
    return out


def task_statuses(events: list[dict[str, Any]], batch_id: str) -> dict[str, list[str]]:
    """device -> the final status of each of its tasks of the batch (in creation order)."""
    out: dict[str, list[str]] = defaultdict(list)
    for e in latest(events).values():
        if e["batch_id"] == batch_id:
            out[e["device_name"]].append(e["status"])
    return dict(out)


def devices_with(
    events: list[dict[str, Any]], batch_id: str, status: str | None = None
) -> set[str]:
    return {
        e["device_name"]
        for e in latest(events).values()
        if e["batch_id"] == batch_id and (status is None or e["status"] == status)
    }


def settle(reader: Any, seconds: float = 1.0) -> list[dict[str, Any]]:
    """Read until nothing new arrived for ``seconds``."""
    count = -1
    values: list[dict[str, Any]] = []
    while count != len(values):
        count = len(values)
        time.sleep(seconds)
        values = reader.values()
    return values


def check_task_view(events: list[dict[str, Any]]) -> None:
    """ListOTATaskByJob and QueryOTAJob's statistics, from the topic, agree with it."""
    view = TaskView()
    for e in events:
        view.apply_task_event(e)
    finals = latest(events)
    for batch_id in {e["batch_id"] for e in events}:
        mine = {t: e for t, e in finals.items() if e["batch_id"] == batch_id}
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            data, top = view.answer(
                "ListOTATaskByJob", {"JobId": batch_id, "CurrentPage": str(page), "PageSize": "100"}
            )
            rows.extend(data["SimpleOTATaskInfo"])
            if page * 100 >= top["Total"]:
                break
            page += 1
        assert {r["TaskId"]: r["TaskStatus"] for r in rows} == {
            t: e["status"] for t, e in mine.items()
        }, batch_id
        assert all(r["Progress"] == str(mine[r["TaskId"]]["progress"]) for r in rows)
        stats = view.statistics(batch_id)
        counts = Counter(e["status"] for e in mine.values())
        assert stats["Total"] == len(mine)
        for status, name in (
            ("QUEUED", "Queued"),
            ("NOTIFIED", "Notified"),
            ("IN_PROGRESS", "InProgress"),
            ("SUCCEEDED", "Succeeded"),
            ("FAILED", "Failed"),
            ("CANCELED", "Canceled"),
            ("CONFIRM", "Confirm"),
        ):
            assert stats[name] == counts[status], (batch_id, status)
        by_src = Counter(e["src_version"] or "" for e in mine.values())
        assert {s["SrcVersion"]: s["Total"] for s in stats["SrcVersions"]} == dict(by_src)
