"""What every connector process does before its loop: logging, settings, its topics,
its metrics endpoint, and a stop event that SIGINT and SIGTERM set (the loops drain and
exit on it)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from otaflow import bounded_stop, config, logs, metrics, topics
from otaflow.config import Settings
from otaflow.topics import TopicSpec, ensure_topics

# A connector's stop drains for at most 10 s (in-flight MQTT and Kafka acknowledgements),
# then commits, closes and flushes; past this the kernel ends it whatever librdkafka
# waits on (otaflow.bounded_stop). What it did not acknowledge (MQTT QoS 1) or commit
# (Kafka) is delivered again.
STOP_DEADLINE_S = 30


def start_process(
    topics_used: Sequence[TopicSpec], component: str = "connector"
) -> tuple[Settings, threading.Event]:
    logs.setup(component)
    settings = config.load()
    ensure_topics(settings.kafka_bootstrap, settings, topics_used)
    stop = threading.Event()
    bounded_stop.stop_on_signals(stop, STOP_DEADLINE_S)
    return settings, stop


def serve_metrics(
    settings: Settings,
    component: str,
    ready: Callable[[], bool],
    counts: dict[str, tuple[str, Callable[[], int]]],
    lag_of: str | None = None,
) -> int:
    """Serve /metrics, /healthz and /readyz (ready: ``ready()``), with the connector's
    own ``counts`` (otaflow.metrics.expose_counts); ``lag_of``: a consumer group whose
    lag on the notifications topic to export (the egress's)."""
    metrics.expose_counts(component, counts)
    if lag_of is not None:
        from prometheus_client import REGISTRY

        spec = topics.NOTIFICATIONS
        REGISTRY.register(
            metrics.GroupLagCollector(
                settings,
                {lag_of: [(spec.full_name(settings), spec.partition_count(settings))]},
            )
        )
    metrics.ready_when(ready)
    return metrics.serve(settings, component)
