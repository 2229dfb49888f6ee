"""Report batcher: ota.device.reports (one record per report) -> otaflow.device-events
(one record per partition batch).

Faust pays a fixed cost per event (~90 us here, see faust-notes), so one event per
device report caps a worker near 11k reports/s. The batcher reads the public topic
with confluent-kafka in large polls, copies each report's bytes unchanged (no
decode) into an envelope per target partition, and the device agent then pays the
per-event cost once per envelope. It runs as its own process beside each worker so
the copy uses the second core; its consumer group spreads the source partitions.

Routing: the target partition is murmur2(key), the partition the device's state
lives on. Hashing every key in Python (~14 us) was half the batcher's time, so when
the report topic has as many partitions as the device topic, the batcher trusts the
source partition (producers must use Kafka's default partitioner, as Kafka Streams
requires for co-partitioned topics) and checks one record in ``SAMPLE_EVERY`` of
each source partition; a single mismatch (a producer with librdkafka's CRC32
default, say) makes that source partition hash every key from then on, starting
with the batch in hand. Every item carries its source partition and offset; the
device agent skips offsets it has applied, so re-sending after a crash never applies
a report twice.

Commit order: produce envelopes -> flush (all acknowledged) -> commit source offsets.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer

from otaflow import topics
from otaflow.codec import codec
from otaflow.config import Settings
from otaflow.partitioning import partition_for

log = logging.getLogger("otaflow.batcher")

# Reports per poll: large enough to amortise the envelope, the acknowledgement wait and
# the commit of each poll (10,000 left the worker waiting for envelopes: ingest of
# 500,000, alternating pairs, 10,000 / 40,000 / 100,000: ~75k / ~85k / ~90k reports/s).
# When traffic is light a poll returns after POLL_TIMEOUT_S with what it has: that is
# the latency a report may wait here (the report-to-notification budget is 100 ms end
# to end); under a backlog a poll is ~0.25 s of the batcher's work.
POLL_MAX = 100_000
POLL_TIMEOUT_S = 0.005
# Kafka's default max record size is 1 MiB; stay well below it per envelope.
ENVELOPE_MAX_BYTES = 700_000
# One record in this many per source partition is checked against murmur2(key).
SAMPLE_EVERY = 64


class Router:
    """Which device partition each report goes to (pure; see the module doc)."""

    def __init__(self, partitions: int, same_partitioning: bool) -> None:
        self.partitions = partitions
        self.same_partitioning = same_partitioning
        # Source partitions where a producer was seen not to partition by murmur2(key).
        self.hash_always: set[int] = set()
        self._seen: dict[int, int] = defaultdict(int)

    def route(
        self, records: list[tuple[bytes, bytes, int, int]]
    ) -> list[tuple[bytes, bytes, int, int, int]]:
        """(key, value, source partition, offset) -> the same plus the target partition."""
        seen, hash_always, partitions = self._seen, self.hash_always, self.partitions
        for key, _, source, _ in records:
            if source in hash_always:
                continue
            if not self.same_partitioning:
                hash_always.add(source)
            elif seen[source] % SAMPLE_EVERY == 0 and partition_for(key, partitions) != source:
                log.warning(
                    "reports on partition %d are not partitioned by murmur2(key) (key %r); "
                    "hashing every key of it from now on",
                    source,
                    key,
                )
                hash_always.add(source)
            seen[source] += 1
        return [
            (
                key,
                value,
                source,
                offset,
                partition_for(key, partitions) if source in hash_always else source,
            )
            for key, value, source, offset in records
        ]


class ReportBatcher:
    def __init__(self, settings: Settings, group_id: str | None = None) -> None:
        self.settings = settings
        self.codec = codec()
        self.source = topics.DEVICE_REPORTS.full_name(settings)
        self.target = topics.DEVICE_EVENTS.full_name(settings)
        self.dead_letters = topics.DEAD_LETTERS.full_name(settings)
        self.partitions = topics.DEVICE_EVENTS.partition_count(settings)
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": group_id or f"{settings.app_id}-batcher",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # Eager, not cooperative-sticky: with the incremental protocol a batcher
                # that joined second once never fetched its newly assigned partitions
                # (librdkafka 2.16; ten minutes stalled in a two-worker benchmark). A
                # poll here is short and synchronous, so an eager rebalance costs one.
                "partition.assignment.strategy": "range",
                "fetch.max.bytes": 16 * 1024 * 1024,
                "queued.max.messages.kbytes": 65536,
            }
        )
        self.producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.max.bytes": 1_000_000,
            }
        )
        self.forwarded = 0
        self._failed: list[str] = []
        self.router = Router(
            self.partitions,
            same_partitioning=topics.DEVICE_REPORTS.partition_count(settings) == self.partitions,
        )

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe([self.source])
        try:
            while not stop.is_set():
                msgs = self.consumer.consume(POLL_MAX, POLL_TIMEOUT_S)
                if msgs:
                    self.forward(msgs)
        finally:
            self.producer.flush(10)
            self.consumer.close()

    def forward(self, msgs: list[Any]) -> None:
        items: dict[int, list[bytes]] = defaultdict(list)
        sources: dict[int, list[int]] = defaultdict(list)
        offsets: dict[int, list[int]] = defaultdict(list)
        sizes: dict[int, int] = defaultdict(int)
        now_ms = int(time.time() * 1000)
        valid: list[tuple[bytes, bytes, int, int]] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            key, value = msg.key(), msg.value()
            if not key or not value:
                self._dead_letter(msg, "report without key or value", value or b"", now_ms)
                continue
            valid.append((key, value, msg.partition(), msg.offset()))
        for _key, value, source, offset, target in self.router.route(valid):
            if sizes[target] + len(value) > ENVELOPE_MAX_BYTES:
                self._send(target, items.pop(target), sources.pop(target), offsets.pop(target))
                sizes[target] = 0
            items[target].append(value)
            sources[target].append(source)
            offsets[target].append(offset)
            sizes[target] += len(value) + 16
        for target in list(items):
            self._send(target, items[target], sources[target], offsets[target])
        remaining = self.producer.flush(30)
        if remaining or self._failed:
            # Not committing means the next owner re-reads these; the device agent
            # skips what it already applied.
            failures, self._failed = self._failed, []
            raise RuntimeError(f"envelopes not acknowledged ({remaining} left): {failures[:3]}")
        # Asynchronous: the envelopes are already acknowledged, and a commit lost in a
        # crash only makes the next owner re-send reports the device agent skips.
        self.consumer.commit(asynchronous=True)
        self.forwarded += len(msgs)

    def _send(
        self, target: int, items: list[bytes], sources: list[int], offsets: list[int]
    ) -> None:
        envelope = {"items": items, "source_partitions": sources, "source_offsets": offsets}
        self.producer.produce(
            self.target,
            value=self.codec.encode("DeviceEventBatch", envelope),
            partition=target,
            on_delivery=self._on_delivery,
        )
        self.producer.poll(0)

    def _dead_letter(self, msg: Any, reason: str, raw: bytes, now_ms: int) -> None:
        source = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
        record = {"source": source, "reason": reason, "raw": raw, "event_time": now_ms}
        self.producer.produce(
            self.dead_letters,
            key=source.encode(),
            value=self.codec.encode("DeadLetter", record),
            on_delivery=self._on_delivery,
        )


def main() -> int:
    from otaflow import config, logs, metrics

    logs.setup("batcher")
    settings = config.load()
    topics.ensure_topics(settings.kafka_bootstrap, settings)
    from streams import gc_tuning

    gc_tuning.apply()  # same reason as the worker: short-lived objects per report
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    batcher = ReportBatcher(settings)
    metrics.expose_counts(
        "batcher",
        {"otaflow_batcher_forwarded": ("Reports put in envelopes", lambda: batcher.forwarded)},
    )
    metrics.ready_when(lambda: True)
    metrics.serve(settings, "batcher")
    batcher.run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
