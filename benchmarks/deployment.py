"""An isolated otaflow deployment for a benchmark run: its own topics, state and processes.

Benchmarks run against the real dev stack (or the servers named in the environment),
start otaflow's own processes, feed records straight onto Kafka with confluent-kafka
and read progress from Kafka (committed offsets, output topics).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from otaflow import config, topics
from otaflow.codec import codec
from otaflow.config import Settings
from otaflow.dev import devstack
from otaflow.device_keys import device_key
from otaflow.kafka_partitions import CONFLUENT_PARTITIONER
from otaflow.processes import ProcessGroup

CODEC = codec()
T = TypeVar("T")
# Event time of the benchmarks' simulated fleet (in 2027, far from the wall clock). A
# scenario that measures on the wall clock must not mix it in (see ``warm_up``).
T0 = 1_800_000_000_000
LOG_TAIL_LINES = 40


class BenchDeployment:
    def __init__(self, name: str, partitions: int = 8, tick_interval_s: float = 0) -> None:
        stack = devstack.up()
        self.settings: Settings = replace(
            topics.scratch_settings(config.load(), f"bench-{name}"),
            kafka_bootstrap=stack.kafka_bootstrap,
            mqtt=config.MqttAddress.parse(stack.mqtt_url),
            partitions=partitions,
            tick_interval_s=tick_interval_s,
        )
        self.root = config.cache_dir() / "bench" / self.settings.app_id
        self.env = {
            "OTAFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "OTAFLOW_MQTT_URL": stack.mqtt_url,
            "OTAFLOW_PARTITIONS": str(partitions),
            "OTAFLOW_TOPIC_PREFIX": self.settings.topic_prefix,
            "OTAFLOW_APP_ID": self.settings.app_id,
            "OTAFLOW_TICK_INTERVAL": str(tick_interval_s),
            "OTAFLOW_DATA": str(self.root / "data"),
            "OTAFLOW_PACKAGE_DIR": str(self.root / "packages"),
        }
        topics.ensure_topics(stack.kafka_bootstrap, self.settings)
        self.group = ProcessGroup(self.env, log_dir=self.root / "logs")
        self.producer = Producer(
            {
                "bootstrap.servers": stack.kafka_bootstrap,
                "partitioner": CONFLUENT_PARTITIONER,
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 2_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
            }
        )

    def topic(self, spec: topics.TopicSpec) -> str:
        return spec.full_name(self.settings)

    def produce_reports(self, records: list[tuple[bytes, bytes]]) -> float:
        """Produce pre-encoded (key, value) reports; returns seconds taken."""
        name = self.topic(topics.DEVICE_REPORTS)
        start = time.perf_counter()
        for key, value in records:
            while True:
                try:
                    self.producer.produce(name, key=key, value=value)
                    break
                except BufferError:
                    self.producer.poll(0.05)
        self.producer.flush(120)
        return time.perf_counter() - start

    def committed_lag(self, group_id: str, spec: topics.TopicSpec) -> int:
        """Records of ``spec`` the consumer group ``group_id`` has not committed yet."""
        name = self.topic(spec)
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": group_id,
                "enable.auto.commit": False,
            }
        )
        try:
            tps = [TopicPartition(name, p) for p in range(spec.partition_count(self.settings))]

            def lag() -> int:
                total = 0
                for tp in consumer.committed(tps, timeout=10):
                    _, high = consumer.get_watermark_offsets(tp, timeout=10)
                    total += high - (tp.offset if tp.offset >= 0 else 0)
                return total

            return with_leader_retry(lag)
        finally:
            consumer.close()

    def close(self, keep: bool = False) -> None:
        """Stop the processes; unless ``keep``, delete the deployment's topics and state
        (its logs stay under ``root``). Closed while an error propagates (a scenario's
        ``finally``), it prints the end of each process's log first: on CI, where the
        logs go with the machine, that is all there is to tell why."""
        if sys.exc_info()[1] is not None:
            self.print_log_tails()
        self.group.stop()
        self.producer.flush(10)
        if not keep:
            # Let go of the producer first: kept, it logs each deleted topic's partitions
            # vanishing, in the middle of whatever scenario runs next.
            del self.producer
            topics.delete_deployment_topics(self.settings.kafka_bootstrap, self.settings)
            shutil.rmtree(self.root / "data", ignore_errors=True)

    def print_log_tails(self, lines: int = LOG_TAIL_LINES) -> None:
        for log in sorted((self.root / "logs").glob("*.log")):
            print(f"--- the end of {log}:\n{devstack.log_tail(log, lines)}", file=sys.stderr)


def with_leader_retry(read: Callable[[], T], attempts: int = 50) -> T:
    """Run a metadata read, retrying while a just-created topic has no leader yet."""
    for attempt in range(attempts):
        try:
            return read()
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def version_reports(
    product_key: str,
    count: int,
    version: str = "1.0",
    at: int = T0,
    start: int = 0,
) -> list[tuple[bytes, bytes]]:
    """Pre-encoded VERSION reports for devices ``d{start}..`` (encoding off the clock)."""
    out = []
    template: dict[str, Any] = {
        "product_key": product_key,
        "kind": "VERSION",
        "module": "default",
        "version": version,
        "step": None,
        "desc": None,
        "message_id": None,
        "event_time": at,
    }
    for i in range(start, start + count):
        dn = f"d{i:07d}"
        record = dict(template, device_name=dn)
        out.append((device_key(product_key, dn).encode(), CODEC.encode("DeviceReport", record)))
    return out


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


__all__ = ["BenchDeployment", "Path", "version_reports"]
