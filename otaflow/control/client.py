"""Send a command to the command agent and wait for its outcome (over Kafka).

Used by the API server, the CLI and tests: the caller's answer is exactly the
``CommandResult`` the single command agent wrote after applying the command.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from otaflow import topics
from otaflow.codec import codec
from otaflow.config import Settings
from otaflow.kafka_security import kafka_client_config

# How long a caller waits for the command agent before giving up. The command
# carries the deadline (send time + timeout) and the agent never applies it after
# that; the caller waits DEADLINE_GRACE_S longer for an answer to a command the agent
# started just before its deadline, so a CommandTimeout means "not applied" as long as
# the hosts' clocks agree within the grace.
DEFAULT_TIMEOUT_S = 30.0
DEADLINE_GRACE_S = 5.0


@dataclass(frozen=True)
class CommandResult:
    request_id: str
    success: bool
    code: str | None
    message: str | None
    data: Any


class CommandTimeout(TimeoutError):
    pass


class ControlClient:
    """Thread-safe: one background consumer routes results to waiting callers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = codec()
        self.commands_topic = topics.COMMANDS.full_name(settings)
        results_topic = topics.COMMAND_RESULTS.full_name(settings)
        self.producer = Producer(
            {
                **kafka_client_config(settings.kafka_bootstrap),
                "enable.idempotence": True,
                "linger.ms": 0,
            }
        )
        self.consumer = Consumer(
            {
                **kafka_client_config(settings.kafka_bootstrap),
                "group.id": f"{settings.app_id}-control-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        # Start at the end: only results of commands sent from now on matter.
        # The position is resolved here, before any command is sent: assigning at
        # OFFSET_END would resolve lazily and could skip a result that came back fast.
        self.consumer.assign([TopicPartition(results_topic, 0, self._end_of(results_topic))])
        self._waiting: dict[str, tuple[threading.Event, list[CommandResult]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="command-results", daemon=True)
        self._thread.start()

    def _end_of(self, topic: str) -> int:
        for attempt in range(50):
            try:
                _, end = self.consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
                return int(end)
            except KafkaException:
                if attempt == 49:
                    raise
                time.sleep(0.2)  # a just-created topic has no leader for a moment
        raise AssertionError("unreachable")

    def _listen(self) -> None:
        while not self._stop.is_set():
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error() is not None:
                continue
            record = self.codec.decode_as("CommandResult", msg.value() or b"")
            with self._lock:
                waiter = self._waiting.get(record["request_id"])
            if waiter is None:
                continue
            waiter[1].append(
                CommandResult(
                    record["request_id"],
                    record["success"],
                    record["code"],
                    record["message"],
                    json.loads(record["data_json"]),
                )
            )
            waiter[0].set()

    def call(
        self,
        action: str,
        params: Mapping[str, str],
        *,
        request_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        now_ms: int | None = None,
        nonce: str | None = None,
    ) -> CommandResult:
        """``nonce``: the API's ``{date ms}/{AccessKey}/{nonce}`` of a signed request; the
        command agent refuses a second command with it (``SignatureNonceUsed``)."""
        request_id = request_id or str(uuid.uuid4()).upper()
        done = threading.Event()
        box: list[CommandResult] = []
        with self._lock:
            self._waiting[request_id] = (done, box)
        try:
            command = {
                "request_id": request_id,
                "action": action,
                "params": {k: str(v) for k, v in params.items()},
                "event_time": now_ms if now_ms is not None else int(time.time() * 1000),
                "nonce": nonce,
                "deadline": int((time.time() + timeout) * 1000),
            }
            self.producer.produce(
                self.commands_topic,
                key=request_id.encode(),
                value=self.codec.encode("Command", command),
            )
            self.producer.flush(10)
            if not done.wait(timeout + DEADLINE_GRACE_S):
                raise CommandTimeout(f"no outcome for {action} {request_id} within {timeout}s")
            return box[0]
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.consumer.close()
        self.producer.flush(5)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
