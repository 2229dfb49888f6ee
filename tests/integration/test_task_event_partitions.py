"""Where a round's task events land: on their device's partition, by key, whether the
topics are co-partitioned (sent to the round's partition, one delivery report) or not
(librdkafka's murmur2 partitioner picks, a report per record)."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from otaflow import topics
from otaflow.config import Settings
from otaflow.dev import devstack
from otaflow.device_keys import device_key
from otaflow.kafka_partitions import partition_for
from streams.effects import EffectSender
from tests.integration.conftest import scratch

pytestmark = pytest.mark.integration

DEVICE_PARTITIONS = 4


def deployment(stack: devstack.DevStack, task_event_partitions: int) -> Settings:
    settings = scratch(
        Settings(kafka_bootstrap=stack.kafka_bootstrap, partitions=DEVICE_PARTITIONS)
    )
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    created = admin.create_topics(
        [
            NewTopic(topics.TASK_EVENTS.full_name(settings), task_event_partitions, 1),
            NewTopic(topics.DEVICE_EVENTS.full_name(settings), DEVICE_PARTITIONS, 1),
        ]
    )
    for future in created.values():
        future.result(30)
    return settings


def read_partitions(settings: Settings, count: int, expected: int) -> dict[bytes, int]:
    """Key -> partition of the first ``expected`` records of the task-events topic."""
    name = topics.TASK_EVENTS.full_name(settings)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "unused", "log_level": 0}
    )
    consumer.assign([TopicPartition(name, p, 0) for p in range(count)])
    found: dict[bytes, int] = {}
    try:
        for _ in range(200):
            for msg in consumer.consume(1000, 0.1):
                key, partition = msg.key(), msg.partition()
                if msg.error() is None and key is not None and partition is not None:
                    found[key] = partition
            if len(found) >= expected:
                break
    finally:
        consumer.close()
    return found


@pytest.mark.parametrize("task_event_partitions", [DEVICE_PARTITIONS, 3])
def test_a_rounds_task_events_land_on_their_devices_partition(
    stack: devstack.DevStack, task_event_partitions: int
) -> None:
    settings = deployment(stack, task_event_partitions)
    round_partition = 2
    keys = [
        key
        for i in range(400)
        if partition_for(key := device_key("pk", f"d{i}").encode(), DEVICE_PARTITIONS)
        == round_partition
    ]
    sender = EffectSender(settings)
    assert sender.copartitioned() is (task_event_partitions == DEVICE_PARTITIONS)
    sender.send_task_events([{"key": k, "value": b"event"} for k in keys], round_partition)
    sender.flush(30)
    landed = read_partitions(settings, task_event_partitions, len(keys))
    assert landed == {k: partition_for(k, task_event_partitions) for k in keys}
    if task_event_partitions == DEVICE_PARTITIONS:
        assert set(landed.values()) == {round_partition}
