"""Sending what the device engine decided: task events, push-queue entries, notifications."""

from __future__ import annotations

from otaflow.codec import codec
from otaflow.domain.engine import Effects
from streams.app import dead_letters, notifications, rate_events, task_events

CODEC = codec()

# Tasks per TasksQueued record: large enough to amortise the rate agent's per-event
# cost, small enough to stay far below Kafka's 1 MiB default record limit.
QUEUE_CHUNK = 2000


async def send_effects(fx: Effects) -> None:
    for key, event in fx.task_events:
        await task_events.send(key=key.encode(), value=CODEC.encode("TaskEvent", event))
    for key, note in fx.notifications:
        await notifications.send(key=key.encode(), value=CODEC.encode("Notification", note))
    now = max((e["event_time"] for _, e in fx.task_events), default=0)
    for batch_id, tasks in fx.queued.items():
        for start in range(0, len(tasks), QUEUE_CHUNK):
            body = {
                "batch_id": batch_id,
                "tasks": tasks[start : start + QUEUE_CHUNK],
                "event_time": now,
            }
            await rate_events.send(
                key=batch_id.encode(),
                value=CODEC.encode("RateEvent", {"body": ("otaflow.TasksQueued", body)}),
            )
    for batch_id, count in fx.succeeded.items():
        body = {"batch_id": batch_id, "succeeded": count, "event_time": now}
        await rate_events.send(
            key=batch_id.encode(),
            value=CODEC.encode("RateEvent", {"body": ("otaflow.TaskOutcomes", body)}),
        )


async def send_dead_letter(source: str, reason: str, raw: bytes, now: int) -> None:
    record = {"source": source, "reason": reason, "raw": raw, "event_time": now}
    await dead_letters.send(key=source.encode(), value=CODEC.encode("DeadLetter", record))
