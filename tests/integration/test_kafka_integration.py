"""Kafka integration, as a platform team with its own topics and tools meets it: their
JSON telemetry topic (and a second team's Avro topic) drive a rollout, with no
``ota.device.reports`` producer at all, and Debian's ``kcat`` reads the task statuses
off ``ota.task.events.json`` while it runs."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import fastavro
import pytest
from alibabacloud_iot20180120 import models as m
from alibabacloud_iot20180120.client import Client
from alibabacloud_tea_openapi.models import Config
from confluent_kafka.admin import AdminClient

from otaflow import topics
from tests.integration.conftest import Otaflow, statuses_by_task
from tests.integration.engine_support import T0
from tests.integration.rollout_support import dynamic_batch

pytestmark = pytest.mark.integration

MINUTE = 60_000

SOURCES = """
[[source]]
name = "fleet telemetry"
topic = "{topic}"
format = "json"
product_key = "$.device.product"
device_name = "$.device.name"
module = "$.firmware.module"
version = "$.firmware.version"
event_time = "$.ts"
only_when = {{ "$.type" = "firmware" }}

[[source]]
name = "gateway firmware"
topic = "{avro_topic}"
format = "avro"
schema = "gateway.avsc"
framing = "confluent"
product_key = "$.product"
device_name = "$.device"
version = "$.firmware"
event_time = "$.at"
event_time_unit = "s"
"""

# A second team's topic: Avro behind a Confluent-style header (magic byte, schema id).
GATEWAY_SCHEMA = {
    "type": "record",
    "name": "GatewayFirmware",
    "fields": [
        {"name": "product", "type": "string"},
        {"name": "device", "type": "string"},
        {"name": "firmware", "type": "string"},
        {"name": "at", "type": "long"},
    ],
}


def gateway_record(pk: str, dn: str, version: str, at_ms: int) -> bytes:
    body = io.BytesIO()
    record = {"product": pk, "device": dn, "firmware": version, "at": at_ms // 1000}
    fastavro.schemaless_writer(body, fastavro.parse_schema(GATEWAY_SCHEMA), record)
    return b"\x00\x00\x00\x00\x2a" + body.getvalue()


# One line per record: the key, a tab, the value (kcat expands the escapes).
FORMAT = "%k\\t%s\\n"


class Kcat:
    """``kcat -C`` following a topic from its beginning; its lines gathered by a thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        kcat = shutil.which("kcat")
        if kcat is None:
            pytest.fail("kcat is not installed: `make setup` (otaflow devstack up) installs it")
        self.lines: list[str] = []
        # kcat gives up on a topic its first metadata does not show, and a topic created
        # a moment ago may not have its leaders yet.
        admin, deadline = AdminClient({"bootstrap.servers": bootstrap}), time.monotonic() + 30
        while not _has_leaders(admin, topic):
            assert time.monotonic() < deadline, f"{topic} has no leaders after 30 s"
            time.sleep(0.1)
        self.proc = subprocess.Popen(
            [kcat, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-u", "-q", "-f", FORMAT],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def records(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for line in list(self.lines):
            key, _, value = line.partition("\t")
            out.append((key, json.loads(value)))
        return out

    def wait_for(self, done: Any, timeout: float = 90.0) -> list[tuple[str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if done([r for _, r in records]):
                return records
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"kcat: {len(records)} records, exit {self.proc.poll()} {err}")
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _has_leaders(admin: AdminClient, topic: str) -> bool:
    found = admin.list_topics(topic, timeout=10).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        return False
    return all(p.leader >= 0 for p in found.partitions.values())


def telemetry(pk: str, dn: str, version: str, at: int, kind: str = "firmware") -> bytes:
    record = {
        "type": kind,
        "device": {"product": pk, "name": dn},
        "firmware": {"module": "default", "version": version},
        "ts": at,
    }
    return json.dumps(record).encode()


def api_client(otaflow: Otaflow) -> Client:
    return Client(
        Config(
            access_key_id="testAK",
            access_key_secret="testSecret",
            endpoint=f"127.0.0.1:{otaflow.settings.api_port}",
            protocol="http",
            read_timeout=70_000,
        )
    )


def api_statuses(client: Client, job_id: str) -> dict[str, str]:
    body = client.list_otatask_by_job(
        m.ListOTATaskByJobRequest(job_id=job_id, current_page=1, page_size=100)
    ).body
    assert body.success, body
    return {t.task_id: t.task_status for t in body.data.simple_otatask_info}


def test_a_json_telemetry_topic_drives_a_rollout_and_kcat_reads_the_statuses(
    otaflow: Otaflow, tmp_path: Path
) -> None:
    bootstrap = otaflow.settings.kafka_bootstrap
    # The team's topic: not otaflow's partition count, keyed by device name only.
    telemetry_topic = otaflow.settings.topic_prefix + "fleet.telemetry"
    avro_topic = otaflow.settings.topic_prefix + "gateway.firmware"
    topics.create_topics(bootstrap, [(telemetry_topic, 3, {}), (avro_topic, 1, {})])
    (tmp_path / "gateway.avsc").write_text(json.dumps(GATEWAY_SCHEMA))
    sources = tmp_path / "sources.toml"
    sources.write_text(SOURCES.format(topic=telemetry_topic, avro_topic=avro_topic))
    otaflow.env["OTAFLOW_REPORT_SOURCES"] = str(sources)
    otaflow.env["OTAFLOW_PUBLIC_JSON"] = "1"
    topics.ensure_topics(bootstrap, replace(otaflow.settings, public_json=True))
    otaflow.start_worker()
    otaflow.start("api", "-m", "otaflow.api_main")
    events_json = topics.json_copy(topics.TASK_EVENTS).full_name(otaflow.settings)
    kcat = Kcat(bootstrap, events_json)
    try:
        _rollout(otaflow, telemetry_topic, avro_topic, kcat)
    finally:
        kcat.close()


def _rollout(otaflow: Otaflow, telemetry_topic: str, avro_topic: str, kcat: Kcat) -> None:
    pk = "pkTele"
    job_id = dynamic_batch(otaflow, pk, MaximumPerMinute=100)
    sensors = [f"sensor-{i}" for i in range(6)]
    gateways = ["gw-0", "gw-1"]
    devices = sensors + gateways

    def send(dn: str, value: bytes) -> None:
        topic = avro_topic if dn in gateways else telemetry_topic
        otaflow.producer.produce(topic, key=dn.encode(), value=value)

    def report(dn: str, version: str, at: int) -> None:
        if dn in gateways:
            send(dn, gateway_record(pk, dn, version, at))
        else:
            send(dn, telemetry(pk, dn, version, at))

    for dn in devices:
        report(dn, "1.0", T0 + 1000)
    for dn in sensors:
        send(dn, telemetry(pk, dn, "1.0", T0 + 1000, kind="heartbeat"))  # skipped
    unmappable = json.dumps({"type": "firmware", "device": {"product": pk}}).encode()
    send("broken", unmappable)
    otaflow.flush()
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "QUEUED" for e in v) == 8, what="8 queued")
    otaflow.tick_through(T0 + 2000, T0 + MINUTE - 1)
    events.wait_for(lambda v: sum(e["status"] == "NOTIFIED" for e in v) == 8, what="notified")
    for dn in devices:
        report(dn, "2.0", T0 + 2 * MINUTE)
    otaflow.flush()
    events.wait_for(lambda v: sum(e["status"] == "SUCCEEDED" for e in v) == 8, what="succeeded")
    # The Avro source's time was in seconds: the event time the engine saw, in ms.
    gateway_events = [e for e in events.values() if e["device_name"] in gateways]
    assert {e["event_time"] for e in gateway_events if e["status"] == "SUCCEEDED"} == {
        T0 + 2 * MINUTE
    }

    # No ota.device.reports producer was involved: the topic is empty.
    reports = otaflow.reader(topics.DEVICE_REPORTS)
    assert reports.values() == []

    # kcat, reading the JSON copy during the rollout, saw every status the engine wrote,
    # keyed productKey/deviceName as the Avro topic is.
    printed = kcat.wait_for(lambda v: sum(e["status"] == "SUCCEEDED" for e in v) == 8)
    assert {key for key, _ in printed} == {f"{pk}/{dn}" for dn in devices}
    by_task = statuses_by_task([e for _, e in printed])
    assert by_task == statuses_by_task(events.values())
    assert all(s == ["QUEUED", "NOTIFIED", "SUCCEEDED"] for s in by_task.values())
    assert {e["batch_id"] for _, e in printed} == {job_id}

    # ... and its final statuses are the API's.
    client = api_client(otaflow)
    deadline = time.monotonic() + 60
    while (listed := api_statuses(client, job_id)) != {t: s[-1] for t, s in by_task.items()}:
        assert time.monotonic() < deadline, f"API: {listed}; kcat: {by_task}"
        time.sleep(0.5)

    # The record that did not map is a dead letter, with the reason and its raw bytes,
    # in Avro and in the JSON copy (raw as base64).
    (letter,) = otaflow.reader(topics.DEAD_LETTERS).wait_for(lambda v: len(v) == 1)
    assert letter["raw"] == unmappable
    assert letter["reason"] == "fleet telemetry: no device name at $.device.name"
    assert letter["source"].startswith(f"{telemetry_topic}/")
    json_letters = Kcat(otaflow.settings.kafka_bootstrap, letter_topic(otaflow))
    try:
        (json_letter,) = [r for _, r in json_letters.wait_for(lambda v: len(v) == 1)]
    finally:
        json_letters.close()
    assert base64.b64decode(json_letter["raw"]) == unmappable
    assert json_letter["reason"] == letter["reason"]


def letter_topic(otaflow: Otaflow) -> str:
    return topics.json_copy(topics.DEAD_LETTERS).full_name(otaflow.settings)
