"""Feeds verification batches' task outcomes back to the control plane.

A package that needs verification becomes usable for batches only once the devices
of its verification batch (CreateOTAVerifyJob) have succeeded. The devices' outcomes
are on ``ota.task.events``; the rule that turns them into the package's status
(``otaflow.control.firmware.verification_status``) runs in the command agent. This
module carries one to the other: the API's task view already reads every task event
and every batch definition, so ``VerificationFeed`` is that view plus one check per
event; for a terminal task of a verification batch it sends the internal command
``RecordVerifyOutcome`` on the command topic.

The request id is derived from the task and its status, so a view rebuilt from the
beginning (every API start) or several API processes send the same commands again and
the command agent applies each once. Events read before their batch's definition are
replayed from the view when the definition arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from otaflow import topics
from otaflow.api.views import TaskView
from otaflow.codec import codec
from otaflow.config import Settings

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELED"})
ACTION = "RecordVerifyOutcome"

#: (action, params, request id, event time in ms) -> put on the command topic.
SendCommand = Callable[[str, Mapping[str, str], str, int], None]


def outcome_command(event: Mapping[str, Any]) -> tuple[str, dict[str, str]] | None:
    """(request id, params) of the command a verification task's event calls for."""
    status = event["status"]
    if status not in TERMINAL:
        return None
    params = {
        "JobId": event["batch_id"],
        "DeviceName": event["device_name"],
        "TaskStatus": status,
    }
    return f"verify-outcome/{event['task_id']}/{status}", params


class VerificationFeed(TaskView):
    """The API's task view, which also reports verification outcomes through ``send``."""

    def __init__(self, send: SendCommand) -> None:
        super().__init__()
        self._send = send
        self._verification: set[str] = set()

    def apply_batch(self, batch: dict[str, Any]) -> None:
        super().apply_batch(batch)
        batch_id = batch["batch_id"]
        # VERFIY_FIRMWARE (sic): the platform's JobType of a verification batch.
        if batch.get("job_type") != "VERFIY_FIRMWARE" or batch_id in self._verification:
            return
        self._verification.add(batch_id)
        with self._lock:
            known = self.jobs.get(batch_id)
            seen = [row.event for row in known.tasks.values()] if known else []
        for event in seen:
            self._report(event)

    def apply_task_event(self, event: dict[str, Any]) -> None:
        super().apply_task_event(event)
        if event["batch_id"] in self._verification:
            self._report(event)

    def _report(self, event: Mapping[str, Any]) -> None:
        command = outcome_command(event)
        if command is not None:
            request_id, params = command
            self._send(ACTION, params, request_id, int(event["event_time"]))


class CommandSender:
    """Puts commands on the command topic without waiting for their results."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.codec = codec()
        self.topic = topics.COMMANDS.full_name(settings)
        self.producer = Producer(
            {"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True}
        )

    def __call__(
        self, action: str, params: Mapping[str, str], request_id: str, event_time: int
    ) -> None:
        command = {
            "request_id": request_id,
            "action": action,
            "params": dict(params),
            "event_time": event_time or int(time.time() * 1000),
        }
        self.producer.produce(
            self.topic, key=request_id.encode(), value=self.codec.encode("Command", command)
        )
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(5)
