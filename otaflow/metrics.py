"""Prometheus metrics, ``/healthz`` and ``/readyz`` of every otaflow process.

Each process serves ``/metrics`` (Prometheus text format), ``/healthz`` (the process
answers: 200) and ``/readyz`` (200 once the process does its job: the worker has its
partitions, a connector its MQTT subscription, the API its listeners; 503 before) on a
port of its own: ``OTAFLOW_METRICS_PORT`` where set (0: any free port), else the
component's default (worker 9401, batcher 9402, ingress 9403, egress 9404,
file-download 9405, api 9406, console 9407) plus 10 per further copy on the host; a taken port falls
back to a free one. The address is logged and written to
``OTAFLOW_CACHE/instances/<deployment>-<component>-<slot>.metrics`` for discovery.

Hot paths count per envelope or per poll, never per record: a labelled counter's
``inc`` costs about a microsecond, as much as applying a whole device report.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from otaflow import config, instances
from otaflow.config import Settings

_log = logging.getLogger("otaflow.metrics")

DEFAULT_PORTS = {
    "worker": 9401,
    "batcher": 9402,
    "ingress": 9403,
    "egress": 9404,
    "file-download": 9405,
    "api": 9406,
    "console": 9407,
}

# -- the series ---------------------------------------------------------------------------

REPORTS_APPLIED = Counter(
    "otaflow_reports_applied", "Device reports the device agent applied (counted per envelope)"
)
ENVELOPES_APPLIED = Counter(
    "otaflow_envelopes_applied", "Envelopes of device events the device agent applied"
)
MQTT_CONNECTED = Gauge(
    "otaflow_mqtt_connected", "1 while the process's MQTT connection is up", ["component"]
)
MQTT_CONNECTS = Counter(
    "otaflow_mqtt_connects", "MQTT connections made (the first and every reconnect)", ["component"]
)
MQTT_DISCONNECTS = Counter(
    "otaflow_mqtt_disconnects", "MQTT connections lost (not counting a stop)", ["component"]
)
API_REQUESTS = Counter(
    "otaflow_api_requests", "OpenAPI requests by operation and answer code", ["operation", "code"]
)
API_LATENCY = Histogram(
    "otaflow_api_request_seconds",
    "OpenAPI request latency by operation",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def mqtt_connected(component: str) -> None:
    MQTT_CONNECTS.labels(component).inc()
    MQTT_CONNECTED.labels(component).set(1)


def mqtt_disconnected(component: str, stopping: bool = False) -> None:
    MQTT_CONNECTED.labels(component).set(0)
    if not stopping:
        MQTT_DISCONNECTS.labels(component).inc()


# -- readiness and the endpoint -------------------------------------------------------------

_ready: list[Callable[[], bool]] = []


def ready_when(check: Callable[[], bool]) -> None:
    """``/readyz`` answers 200 once every registered check is true."""
    _ready.append(check)


def is_ready() -> bool:
    try:
        return bool(_ready) and all(check() for check in _ready)
    except Exception:  # a check that fails to answer means not ready
        return False


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._answer(200, b"ok\n")
        elif path == "/readyz":
            ready = is_ready()
            self._answer(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
        else:
            self._answer(404, b"not found: /metrics, /healthz, /readyz\n")

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds are not news


_server: ThreadingHTTPServer | None = None


def _bind(port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("0.0.0.0", port), _Handler)
    server.daemon_threads = True
    return server


def serve(settings: Settings, component: str) -> int:
    """Serve this process's metrics and health in a daemon thread; return the port."""
    global _server
    if _server is not None:
        return int(_server.server_address[1])
    import os

    slot = instances.slot(settings, component)
    wanted_env = os.environ.get("OTAFLOW_METRICS_PORT")
    wanted = int(wanted_env) if wanted_env else DEFAULT_PORTS.get(component, 0) + 10 * slot
    try:
        server = _bind(wanted)
    except OSError:
        _log.warning("metrics port %d is taken; serving on a free one", wanted)
        server = _bind(0)
    _server = server
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    port = int(server.server_address[1])
    url = f"http://127.0.0.1:{port}"
    note = config.cache_dir() / "instances" / f"{settings.deployment}-{component}-{slot}.metrics"
    note.write_text(url + "\n")
    # Gone with the process (a note left by a killed one names a port someone may reuse:
    # the next copy in its slot overwrites it).
    atexit.register(lambda: note.unlink(missing_ok=True))
    _log.info("%s: metrics on %s/metrics, health on /healthz and /readyz", component, url)
    return port


def metrics_url(settings: Settings, component: str, slot: int = 0) -> str | None:
    """Where the ``slot``-th copy of ``component`` serves its metrics (its note), if known."""
    note = config.cache_dir() / "instances" / f"{settings.deployment}-{component}-{slot}.metrics"
    try:
        return note.read_text().strip()
    except OSError:
        return None


class CountsCollector(Collector):
    """Counters a component already keeps as plain attributes, read when scraped: no
    metric call on its hot path. ``counts``: series name (without ``_total``) -> (help,
    reader)."""

    def __init__(self, component: str, counts: dict[str, tuple[str, Callable[[], int]]]) -> None:
        self.component = component
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        for name, (text, read) in self.counts.items():
            family = CounterMetricFamily(name, text, labels=["component"])
            family.add_metric([self.component], read())
            yield family


def expose_counts(component: str, counts: dict[str, tuple[str, Callable[[], int]]]) -> None:
    REGISTRY.register(CountsCollector(component, counts))


# -- consumer lag ---------------------------------------------------------------------------


class GroupLagCollector(Collector):
    """``otaflow_consumer_lag{group,topic,partition}``: end offset minus the group's
    committed offset, read from the broker when scraped (cached a few seconds)."""

    CACHE_S = 5.0

    def __init__(self, settings: Settings, groups: dict[str, Iterable[tuple[str, int]]]) -> None:
        # group -> (topic, partitions) it reads
        self.settings = settings
        self.groups = {g: list(t) for g, t in groups.items()}
        self._lock = threading.Lock()
        self._cached: tuple[float, list[tuple[str, str, int, int]]] = (0.0, [])
        self._consumers: dict[str, Any] = {}

    def _consumer(self, group: str) -> Any:
        from confluent_kafka import Consumer

        if group not in self._consumers:
            # Never subscribes: it only reads the group's committed offsets.
            self._consumers[group] = Consumer(
                {
                    "bootstrap.servers": self.settings.kafka_bootstrap,
                    "group.id": group,
                    "enable.auto.commit": False,
                }
            )
        return self._consumers[group]

    def lags(self) -> list[tuple[str, str, int, int]]:
        from confluent_kafka import TopicPartition

        with self._lock:
            at, cached = self._cached
            if time.monotonic() - at < self.CACHE_S:
                return cached
            rows: list[tuple[str, str, int, int]] = []
            for group, wanted in self.groups.items():
                consumer = self._consumer(group)
                parts = [TopicPartition(t, p) for t, n in wanted for p in range(n)]
                try:
                    committed = consumer.committed(parts, timeout=5)
                    for tp in committed:
                        _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                        done = tp.offset if tp.offset >= 0 else 0
                        rows.append((group, tp.topic, tp.partition, max(0, high - done)))
                except Exception as exc:
                    _log.debug("lag of %s unavailable: %s", group, exc)
            self._cached = (time.monotonic(), rows)
            return rows

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "otaflow_consumer_lag",
            "Records not yet committed by the group, per partition",
            labels=["group", "topic", "partition"],
        )
        for group, topic, partition, lag in self.lags():
            family.add_metric([group, topic, str(partition)], lag)
        yield family


# -- the fleet, as the API's task view sees it -----------------------------------------------


class TaskViewCollector(Collector):
    """Per batch: tasks per status, pushes so far and the configured rate, from the API's
    task view (read under its lock when scraped; nothing on the view's hot path)."""

    def __init__(self, view: Any) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "otaflow_tasks", "Tasks per batch and status", labels=["batch", "status"]
        )
        pushes = CounterMetricFamily(
            "otaflow_pushes",
            "Update offers pushed (NOTIFIED task events) per batch",
            labels=["batch"],
        )
        rate = GaugeMetricFamily(
            "otaflow_batch_rate_per_minute",
            "Configured push rate per batch: its maximum, and the base of a variable rate",
            labels=["batch", "bound"],
        )
        with self.view._lock:
            jobs = [(b, dict(j.by_status), j.pushes) for b, j in self.view.jobs.items()]
            batches = {b: batch.get("rate") for b, batch in self.view.batches.items()}
        for batch_id, by_status, pushed in jobs:
            for status, count in by_status.items():
                tasks.add_metric([batch_id, status], count)
            pushes.add_metric([batch_id], pushed)
        for batch_id, settings in batches.items():
            if settings:
                rate.add_metric([batch_id, "max"], settings["max_rate"])
                if settings.get("base_rate") is not None:
                    rate.add_metric([batch_id, "base"], settings["base_rate"])
        yield tasks
        yield pushes
        yield rate


# -- dead letters ---------------------------------------------------------------------------


def reason_class(reason: str) -> str:
    """A dead letter's reason without its particulars (bounded label values)."""
    head = reason.split(":", 1)[0].strip()
    return head[:60] or "unknown"


class DeadLetterCounter(Collector):
    """``otaflow_dead_letters_total{source,reason}`` from the dead-letter topic, read from
    the beginning in a daemon thread (whoever wrote them: batcher, worker, connectors)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from otaflow import topics
        from otaflow.codec import codec

        self._codec = codec()
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        spec = topics.DEAD_LETTERS
        name = spec.full_name(settings)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.app_id}-metrics-{id(self)}",
                "enable.auto.commit": False,
            }
        )
        self._consumer.assign(
            [TopicPartition(name, p, 0) for p in range(spec.partition_count(settings))]
        )
        self._thread = threading.Thread(target=self._run, name="dead-letters", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(500, 0.5)
            counted: dict[tuple[str, str], int] = {}
            for msg in messages:
                if msg.error() is not None or msg.value() is None:
                    continue
                try:
                    letter = self._codec.decode(msg.value() or b"")[1]
                    source = str(letter["source"]).lstrip("/").split("/", 1)[0]
                    key = (source, reason_class(letter["reason"]))
                except Exception:
                    key = ("unknown", "undecodable dead letter")
                counted[key] = counted.get(key, 0) + 1
            if counted:
                with self._lock:
                    for key, n in counted.items():
                        self._counts[key] = self._counts.get(key, 0) + n

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "otaflow_dead_letters", "Dead letters by source and reason", labels=["source", "reason"]
        )
        with self._lock:
            counts = dict(self._counts)
        for (source, reason), n in sorted(counts.items()):
            family.add_metric([source, reason], n)
        yield family

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()
