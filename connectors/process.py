"""What every connector process does before its loop: logging, settings, its topics,
its metrics endpoint, and a stop event that SIGINT and SIGTERM set (the loops drain and
exit on it)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence

from otaflow import config, logs, metrics, topics
from otaflow.config import Settings
from otaflow.topics import TopicSpec, ensure_topics


def start_process(
    topics_used: Sequence[TopicSpec], component: str = "connector"
) -> tuple[Settings, threading.Event]:
    logs.setup(component)
    settings = config.load()
    ensure_topics(settings.kafka_bootstrap, settings, topics_used)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
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
