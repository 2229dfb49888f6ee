"""produce_all: keyed records land where Kafka's partitioner puts them, and a full queue
only delays records, never drops them."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Producer

from otaflow import config, topics
from otaflow.dev import devstack
from otaflow.kafka_partitions import CONFLUENT_PARTITIONER, partition_for
from streams.produce import produce_all
from tests.integration.conftest import scratch

pytestmark = pytest.mark.integration


def deliver(producer_config: dict[str, Any], partition: int | None) -> list[tuple[bytes, int]]:
    stack = devstack.up()
    settings = scratch(config.Settings(kafka_bootstrap=stack.kafka_bootstrap))
    topic = settings.topic_prefix + "produce"
    topics.create_topics(stack.kafka_bootstrap, [(topic, 8, {})])
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, **producer_config})
    delivered: list[tuple[bytes, int]] = []

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        delivered.append((msg.key(), msg.partition()))

    messages = [{"key": f"pk/dev-{i}".encode(), "value": b"v"} for i in range(500)]
    produce_all(producer, topic, messages, on_delivery, partition)
    assert producer.flush(30) == 0
    topics.delete_topics(stack.kafka_bootstrap, [topic])
    return delivered


def test_keyed_records_follow_the_partitioner() -> None:
    delivered = deliver({"partitioner": CONFLUENT_PARTITIONER}, partition=None)
    assert len(delivered) == 500
    assert all(p == partition_for(key, 8) for key, p in delivered)


def test_a_full_queue_delays_records_and_loses_none() -> None:
    delivered = deliver({"queue.buffering.max.messages": 50, "linger.ms": 5}, partition=3)
    assert sorted(key for key, _ in delivered) == sorted(f"pk/dev-{i}".encode() for i in range(500))
    assert {p for _, p in delivered} == {3}


def test_without_a_batch_callback_only_a_messages_own_callback_reports() -> None:
    """The changelog writer's way: one delivery report, on the last record of a write,
    which is delivered after every other (one partition, in order), even when a full
    queue sends some of them again."""
    stack = devstack.up()
    settings = scratch(config.Settings(kafka_bootstrap=stack.kafka_bootstrap))
    topic = settings.topic_prefix + "produce-last"
    topics.create_topics(stack.kafka_bootstrap, [(topic, 8, {})])
    producer = Producer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "enable.idempotence": True,
            "enable.gapless.guarantee": True,
            "queue.buffering.max.messages": 50,
            "linger.ms": 5,
        }
    )
    reports: list[tuple[bytes, int]] = []

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        reports.append((msg.key(), msg.offset()))

    messages: list[dict[str, Any]] = [
        {"key": f"pk/dev-{i}".encode(), "value": b"v"} for i in range(500)
    ]
    produce_all(producer, topic, messages, None, partition=3, on_last_delivery=on_delivery)
    assert producer.flush(30) == 0
    topics.delete_topics(stack.kafka_bootstrap, [topic])
    # At most a report per round of the full queue, the last one for the partition's last
    # offset: every one of the 500 records was delivered before it, the resent ones too.
    assert 1 <= len(reports) < 500
    assert reports[-1][1] == 499
    assert [offset for _, offset in reports] == sorted(offset for _, offset in reports)
