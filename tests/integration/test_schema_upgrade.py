"""Upgrading otaflow keeps the fleet's state: a rollout's state written in the previous
release's schemas, in RocksDB and in the changelog, is read by today's worker, which
finishes the rollout with nothing lost (``docs/schema-evolution.md``)."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from rocksdict import Options, Rdict

from otaflow import topics
from otaflow.codec import Codec
from tests.integration.conftest import Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import DEVICES, MINUTE, RATE, start_rollout, tick_minute
from tests.schema_support import Transcoder, previous_release

pytestmark = pytest.mark.integration

# The previous release: today's schemas less fields added since, each with a default
# that is what this rollout's state holds in them (Transcoder checks it), as if these
# fields were this release's additions.
ADDED_SINCE = {
    "DeviceState": ["group_matches", "city"],
    "Task": ["retry_at"],
    "Batch": ["tags"],
    "BatchMeter": ["canceled"],
    "ControlJob": ["finished_at"],
    "ControlProduct": ["description"],
    "Firmware": ["module"],
}
OFFSET_KEY = b"__faust\0offset__"
TODAY = Codec(released=[])


def changelogs(otaflow: Otaflow) -> list[str]:
    names = AdminClient({"bootstrap.servers": otaflow.settings.kafka_bootstrap}).list_topics(
        timeout=10
    )
    prefix = f"{otaflow.settings.app_id}-"
    return sorted(n for n in names.topics if n.startswith(prefix) and n.endswith("-changelog"))


def latest(otaflow: Otaflow, topic: str) -> dict[tuple[int, bytes], bytes]:
    """The topic's last value per partition and key, read to its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": otaflow.settings.kafka_bootstrap,
            "group.id": f"upgrade-{topic}",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    out: dict[tuple[int, bytes], bytes] = {}
    for partition in meta:
        tp = TopicPartition(topic, partition, 0)
        _, high = consumer.get_watermark_offsets(tp, timeout=10)
        consumer.assign([tp])
        position, deadline = 0, time.monotonic() + 60
        while position < high:
            assert time.monotonic() < deadline, f"{topic}/{partition}: stuck at {position}"
            for msg in consumer.consume(1000, 1.0):
                offset, key, value = msg.offset(), msg.key(), msg.value()
                position = position if offset is None else offset + 1
                if msg.error() is None and key is not None and value is not None:
                    out[(partition, key)] = value
    consumer.close()
    return out


def rewrite_changelogs(otaflow: Otaflow, transcode: Transcoder) -> Counter[str]:
    """Append every table's latest records in the previous release's schemas (the
    compacted changelog then holds only those); what was rewritten, by record type."""
    producer = Producer({"bootstrap.servers": otaflow.settings.kafka_bootstrap})
    rewritten: Counter[str] = Counter()
    for topic in changelogs(otaflow):
        for (partition, key), value in latest(otaflow, topic).items():
            old = transcode(value)
            rewritten[TODAY.decode(value)[0]] += old != value
            producer.produce(topic, key=key, value=old, partition=partition)
    assert producer.flush(30) == 0
    return rewritten


def rewrite_rocksdb(data: Path, transcode: Transcoder) -> int:
    """Every table row of the worker's RocksDB in the previous release's schemas."""
    count = 0
    for path in sorted(data.rglob("*.db")):
        db = Rdict(str(path), options=Options(raw_mode=True))
        rows = [(k, v) for k, v in db.items() if k != OFFSET_KEY]
        for key, value in rows:
            db[key] = transcode(value)
        count += len(rows)
        db.close()
    return count


def device_states(otaflow: Otaflow, reader: Codec) -> dict[bytes, dict[str, Any]]:
    [topic] = [t for t in changelogs(otaflow) if t.endswith("-devices-changelog")]
    return {
        key: reader.decode_as("DeviceState", v) for (_, key), v in latest(otaflow, topic).items()
    }


def test_todays_worker_finishes_a_rollout_on_the_previous_releases_state(
    otaflow: Otaflow, tmp_path: Path
) -> None:
    previous_dir = previous_release(tmp_path / "previous-release", ADDED_SINCE)
    transcode = Transcoder(previous_dir, TODAY)
    upgraded = Codec(released=[previous_dir])
    # The worker keeps reading the released schemas of schemas/released/ and this one.
    otaflow.env["OTAFLOW_SCHEMA_RELEASES"] = str(previous_dir)

    start_rollout(otaflow, "pkUpgrade")
    tick_minute(otaflow, 0)
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "NOTIFIED" for e in v) == RATE, what="minute 0")
    otaflow.stop("worker")  # SIGTERM: state flushed to RocksDB and the changelog
    before = device_states(otaflow, TODAY)
    assert len(before) == DEVICES

    # The state as the previous release would have left it, in both places.
    rewritten = rewrite_changelogs(otaflow, transcode)
    assert rewritten["DeviceState"] == DEVICES
    assert rewritten["BatchMeter"] > 0 and rewritten["Batch"] > 0
    assert rewrite_rocksdb(otaflow.tmp / "data", transcode) >= DEVICES
    # Even partitions restore from the changelog, odd ones start from RocksDB.
    dbs = sorted((otaflow.tmp / "data").rglob("*.db"))
    assert len([p for p in dbs if p.name.startswith("devices-")]) == otaflow.settings.partitions
    for path in dbs:
        if int(path.stem.rsplit("-", 1)[1]) % 2 == 0:
            shutil.rmtree(path)

    otaflow.start_worker()
    tick_minute(otaflow, 1)
    tick_minute(otaflow, 2)
    events.wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) >= DEVICES,
        timeout=180,
        what="all notified",
    )
    # Every task released once, at the rate: device states, meters and queues were read.
    notified = [e for e in events.values() if e["status"] == "NOTIFIED"]
    assert len({e["task_id"] for e in notified}) == len(notified) == DEVICES
    per_minute = Counter((e["event_time"] - T0) // MINUTE for e in notified)
    assert per_minute == {0: RATE, 1: RATE, 2: RATE}
    assert otaflow.reader(topics.DEAD_LETTERS).values() == []
    otaflow.stop("worker")

    # Each device's state: what it was before the upgrade, its task now notified.
    after = device_states(otaflow, upgraded)
    assert after.keys() == before.keys()
    for key, state in before.items():
        [task] = state["tasks"]
        assert after[key] == {**state, "tasks": [{**task, **_pushed(after[key], task)}]}


def _pushed(state: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The fields a release changes on a task (anything else must be as it was)."""
    [now] = state["tasks"]
    if task["status"] == "NOTIFIED":
        return {}
    assert task["status"] == "QUEUED" and now["status"] == "NOTIFIED"
    return {k: now[k] for k in ("status", "updated_at", "in_push_queue", "timeout_minutes")}
