"""Every Kafka topic otaflow reads or writes: its name, record schema, key and shape.

No other module spells a topic name. Public topics are the contract with the
platform teams around otaflow (they produce reports, consume task events); internal
topics may change between releases.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from otaflow.config import Settings
from otaflow.kafka_security import kafka_client_config


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
ROLLOUT_TRIGGERS = TopicSpec(
    "ota.rollout.triggers",
    ("RolloutTrigger",),
    "batch id",
    public=True,
    doc="An abort or pause rule fired on a batch or cohort, or an operator resumed one.",
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
    ROLLOUT_TRIGGERS,
)


# Public outputs that get a JSON copy when ``settings.public_json`` is on (see
# otaflow.public_json): same key, same partition count, ``<name>.json``.
JSON_COPIED: tuple[TopicSpec, ...] = (TASK_EVENTS, DEAD_LETTERS)


def json_copy(spec: TopicSpec) -> TopicSpec:
    """The JSON copy of a public topic: same key and partitions, no Avro schema."""
    return replace(spec, name=spec.name + ".json", schemas=(), doc=f"{spec.doc} (JSON copy)")


def ensure_topics(bootstrap: str, settings: Settings, specs: Iterable[TopicSpec] = ALL) -> None:
    """Create the topics that do not exist yet (idempotent; safe from several processes)."""
    specs = list(specs)
    if settings.public_json:
        specs += [json_copy(spec) for spec in JSON_COPIED if spec in specs]
    create_topics(
        bootstrap,
        [
            (
                spec.full_name(settings),
                spec.partition_count(settings),
                {"cleanup.policy": "compact"} if spec.compacted else {},
            )
            for spec in specs
        ],
        settings.replication,
    )


def create_topics(
    bootstrap: str, wanted: Iterable[tuple[str, int, dict[str, str]]], replication: int = 1
) -> None:
    """Create each (name, partitions, config) that does not exist yet; losing a creation
    race to another process is fine."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_client_config(bootstrap))
    existing = set(admin.list_topics(timeout=30).topics)
    new = [
        NewTopic(name, partitions, replication, config=config)
        for name, partitions, config in wanted
        if name not in existing
    ]
    if not new:
        return
    for name, future in admin.create_topics(new, operation_timeout=30).items():
        try:
            future.result()
        except Exception as exc:  # another process won the race: fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"could not create topic {name}: {exc}") from exc


# -- throwaway deployments ----------------------------------------------------------------
#
# Tests, benchmarks and the demo each run a whole deployment under their own names. They
# delete their topics when done; the mark lets `otaflow devstack prune` (and a fresh
# `devstack up`) find what a killed run left behind. Left alone, a dev broker gathers
# thousands of partitions and then takes minutes to start.

SCRATCH_MARK = "scratch."


def scratch_settings(base: Settings, kind: str) -> Settings:
    """``base`` renamed into a fresh throwaway namespace (topic prefix and app id)."""
    name = f"{SCRATCH_MARK}{kind}-{uuid.uuid4().hex[:8]}"
    return replace(base, topic_prefix=name + ".", app_id=name)


# The names tests, benchmarks and the demo used before they had the mark; a dev broker
# from then may still hold thousands of them.
_UNMARKED_SCRATCH = re.compile(
    r"^(otaflow-)?(t[0-9a-f]{8}|t[0-9a-f]{10}|b[a-z]+[0-9a-f]{6}|bench[0-9a-f]{10}|demo[0-9]{14})[.-]"
)


def is_scratch(topic: str) -> bool:
    return topic.startswith(SCRATCH_MARK) or _UNMARKED_SCRATCH.match(topic) is not None


def owner_of(settings: Settings) -> Callable[[str], bool]:
    """Whether a topic belongs to the deployment ``settings`` names: its prefixed topics
    and those its app id names (Faust's changelogs and leader topic)."""
    if not settings.topic_prefix:
        raise ValueError("a deployment without a topic prefix does not own its topic names")
    prefix, app = settings.topic_prefix, settings.app_id + "-"
    return lambda name: name.startswith(prefix) or name.startswith(app)


def group_owner_of(settings: Settings) -> Callable[[str], bool]:
    """Whether a consumer group belongs to the deployment: the Faust app id itself and
    every group named after it (batcher, egress, API views, control clients)."""
    if not settings.topic_prefix:
        raise ValueError("a deployment without a topic prefix does not own its group names")
    app = settings.app_id
    return lambda name: name == app or name.startswith(app + "-")


def delete_groups_where(
    bootstrap: str,
    wanted: Callable[[str], bool],
    timeout: float = 60.0,
    patience_s: float = 0.0,
) -> tuple[list[str], list[str]]:
    """Delete every consumer group whose name ``wanted`` accepts; return (deleted, busy):
    a group with live members cannot be deleted (stop its processes first).

    ``patience_s``: keep trying a busy group that long. A stopped worker or batcher is a
    static member (otaflow.membership): it does not leave its group when it stops, the
    broker drops it one session timeout later, so a clean-up right after a stop waits."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    listed = admin.list_consumer_groups(request_timeout=timeout).result()
    names = sorted(g.group_id for g in listed.valid if wanted(g.group_id))
    deleted: list[str] = []
    busy: list[str] = []
    deadline = time.monotonic() + patience_s
    while names:
        busy = []
        for name, future in admin.delete_consumer_groups(names, request_timeout=timeout).items():
            try:
                future.result()
                deleted.append(name)
            except Exception as exc:
                if "NON_EMPTY_GROUP" in str(exc):
                    busy.append(name)
                elif "GROUP_ID_NOT_FOUND" not in str(exc):
                    raise RuntimeError(f"could not delete consumer group {name}: {exc}") from exc
        if not busy or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
        names = busy
    return sorted(deleted), sorted(busy)


def consumer_groups_where(
    bootstrap: str, wanted: Callable[[str], bool], timeout: float = 30.0
) -> list[str]:
    """The consumer groups on the broker whose name ``wanted`` accepts."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    listed = admin.list_consumer_groups(request_timeout=timeout).result()
    return sorted(g.group_id for g in listed.valid if wanted(g.group_id))


def delete_topics(bootstrap: str, names: Iterable[str], timeout: float = 60.0) -> int:
    """Delete ``names`` (already gone is fine); return how many were deleted."""
    from confluent_kafka.admin import AdminClient

    pending = list(names)
    if not pending:
        return 0
    admin = AdminClient(kafka_client_config(bootstrap))
    deleted = 0
    # The controller takes large requests in its stride, but one failure should not
    # void thousands of deletions, so go in chunks.
    for start in range(0, len(pending), 500):
        chunk = pending[start : start + 500]
        futures = admin.delete_topics(chunk, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result()
                deleted += 1
            except Exception as exc:
                if "UNKNOWN_TOPIC_OR_PART" not in str(exc):
                    raise RuntimeError(f"could not delete topic {name}: {exc}") from exc
    return deleted


def delete_topics_where(
    bootstrap: str, wanted: Callable[[str], bool], timeout: float = 60.0
) -> int:
    """Delete every topic on the broker whose name ``wanted`` accepts; return how many."""
    from confluent_kafka.admin import AdminClient

    existing = AdminClient(kafka_client_config(bootstrap)).list_topics(timeout=timeout).topics
    return delete_topics(bootstrap, sorted(n for n in existing if wanted(n)), timeout)


def delete_deployment_topics(bootstrap: str, settings: Settings, timeout: float = 60.0) -> int:
    """Delete every topic of the deployment ``settings`` names; return how many."""
    return delete_topics_where(bootstrap, owner_of(settings), timeout)


def prune_scratch_topics(bootstrap: str, timeout: float = 60.0) -> int:
    """Delete the topics of every throwaway deployment (only when none of them runs)."""
    return delete_topics_where(bootstrap, is_scratch, timeout)
