"""The programs in ``examples/`` run as a user would run them, against a live otaflow:
reports produced in Avro onto ota.device.reports and as JSON telemetry onto a team's
own topic (mapped by examples/telemetry-source.toml) start tasks, which both consumer
examples then print."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from otaflow import topics
from tests.integration.conftest import REPO, Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import dynamic_batch

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "examples"
MINUTE = 60_000


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{name}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_examples_produce_reports_and_consume_task_events(
    otaflow: Otaflow, tmp_path: Path
) -> None:
    bootstrap = otaflow.settings.kafka_bootstrap
    telemetry_topic = otaflow.settings.topic_prefix + "fleet.telemetry"
    topics.create_topics(bootstrap, [(telemetry_topic, 2, {})])
    # The example mapping as it is, pointed at this deployment's copy of the topic.
    mapping = (EXAMPLES / "telemetry-source.toml").read_text()
    assert 'topic = "fleet.telemetry"' in mapping
    sources = tmp_path / "sources.toml"
    sources.write_text(mapping.replace('"fleet.telemetry"', f'"{telemetry_topic}"'))
    otaflow.env["OTAFLOW_REPORT_SOURCES"] = str(sources)
    otaflow.env["OTAFLOW_PUBLIC_JSON"] = "1"
    topics.ensure_topics(bootstrap, replace(otaflow.settings, public_json=True))
    otaflow.start_worker()
    pk = "pkExample"
    job_id = dynamic_batch(otaflow, pk, MaximumPerMinute=100)

    out = run_example(
        "produce_reports.py",
        *("--bootstrap", bootstrap, "--topic", topics.DEVICE_REPORTS.full_name(otaflow.settings)),
        *("--product-key", pk, "--devices", "3", "--version", "1.0"),
        *("--event-time", str(T0 + 1000)),
    )
    assert "produced 3 reports" in out
    out = run_example(
        "produce_telemetry_json.py",
        *("--bootstrap", bootstrap, "--topic", telemetry_topic, "--product-key", pk),
        *("--devices", "3", "--version", "1.0", "--event-time", str(T0 + 1000)),
    )
    assert "produced 6 telemetry records" in out
    # What `otaflow source peek` shows of that topic: reports and skipped heartbeats.
    peek = subprocess.run(
        [sys.executable, "-m", "otaflow.cli", "source", "peek", str(sources), "--records", "9"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**otaflow.env},
        check=False,
    )
    assert peek.returncode == 0, peek.stderr
    outcomes = [line.split(": ", 1)[1] for line in peek.stdout.splitlines()]
    assert sorted(outcomes)[:3] == [
        f"report {pk}/sensor{i} module=default version=1.0 event_time={T0 + 1000}" for i in range(3)
    ]
    assert sorted(outcomes)[3:] == ["skipped (only_when / skip_when)"] * 3
    devices = {"dev0", "dev1", "dev2", "sensor0", "sensor1", "sensor2"}

    events = otaflow.task_events()
    queued = events.wait_for(
        lambda v: sum(e["status"] == "QUEUED" for e in v) == 6, what="6 tasks queued"
    )
    assert {e["device_name"] for e in queued} == devices
    otaflow.tick(T0 + MINUTE - 1)
    events.wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) == 6, what="6 tasks notified"
    )

    printed = {}
    for name, topic in (
        ("consume_task_events_json.py", topics.json_copy(topics.TASK_EVENTS)),
        ("consume_task_events_avro.py", topics.TASK_EVENTS),
    ):
        out = run_example(
            name,
            *("--bootstrap", bootstrap, "--topic", topic.full_name(otaflow.settings)),
            *("--group", f"{otaflow.settings.app_id}-{name}", "--max-records", "12"),
            *("--timeout", "60"),
        )
        lines = out.splitlines()
        assert len(lines) == 12, out
        assert {line.split()[:2][0] for line in lines} == {f"{pk}/{dn}" for dn in devices}
        statuses = sorted(line.split()[1] for line in lines)
        assert statuses == ["NOTIFIED"] * 6 + ["QUEUED"] * 6
        assert all(f"batch={job_id} 1.0->2.0" in line for line in lines)
        printed[name] = sorted(lines)
    # The JSON copy and the Avro topic tell the same story.
    assert printed["consume_task_events_json.py"] == printed["consume_task_events_avro.py"]

    # A record the device agent cannot read is a dead letter in JSON too (raw in base64).
    garbage = b"not a DeviceReport \xff"
    reports = topics.DEVICE_REPORTS.full_name(otaflow.settings)
    otaflow.producer.produce(reports, key=f"{pk}/dev0".encode(), value=garbage)
    otaflow.flush()
    letters = read_json(otaflow, topics.json_copy(topics.DEAD_LETTERS), count=1)
    assert [base64.b64decode(letter["raw"]) for letter in letters] == [garbage]
    assert "marker" in letters[0]["reason"]


def read_json(otaflow: Otaflow, spec: topics.TopicSpec, count: int) -> list[dict[str, Any]]:
    """The first ``count`` JSON records of a topic (polling up to a minute)."""
    consumer = Consumer(
        {
            "bootstrap.servers": otaflow.settings.kafka_bootstrap,
            "group.id": f"json-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([spec.full_name(otaflow.settings)])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(json.loads(msg.value() or b"null"))
    finally:
        consumer.close()
    assert len(out) == count, out
    return out
