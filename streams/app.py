"""The Faust application: settings, topics and tables, in one place.

Agents live in their own modules (``device_agent``, ``rate_agent``, ``command_agent``)
and import ``app`` from here. Settings come from ``otaflow.config`` (environment).
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from mode import CrashingSupervisor

from otaflow import config, instances, membership, topics
from otaflow.kafka_security import KafkaSecurity
from streams import fetch_tuning

fetch_tuning.apply()
settings = config.load()
# One state directory per copy of the worker on this host (two cannot open one RocksDB
# database), the same one again after a restart so its state need not be replayed.
_instance = instances.instance_name(settings, "worker")
_datadir = instances.worker_state_dir(settings)
_datadir.parent.mkdir(parents=True, exist_ok=True)

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    # SASL/TLS from OTAFLOW_KAFKA_* (otaflow.kafka_security); None for PLAINTEXT.
    broker_credentials=KafkaSecurity.from_env().faust_credentials(),
    # RocksDB through rocksdict: one database per partition, so a partition's devices
    # can be scanned on their own when a batch starts.
    store="rocksdb://",
    datadir=str(_datadir),
    broker_client_id=_instance,
    topic_partitions=settings.partitions,
    # Topics are created by otaflow.topics.ensure_topics with their real settings.
    topic_allow_declare=True,
    topic_disable_leader=True,
    # No standbys. Measured with two workers, 20,000 devices (30 Nov): one standby cut a
    # failover from 11.6 to 8.8 s (medians of 6), but cost 30 % of the two workers' ingest
    # (54,000 against 68,500-83,600 reports/s) and made their fan-out ten times slower
    # (13.8-15.6 s against 1.3-1.5 s): each worker replays the other's changelogs.
    table_standby_replicas=0,
    topic_replication_factor=settings.replication,
    consumer_auto_offset_reset="earliest",
    # Commit often: a restart replays at most this much (replays are idempotent).
    broker_commit_every=1000,
    broker_commit_interval=1.0,
    web_enabled=False,
    # An agent that raises must stop the worker, not be restarted past the record it
    # failed on: the record is then re-read after the restart and nothing is skipped.
    # (Bad input never raises: it goes to the dead-letter topic.)
    agent_supervisor=CrashingSupervisor,
    key_serializer="raw",
    value_serializer="raw",
    # Envelopes are large; keep Faust's buffer of them small.
    stream_buffer_maxsize=64,
    # No linger: a release waiting 5 ms in the producer is 5 ms of push latency.
    producer_linger=0.0,
    producer_max_batch_size=1_048_576,
    producer_max_request_size=8_388_608,
    consumer_max_fetch_size=8_388_608,
    # A killed worker costs seconds, not Faust's 60 s session: a short session, and a
    # static member id kept in the state directory, so a restart takes its partitions
    # back without a rebalance (otaflow.membership says why).
    broker_session_timeout=membership.session_timeout_s(),
    broker_heartbeat_interval=membership.heartbeat_interval_s(),
    consumer_group_instance_id=membership.instance_id(_datadir, "worker"),
    # Faust's own pauses 1 s at start for tables that are all declared by then.
    TableManager="streams.faust_private:PromptTableManager",
)

log = logging.getLogger("otaflow.worker")


def topic(spec: topics.TopicSpec) -> faust.TopicT:
    return app.topic(
        spec.full_name(settings),
        partitions=spec.partition_count(settings),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        internal=False,
    )


device_events = topic(topics.DEVICE_EVENTS)
rate_events = topic(topics.RATE_EVENTS)
commands = topic(topics.COMMANDS)
command_results = topic(topics.COMMAND_RESULTS)
task_events = topic(topics.TASK_EVENTS)
notifications = topic(topics.NOTIFICATIONS)
batches_topic = topic(topics.BATCHES)
rollout_triggers = topic(topics.ROLLOUT_TRIGGERS)


def table(name: str, partitions: int | None = None) -> Any:
    return app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        schema=faust.Schema(
            key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        ),
        partitions=partitions or settings.partitions,
    )


# Device agent state: one DeviceState per device, and per partition the batches it
# knows and how far it has read each source partition of ota.device.reports.
devices = table("devices")
partition_meta = table("device-partition-meta")
# Rate agent state: one BatchMeter per batch and the chunks of its push queue.
batch_meters = table("batch-meters")
push_queue = table("push-queue")
# Control plane state (single partition, owned by the command agent).
control_state = table("control-state", partitions=1)
dead_letters = topic(topics.DEAD_LETTERS)


def declare_changelogs() -> None:
    """Create every table's changelog topic before the worker joins its group.

    Faust creates them itself on start, but two workers starting together race to do
    so, and the one that loses is handed changelog partitions its metadata does not
    have yet ("Topic ... not found in cluster metadata"). Created here, idempotently,
    before either joins, every worker finds them.
    """
    topics.create_topics(
        settings.kafka_bootstrap,
        [
            (
                table.changelog_topic.get_topic_name(),
                table.partitions or settings.partitions,
                {"cleanup.policy": "compact"},
            )
            for table in app.tables.values()
        ],
        settings.replication,
    )
