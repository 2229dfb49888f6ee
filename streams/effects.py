"""Sending what the device engine decided: task events, push-queue entries, notifications.

The device agent's effects go out through one librdkafka producer (``EffectSender``):
a START over a large fleet makes one task event per device, and Faust's one-record-at-
a-time send was a quarter of the worker's time there. The agent flushes it before it
writes the states that record those effects (see ``streams.checkpoint``).
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

from confluent_kafka import Producer

from otaflow import topics
from otaflow.codec import codec
from otaflow.config import Settings
from otaflow.control.guard import counts_to_params
from otaflow.device_avro import encode_task_event, encode_tasks_queued, encode_tasks_queued_from
from otaflow.domain.engine import Effects
from otaflow.kafka_partitions import CONFLUENT_PARTITIONER
from otaflow.public_json import to_json
from streams.app import dead_letters, settings, topic
from streams.produce import produce_all
from streams.table_writer import keep_fatal, round_producer_config

CODEC = codec()

# Tasks per TasksQueued record: large enough to amortise the rate agent's per-event
# cost, small enough to stay far below Kafka's 1 MiB default record limit.
QUEUE_CHUNK = 2000


class EffectError(RuntimeError):
    pass


class EffectSender:
    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        """``producer``: a shared one (the round's transactional producer); by default
        its own."""
        self.task_events = topics.TASK_EVENTS.full_name(settings)
        self.notifications = topics.NOTIFICATIONS.full_name(settings)
        self.rate_events = topics.RATE_EVENTS.full_name(settings)
        self.dead_letters = topics.DEAD_LETTERS.full_name(settings)
        self.commands = topics.COMMANDS.full_name(settings)
        # OTAFLOW_PUBLIC_JSON: task events and dead letters also as JSON (public_json).
        self.json_copies = settings.public_json
        self.task_events_json = topics.json_copy(topics.TASK_EVENTS).full_name(settings)
        self.dead_letters_json = topics.json_copy(topics.DEAD_LETTERS).full_name(settings)
        self.device_events = topics.DEVICE_EVENTS.full_name(settings)
        self._errors: list[str] = []
        # The round's producer settings (table_writer): gaps are fatal, so a round's task
        # events need a delivery report for their last record only (``send_task_events``).
        self.producer = producer or Producer(
            {
                **round_producer_config(settings, keep_fatal(self._errors, "effects producer")),
                # Keyed records land where Kafka's default partitioner (and Faust) put them.
                "partitioner": CONFLUENT_PARTITIONER,
            }
        )
        self.pending = 0
        self._copartitioned: bool | None = None

    def copartitioned(self) -> bool:
        """Whether task events and device events have as many partitions, so a device's
        task events land on its device partition's number (both keyed by device, hashed
        by murmur2: co-partitioned, as Kafka Streams says). Asked of the brokers once."""
        if self._copartitioned is None:
            counts = []
            for name in (self.task_events, self.device_events):
                metadata = self.producer.list_topics(name, timeout=10).topics[name]
                if metadata.error is not None:
                    return False  # not known yet: the partitioner decides, ask again later
                counts.append(len(metadata.partitions))
            self._copartitioned = counts[0] == counts[1]
        return self._copartitioned

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=self._delivered)
                self.pending += 1
                return
            except BufferError:
                self.producer.poll(0.01)

    def send_task_events(
        self, events: list[dict[str, bytes]], partition: int | None = None
    ) -> None:
        """Task events already encoded (``key``, ``value``), in one call.

        ``partition``: the device partition every event's device lives on (a round's).
        When the topics are co-partitioned the events go to that partition with a
        delivery report for the last one only (gapless: its success says all arrived);
        a report per record cost ~1 us each, a sixth of a START's work per device.
        """
        if events:
            if partition is not None and self.copartitioned():
                produce_all(
                    self.producer,
                    self.task_events,
                    events,
                    None,
                    partition,
                    on_last_delivery=self._delivered,
                )
            else:
                produce_all(self.producer, self.task_events, events, self._delivered)
            self.pending += len(events)
            if self.json_copies:
                copies = [{"key": e["key"], "value": to_json(e["value"])} for e in events]
                produce_all(self.producer, self.task_events_json, copies, self._delivered)
                self.pending += len(copies)

    def send_queued(self, queued: dict[str, list[bytes]], now: int) -> None:
        """Push-queue entries already encoded (``QueuedTask`` records), per batch; ``now``
        as in ``send``."""
        for batch_id, entries in queued.items():
            for start in range(0, len(entries), QUEUE_CHUNK):
                value = encode_tasks_queued_from(
                    batch_id, entries[start : start + QUEUE_CHUNK], now
                )
                self._produce(self.rate_events, batch_id.encode(), value)

    def send(self, fx: Effects, now: int, partition: int | None = None) -> None:
        """Send ``fx``; ``now`` is the device partition's event time after them;
        ``partition``: the device partition whose round made them (``send_task_events``).

        Rate-agent records carry ``now``: the rate agent releases queued tasks at its own
        event time, the later of its ticks and what it is sent, and a release stamped
        before the time its task was queued at (a scheduled batch's start, say) would be
        refused by the device agent and the task never pushed.
        """
        encode = CODEC.encode
        if fx.task_events:
            # A START over a large fleet: one event per device, sent in one call.
            self.send_task_events(
                [
                    {"key": key.encode(), "value": encode_task_event(event)}
                    for key, event in fx.task_events
                ],
                partition,
            )
        for key, note in fx.notifications:
            self._produce(self.notifications, key.encode(), encode("Notification", note))
        for batch_id, tasks in fx.queued.items():
            for start in range(0, len(tasks), QUEUE_CHUNK):
                value = encode_tasks_queued(batch_id, tasks[start : start + QUEUE_CHUNK], now)
                self._produce(self.rate_events, batch_id.encode(), value)
        for schema, report in fx.control_reports:
            # To the control plane as a command; its request id makes a replay a no-op.
            request_id = report.get("report_id") or (
                f"{schema}/{report['batch_id']}/{report['partition']}"
            )
            command = {
                "request_id": request_id,
                "action": f"otaflow.{schema}",
                "params": {k: str(v) for k, v in report.items()},
                "event_time": report["event_time"],
            }
            self._produce(self.commands, request_id.encode(), encode("Command", command))
        for batch_id, counts in fx.outcomes.items():
            # Abort rules' counts to the control plane; the id is a digest of the counts
            # and the envelope's task events, so a replayed envelope is applied once.
            params = counts_to_params(counts)
            digest = hashlib.blake2b(digest_size=12)
            for key, event in fx.task_events:
                digest.update(f"{key}|{event['task_id']}|{event['status']}|".encode())
                digest.update(str(event["event_time"]).encode())
            request_id = f"CohortOutcomes/{batch_id}/{digest.hexdigest()}"
            command = {
                "request_id": request_id,
                "action": "otaflow.CohortOutcomes",
                "params": {"batch_id": batch_id, **params},
                "event_time": now,
            }
            self._produce(self.commands, request_id.encode(), encode("Command", command))
        for batch_id, count in fx.succeeded.items():
            body = {"batch_id": batch_id, "succeeded": count, "event_time": now}
            value = encode("RateEvent", {"body": ("otaflow.TaskOutcomes", body)})
            self._produce(self.rate_events, batch_id.encode(), value)
        for (batch_id, released_at), count in fx.unsent.items():
            # Releases that sent no offer go back to the rate agent ("pushed" = offers sent).
            body = {
                "batch_id": batch_id,
                "succeeded": 0,
                "event_time": now,
                "unsent": count,
                "released_at": released_at,
            }
            value = encode("RateEvent", {"body": ("otaflow.TaskOutcomes", body)})
            self._produce(self.rate_events, batch_id.encode(), value)
        self.producer.poll(0)

    def dead_letter(self, source: str, reason: str, raw: bytes, now: int) -> None:
        record = {"source": source, "reason": reason, "raw": raw, "event_time": now}
        value = CODEC.encode("DeadLetter", record)
        self._produce(self.dead_letters, source.encode(), value)
        if self.json_copies:
            self._produce(self.dead_letters_json, source.encode(), to_json(value))

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until everything sent is acknowledged by the brokers."""
        if not self.pending:
            return
        remaining = self.producer.flush(timeout)
        self.pending = 0
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            raise EffectError(f"effects not acknowledged ({remaining} left): {errors[:3]}")


async def send_dead_letter(source: str, reason: str, raw: bytes, now: int) -> None:
    """For agents that send rarely (rate, command): through Faust's producer."""
    record = {"source": source, "reason": reason, "raw": raw, "event_time": now}
    value = CODEC.encode("DeadLetter", record)
    await dead_letters.send(key=source.encode(), value=value)
    if settings.public_json:
        await dead_letters_json().send(key=source.encode(), value=to_json(value))


@cache
def dead_letters_json() -> Any:
    return topic(topics.json_copy(topics.DEAD_LETTERS))
