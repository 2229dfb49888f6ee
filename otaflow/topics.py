"""Every Kafka topic otaflow reads or writes: its name, record schema, key and shape.

No other module spells a topic name. Public topics are the contract with the
platform teams around otaflow (they produce reports, consume task events); internal
topics may change between releases.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from otaflow.config import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    schemas: tuple[str, ...]
    key: str
    public: bool
    # None: the deployment's partition count (settings.partitions).
    partitions: int | None = None
    compacted: bool = False
    doc: str = ""

    def full_name(self, settings: Settings) -> str:
        return settings.topic_prefix + self.name

    def partition_count(self, settings: Settings) -> int:
        return self.partitions if self.partitions is not None else settings.partitions


DEVICE_REPORTS = TopicSpec(
    "ota.device.reports",
    ("DeviceReport",),
    "productKey/deviceName",
    public=True,
    doc="One record per device report (version, progress, firmware request).",
)
TASK_EVENTS = TopicSpec(
    "ota.task.events",
    ("TaskEvent",),
    "productKey/deviceName",
    public=True,
    doc="One record per task change; what downstream systems consume.",
)
NOTIFICATIONS = TopicSpec(
    "ota.notifications",
    ("Notification",),
    "productKey/deviceName",
    public=True,
    doc="Update offers the egress connector publishes on MQTT.",
)
DEAD_LETTERS = TopicSpec(
    "ota.deadletter",
    ("DeadLetter",),
    "source",
    public=True,
    doc="Malformed input with the reason and the raw bytes.",
)
DEVICE_EVENTS = TopicSpec(
    "otaflow.device-events",
    ("DeviceEventBatch",),
    "partition (batched)",
    public=False,
    doc="Input of the device agent: many device-scoped records per Kafka record, per partition.",
)
RATE_EVENTS = TopicSpec(
    "otaflow.rate-events",
    ("RateEvent",),
    "batch id",
    public=False,
    doc="Input of the rate agent: queued tasks, outcomes, batch controls and ticks.",
)
COMMANDS = TopicSpec(
    "otaflow.commands",
    ("Command",),
    "request id",
    public=False,
    partitions=1,
    doc="Control-plane commands; one partition so one agent applies them in order.",
)
COMMAND_RESULTS = TopicSpec(
    "otaflow.command-results",
    ("CommandResult",),
    "request id",
    public=False,
    partitions=1,
    doc="Outcome of each command, read by the API to answer its caller.",
)
BATCHES = TopicSpec(
    "otaflow.batches",
    ("Batch",),
    "batch id",
    public=False,
    partitions=1,
    compacted=True,
    doc="Latest definition of every batch.",
)

ALL: tuple[TopicSpec, ...] = (
    DEVICE_REPORTS,
    TASK_EVENTS,
    NOTIFICATIONS,
    DEAD_LETTERS,
    DEVICE_EVENTS,
    RATE_EVENTS,
    COMMANDS,
    COMMAND_RESULTS,
    BATCHES,
)


def ensure_topics(bootstrap: str, settings: Settings, specs: Iterable[TopicSpec] = ALL) -> None:
    """Create the topics that do not exist yet (idempotent; safe from several processes)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=30).topics)
    wanted = []
    for spec in specs:
        name = spec.full_name(settings)
        if name in existing:
            continue
        config = {"cleanup.policy": "compact"} if spec.compacted else {}
        wanted.append(NewTopic(name, spec.partition_count(settings), 1, config=config))
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            future.result()
        except Exception as exc:  # another process won the race: fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"could not create topic {name}: {exc}") from exc
