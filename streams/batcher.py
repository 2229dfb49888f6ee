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

Configured telemetry topics (``otaflow.report_sources``, ``OTAFLOW_REPORT_SOURCES``)
are read by the same consumer: each record is mapped onto the DeviceReport bytes a
native producer would write (skipped records are only committed; records that do not
map are dead-lettered with the reason and the raw bytes), then routed like a report,
with its own Router (its partitions are not ``ota.device.reports``' partitions) and
source partitions offset by ``SOURCE_PARTITION_BASE`` in the envelope.

Commit order: produce envelopes -> flush (all acknowledged) -> commit source offsets.

Stopping is bounded (otaflow.bounded_stop): on SIGTERM a flush in progress stops
waiting, the last flush and the consumer close have seconds each, and the process ends
``STOP_DEADLINE_S`` after the signal whatever librdkafka waits for (a batcher whose
worker was SIGKILLed and whose topics were then deleted stayed alive, orphaned). Leaving
without committing is safe by the commit order: uncommitted reports are only read again
and re-sent, and the device agent skips offsets it has applied.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer

from otaflow import bounded_stop, instances, membership, topics
from otaflow.codec import codec
from otaflow.config import Settings
from otaflow.kafka_partitions import partition_for
from otaflow.kafka_security import kafka_client_config
from otaflow.public_json import to_json
from otaflow.report_sources import (
    SOURCE_PARTITION_BASE,
    SourceMapper,
    Unmappable,
    load_sources,
)

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
# Envelopes are acknowledged within this in normal operation; longer means a broker or
# topic is gone, and the reports are re-read after a restart.
ACKNOWLEDGE_TIMEOUT_S = 30.0
# The stop path: the last flush, then the consumer close, each bounded; the kernel ends
# the process STOP_DEADLINE_S after SIGTERM whatever is still waiting (a worker waits 10 s
# for its batcher before SIGKILL: streams.worker).
STOP_FLUSH_S = 2.0
STOP_CLOSE_S = 3.0
STOP_DEADLINE_S = 8


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


def map_telemetry(
    mapper: SourceMapper, router: Router, msgs: list[Any], now_ms: int
) -> tuple[list[tuple[bytes, bytes, int, int]], list[tuple[Any, str]]]:
    """A telemetry topic's records as reports ``(device key, report, partition, offset)``
    for ``router``, and the records that do not map with the reason; skipped ones left
    out. A record without a Kafka timestamp takes ``now_ms``.

    The router may trust a source partition (see the module doc) only while its records
    are keyed by the device key, as native reports are: the first record of a partition
    keyed otherwise (a device id, say) makes the router hash every key of that partition
    from then on, starting with this batch (``route`` comes after).
    """
    to_report = mapper.map
    hash_always = router.hash_always
    name = mapper.source.name
    reports: list[tuple[bytes, bytes, int, int]] = []
    unmappable: list[tuple[Any, str]] = []
    for msg in msgs:
        timestamp = msg.timestamp()[1]
        try:
            report = to_report(msg.value() or b"", timestamp if timestamp >= 0 else now_ms)
        except Unmappable as exc:
            unmappable.append((msg, f"{name}: {exc}"))
            continue
        if report is None:
            continue
        key, partition = report[0], msg.partition()
        if partition not in hash_always and msg.key() != key:
            hash_always.add(partition)
        reports.append((key, report[1], partition, msg.offset()))
    return reports, unmappable


class ReportBatcher:
    def __init__(
        self, settings: Settings, group_id: str | None = None, state_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.codec = codec()
        self.source = topics.DEVICE_REPORTS.full_name(settings)
        self.target = topics.DEVICE_EVENTS.full_name(settings)
        self.dead_letters = topics.DEAD_LETTERS.full_name(settings)
        self.partitions = topics.DEVICE_EVENTS.partition_count(settings)
        self.consumer = Consumer(
            {
                **kafka_client_config(settings.kafka_bootstrap),
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
                # Seconds, not 45, when a batcher dies; its worker's id when restarted
                # (otaflow.membership).
                **membership.librdkafka_group_settings(state_dir, "batcher"),
            }
        )
        self.producer = Producer(
            {
                **kafka_client_config(settings.kafka_bootstrap),
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.max.bytes": 1_000_000,
            }
        )
        self.forwarded = 0
        # Records taken from polls; those not yet forwarded wait for acknowledgement.
        self.received = 0
        self._failed: list[str] = []
        self._stop = threading.Event()
        # Whether the consumer closed on stop (else the process must leave without
        # destroying it: bounded_stop.close_within).
        self.closed = False
        self.router = Router(
            self.partitions,
            same_partitioning=topics.DEVICE_REPORTS.partition_count(settings) == self.partitions,
        )
        self.dead_letters_json = (
            topics.json_copy(topics.DEAD_LETTERS).full_name(settings)
            if settings.public_json
            else None
        )
        # Configured telemetry topics: topic -> (mapper, router, source partition base).
        self.mapped: dict[str, tuple[SourceMapper, Router, int]] = {}
        for i, source in enumerate(load_sources(settings.report_sources)):
            count = self._partition_count(source.topic)
            router = Router(self.partitions, same_partitioning=count == self.partitions)
            base = SOURCE_PARTITION_BASE * (i + 1)
            self.mapped[source.topic] = (SourceMapper(source), router, base)
            log.info("mapping %s (%s partitions) onto version reports", source.topic, count)

    def _partition_count(self, topic: str) -> int | None:
        metadata = self.consumer.list_topics(topic, timeout=30).topics.get(topic)
        if metadata is None or metadata.error is not None:
            log.warning("telemetry topic %s not found (yet); reading it when it appears", topic)
            return None
        return len(metadata.partitions)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self.consumer.subscribe([self.source, *self.mapped])
        try:
            while not stop.is_set():
                msgs = self.consumer.consume(POLL_MAX, POLL_TIMEOUT_S)
                if msgs:
                    self.forward(msgs)
        finally:
            # No commit here: forward commits what was acknowledged; the rest is re-read.
            remaining = self.producer.flush(STOP_FLUSH_S)
            if remaining:
                log.warning("stopping with %d envelopes unacknowledged; re-sent later", remaining)
            self.closed = bounded_stop.close_within(self.consumer, STOP_CLOSE_S, "consumer")

    def _acknowledge(self, timeout: float) -> int:
        """Wait for the envelopes' acknowledgements, at most ``timeout`` and no longer
        than a stop request; how many are still unacknowledged."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = self.producer.flush(min(0.2, max(0.0, deadline - time.monotonic())))
            if not remaining or self._stop.is_set() or time.monotonic() >= deadline:
                return int(remaining)

    def forward(self, msgs: list[Any]) -> None:
        items: dict[int, list[bytes]] = defaultdict(list)
        sources: dict[int, list[int]] = defaultdict(list)
        offsets: dict[int, list[int]] = defaultdict(list)
        sizes: dict[int, int] = defaultdict(int)
        self.received += len(msgs)
        now_ms = int(time.time() * 1000)
        valid: list[tuple[bytes, bytes, int, int]] = []
        telemetry: dict[str, list[Any]] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            if self.mapped and (topic := msg.topic()) != self.source:
                telemetry.setdefault(topic, []).append(msg)
                continue
            key, value = msg.key(), msg.value()
            if not key or not value:
                self._dead_letter(msg, "report without key or value", value or b"", now_ms)
                continue
            valid.append((key, value, msg.partition(), msg.offset()))
        routed = [(0, self.router.route(valid))]
        for topic, records in telemetry.items():
            _, router, base = self.mapped[topic]
            routed.append((base, router.route(self._map(topic, records, now_ms))))
        for base, records in routed:
            for _key, value, source, offset, target in records:
                if sizes[target] + len(value) > ENVELOPE_MAX_BYTES:
                    self._send(target, items.pop(target), sources.pop(target), offsets.pop(target))
                    sizes[target] = 0
                items[target].append(value)
                sources[target].append(base + source)
                offsets[target].append(offset)
                sizes[target] += len(value) + 16
        for target in list(items):
            self._send(target, items[target], sources[target], offsets[target])
        remaining = self._acknowledge(ACKNOWLEDGE_TIMEOUT_S)
        if remaining and self._stop.is_set():
            log.info("stop requested with %d envelopes unacknowledged; not committing", remaining)
            return
        if remaining or self._failed:
            # Not committing means the next owner re-reads these; the device agent
            # skips what it already applied.
            failures, self._failed = self._failed, []
            raise RuntimeError(f"envelopes not acknowledged ({remaining} left): {failures[:3]}")
        # Asynchronous: the envelopes are already acknowledged, and a commit lost in a
        # crash only makes the next owner re-send reports the device agent skips.
        self.consumer.commit(asynchronous=True)
        self.forwarded += len(msgs)

    def _map(self, topic: str, msgs: list[Any], now_ms: int) -> list[tuple[bytes, bytes, int, int]]:
        mapper, router, _ = self.mapped[topic]
        reports, unmappable = map_telemetry(mapper, router, msgs, now_ms)
        for msg, reason in unmappable:
            self._dead_letter(msg, reason, msg.value() or b"", now_ms)
        return reports

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
        value = self.codec.encode("DeadLetter", record)
        self.producer.produce(
            self.dead_letters, key=source.encode(), value=value, on_delivery=self._on_delivery
        )
        if self.dead_letters_json is not None:
            self.producer.produce(
                self.dead_letters_json,
                key=source.encode(),
                value=to_json(value),
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
    bounded_stop.stop_on_signals(stop, STOP_DEADLINE_S)
    # Beside a worker: its state directory keeps the batcher's group member id.
    state_dir = os.environ.get(instances.BATCHER_STATE_ENV)
    batcher = ReportBatcher(settings, state_dir=Path(state_dir) if state_dir else None)
    metrics.expose_counts(
        "batcher",
        {
            "otaflow_batcher_forwarded": ("Reports put in envelopes", lambda: batcher.forwarded),
            "otaflow_batcher_received": (
                "Reports taken from polls (less forwarded: in envelopes not yet acknowledged)",
                lambda: batcher.received,
            ),
        },
    )
    metrics.ready_when(lambda: True)
    metrics.serve(settings, "batcher")
    try:
        batcher.run(stop)
    except BaseException:
        bounded_stop.arm_deadline(STOP_DEADLINE_S)  # Python's exit may wait on the clients
        raise
    if not batcher.closed:
        bounded_stop.exit_now(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
