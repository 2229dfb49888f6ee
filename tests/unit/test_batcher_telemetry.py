"""The batcher's side of a telemetry source: records mapped, skipped or refused, and
routed to the device's partition however the team keyed and partitioned its topic."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from otaflow.codec import codec
from otaflow.kafka_partitions import partition_for
from otaflow.report_sources import ReportSource, SourceMapper
from streams.batcher import Router, map_telemetry

PARTITIONS = 8
CODEC = codec()


@dataclass
class Msg:
    """The part of a confluent-kafka Message the batcher reads."""

    _key: bytes | None
    _value: bytes | None
    _partition: int
    _offset: int
    _timestamp: int = 1_800_000_000_000

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1 if self._timestamp >= 0 else 0, self._timestamp)


MAPPER = SourceMapper(
    ReportSource.from_table(
        {
            "name": "fleet",
            "topic": "fleet.telemetry",
            "product_key": "$.pk",
            "device_name": "$.dn",
            "version": "$.v",
            "only_when": {"$.type": "fw"},
        },
        Path("."),
    )
)


def record(dn: str, kind: str = "fw") -> bytes:
    return json.dumps({"type": kind, "pk": "pk", "dn": dn, "v": "1.0"}).encode()


def msgs(count: int, keyed_by: str) -> list[Msg]:
    """Records a team produced with Kafka's default partitioner, keyed by the device key
    or by the device name alone."""
    out = []
    for i in range(count):
        dn = f"d{i}"
        key = f"pk/{dn}".encode() if keyed_by == "device key" else dn.encode()
        out.append(Msg(key, record(dn), partition_for(key, PARTITIONS), i))
    return out


def test_records_keyed_by_the_device_key_keep_their_partition() -> None:
    router = Router(PARTITIONS, same_partitioning=True)
    reports, unmappable = map_telemetry(MAPPER, router, msgs(2000, "device key"), 0)
    routed = router.route(reports)
    assert unmappable == []
    assert len(routed) == 2000
    assert all(target == source for _, _, source, _, target in routed)
    assert router.hash_always == set()


def test_records_keyed_otherwise_are_rehashed_to_the_device_partition() -> None:
    batch = msgs(2000, "device name")
    # Each partition's first record is one whose device key hashes to that partition as
    # well, so the router's sampling alone would trust the next records of it.
    lucky: dict[int, Msg] = {}
    for m in batch:
        dn = (m.key() or b"").decode()
        if partition_for(f"pk/{dn}".encode(), PARTITIONS) == m.partition():
            lucky.setdefault(m.partition(), m)
    assert len(lucky) == PARTITIONS
    batch = list(lucky.values()) + [m for m in batch if m not in lucky.values()]
    router = Router(PARTITIONS, same_partitioning=True)
    routed = []
    for start in range(0, len(batch), 40):  # polls of 40 records
        reports, _ = map_telemetry(MAPPER, router, batch[start : start + 40], 0)
        routed += router.route(reports)
    # Every one, including those whose partition the sampling would have let pass.
    assert all(target == partition_for(key, PARTITIONS) for key, _, _, _, target in routed)
    assert router.hash_always == set(range(PARTITIONS))


def test_skipped_unmappable_and_timeless_records() -> None:
    router = Router(PARTITIONS, same_partitioning=False)
    batch = [
        Msg(b"a", record("a", kind="heartbeat"), 0, 0),
        Msg(b"b", b"{broken", 0, 1),
        Msg(b"c", None, 0, 2),
        Msg(b"d", record("d"), 0, 3, _timestamp=-1),
    ]
    reports, unmappable = map_telemetry(MAPPER, router, batch, now_ms=42)
    assert [(m.offset(), reason.split(":")[0:2]) for m, reason in unmappable] == [
        (1, ["fleet", " not JSON"]),
        (2, ["fleet", " not JSON"]),
    ]
    ((key, value, partition, offset),) = reports
    assert (key, partition, offset) == (b"pk/d", 0, 3)
    assert CODEC.decode_as("DeviceReport", value)["event_time"] == 42
