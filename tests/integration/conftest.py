"""The real-broker suite: one dev stack for the session, one isolated otaflow per test.

Each ``Otaflow`` gets its own topic prefix, application id and state directory, so
tests never see each other's records, and runs as real processes (worker with its
batcher) against the real Kafka and Mosquitto.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from otaflow import config, topics
from otaflow.codec import codec
from otaflow.config import Settings
from otaflow.control.client import ControlClient
from otaflow.dev import devstack
from otaflow.device_keys import device_key
from otaflow.kafka_partitions import CONFLUENT_PARTITIONER, partition_for
from tests.served_api import free_port as free_port  # one definition; re-exported here

REPO = Path(__file__).resolve().parents[2]
CODEC = codec()


# Every deployment a test makes lives in this session's namespace, and the session deletes
# the lot at its end, whatever each test's own clean-up got to: a dev broker that gathers
# thousands of partitions takes minutes to start.
SESSION_KIND = f"test{uuid.uuid4().hex[:6]}"


def scratch(base: Settings) -> Settings:
    """``base`` under a fresh topic prefix and app id of this test session."""
    return topics.scratch_settings(base, SESSION_KIND)


@pytest.fixture(scope="session", autouse=True)
def _delete_session_topics() -> Iterator[None]:
    yield
    mark = f"{topics.SCRATCH_MARK}{SESSION_KIND}-"
    topics.delete_topics_where(devstack.up().kafka_bootstrap, lambda n: n.startswith(mark))


@pytest.fixture(scope="session")
def stack() -> devstack.DevStack:
    return devstack.up()


class Otaflow:
    """An isolated otaflow deployment under test (its own topics, state and processes)."""

    def __init__(
        self,
        stack: devstack.DevStack,
        tmp: Path,
        partitions: int = 4,
        tick_interval_s: float = 0,
        deployment: str | None = None,
    ) -> None:
        """``deployment``: named as an operator would (OTAFLOW_DEPLOYMENT alone), not by
        the scratch topic prefix and app id."""
        api_port, package_port = free_port(), free_port()
        base = config.load()
        named = config.deployment_settings(base, deployment) if deployment else scratch(base)
        self.settings: Settings = replace(
            named,
            kafka_bootstrap=stack.kafka_bootstrap,
            mqtt=config.MqttAddress.parse(stack.mqtt_url),
            partitions=partitions,
            tick_interval_s=tick_interval_s,
            api_port=api_port,
            package_port=package_port,
            package_base_url=f"http://127.0.0.1:{package_port}",
            access_keys={"testAK": "testSecret"},
        )
        self.tmp = tmp
        self.env = {
            **os.environ,
            "OTAFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "OTAFLOW_MQTT_URL": stack.mqtt_url,
            "OTAFLOW_PARTITIONS": str(partitions),
            **(
                {"OTAFLOW_DEPLOYMENT": deployment}
                if deployment
                else {
                    "OTAFLOW_TOPIC_PREFIX": self.settings.topic_prefix,
                    "OTAFLOW_APP_ID": self.settings.app_id,
                }
            ),
            "OTAFLOW_TICK_INTERVAL": str(tick_interval_s),
            "OTAFLOW_API_PORT": str(api_port),
            "OTAFLOW_PACKAGE_PORT": str(package_port),
            "OTAFLOW_ACCESS_KEYS": "testAK:testSecret",
            "OTAFLOW_DATA": str(tmp / "data"),
            "OTAFLOW_PACKAGE_DIR": str(tmp / "packages"),
            "PYTHONPATH": str(REPO),
        }
        topics.ensure_topics(stack.kafka_bootstrap, self.settings)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.producer = Producer(
            {
                "bootstrap.servers": stack.kafka_bootstrap,
                "partitioner": CONFLUENT_PARTITIONER,
                "linger.ms": 5,
            }
        )
        self._control: ControlClient | None = None
        self._readers: dict[str, TopicReader] = {}

    # -- processes ---------------------------------------------------------------------

    def start(self, name: str, *args: str) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )

    def start_worker(self) -> None:
        self.start("worker", "-m", "streams.worker")

    def start_all(self) -> None:
        """Worker, ingress and egress connectors, and the API/package server."""
        self.start_worker()
        self.start("ingress", "-m", "connectors.ingress")
        self.start("egress", "-m", "connectors.egress")
        self.start("file-download", "-m", "connectors.file_download")
        self.start("api", "-m", "otaflow.api_main")

    def stop(self, name: str, kill: bool = False) -> None:
        proc = self.procs.pop(name)
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        if self._control is not None:
            self._control.close()
        for reader in self._readers.values():
            reader.close()
        self.producer.flush(10)
        topics.delete_deployment_topics(self.settings.kafka_bootstrap, self.settings)

    # -- control plane -------------------------------------------------------------------

    @property
    def control(self) -> ControlClient:
        if self._control is None:
            self._control = ControlClient(self.settings)
        return self._control

    def call(self, action: str, now_ms: int, **params: Any) -> Any:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited:\n{self.log(name)}"
        result = self.control.call(
            action, {k: str(v) for k, v in params.items()}, now_ms=now_ms, timeout=60
        )
        assert result.success, f"{action} failed: {result.code} {result.message}"
        return result.data

    # -- records in ------------------------------------------------------------------------

    def report(self, pk: str, dn: str, kind: str, at: int, **fields: Any) -> None:
        record = {"product_key": pk, "device_name": dn, "kind": kind, "event_time": at, **fields}
        self.producer.produce(
            topics.DEVICE_REPORTS.full_name(self.settings),
            key=device_key(pk, dn).encode(),
            value=CODEC.encode("DeviceReport", record),
        )

    def tick_through(self, start: int, end: int, step: int = 1000) -> None:
        """Ticks every ``step`` ms from ``start`` to ``end`` (included), as the workers'
        ticker would write them: a rate meter keeps only two seconds of unused credit, so
        one tick a minute later is a stall, not a minute of pushes (otaflow.domain.rate)."""
        at = start
        while at < end:
            self.tick(at)
            at += step
        self.tick(end)

    def tick(self, at: int) -> None:
        """Move event time on every partition of the engine's internal topics."""
        tick = {"event_time": at}
        envelope = CODEC.encode("DeviceEventBatch", {"items": [CODEC.encode("Tick", tick)]})
        rate_tick = CODEC.encode("RateEvent", {"body": ("otaflow.Tick", tick)})
        for p in range(self.settings.partitions):
            self.producer.produce(
                topics.DEVICE_EVENTS.full_name(self.settings), value=envelope, partition=p
            )
            self.producer.produce(
                topics.RATE_EVENTS.full_name(self.settings), value=rate_tick, partition=p
            )
        self.producer.flush(10)

    def flush(self) -> None:
        self.producer.flush(10)

    # -- records out -----------------------------------------------------------------------

    def reader(self, spec: topics.TopicSpec) -> TopicReader:
        if spec.name not in self._readers:
            self._readers[spec.name] = TopicReader(self.settings, spec)
        return self._readers[spec.name]

    def task_events(self) -> TopicReader:
        return self.reader(topics.TASK_EVENTS)

    def notifications(self) -> TopicReader:
        return self.reader(topics.NOTIFICATIONS)


class TopicReader:
    """Reads a topic from the beginning and keeps every decoded record it has seen."""

    def __init__(self, settings: Settings, spec: topics.TopicSpec) -> None:
        self.name = spec.full_name(settings)
        self.records: list[tuple[int, dict[str, Any]]] = []
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"r-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.assign(
            [TopicPartition(self.name, p, 0) for p in range(spec.partition_count(settings))]
        )

    def poll(self, seconds: float = 0.2) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, 0.05):
                value, partition = msg.value(), msg.partition()
                if msg.error() is None and value is not None and partition is not None:
                    self.records.append((partition, CODEC.decode(value)[1]))

    def wait_for(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 60.0,
        what: str = "records",
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0.2)
            values = [r for _, r in self.records]
            if predicate(values):
                return values
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what} on {self.name}; "
                    f"have {len(values)}: {values[-5:]}"
                )

    def values(self) -> list[dict[str, Any]]:
        self.poll(0.3)
        return [r for _, r in self.records]

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def otaflow(stack: devstack.DevStack, tmp_path: Path) -> Iterator[Otaflow]:
    deployment = Otaflow(stack, tmp_path)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.fixture
def make_otaflow(
    stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Otaflow]]:
    made: list[Otaflow] = []

    def make(**kwargs: Any) -> Otaflow:
        deployment = Otaflow(stack, tmp_path_factory.mktemp("otaflow"), **kwargs)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.close()


def statuses_by_task(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e["task_id"], []).append(e["status"])
    return out


__all__ = ["Otaflow", "TopicReader", "partition_for", "statuses_by_task"]
