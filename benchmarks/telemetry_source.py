"""Scenario ``ingest-json``: version reports from a team's own JSON telemetry topic (mapped
by a source file, ``otaflow.report_sources``) against native Avro reports on
``ota.device.reports``, in the same deployment and run.

Each leg brings ``n`` new devices (its own product key), so both apply the same state
writes; only the way in differs. The JSON leg runs twice: with the topic keyed
``productKey/deviceName`` by Kafka's default partitioner and as many partitions as
otaflow's (the batcher trusts the partition, as for native reports), and keyed by the
device name alone (the batcher hashes every mapped key). Target: JSON at least 0.5 of
the Avro rate.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from benchmarks.deployment import T0, BenchDeployment, version_reports
from benchmarks.results import ScenarioResult
from benchmarks.scenarios import applied, end_offsets, states_written, wait_progress
from otaflow import topics

RATIO_TARGET = 0.5

SOURCE = """
[[source]]
name = "bench telemetry"
topic = "{topic}"
product_key = "$.device.product"
device_name = "$.device.name"
version = "$.firmware.version"
event_time = "$.ts"
only_when = {{ "$.type" = "firmware" }}
"""


def batcher_pid(worker_pid: int) -> int | None:
    """The worker's batcher child process (streams.worker starts it)."""
    for children in Path(f"/proc/{worker_pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            if "streams.batcher" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                return int(pid)
    return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of ``pid`` so far (0 when unknown)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def telemetry_records(
    product_key: str, count: int, by_device_key: bool
) -> list[tuple[bytes, bytes]]:
    """Pre-encoded JSON telemetry (encoding off the clock), one firmware record per device."""
    out = []
    for i in range(count):
        dn = f"d{i:07d}"
        record = {
            "type": "firmware",
            "device": {"product": product_key, "name": dn, "site": "plant-7"},
            "firmware": {"module": "default", "version": "1.0"},
            "ts": T0,
        }
        key = f"{product_key}/{dn}" if by_device_key else dn
        out.append((key.encode(), orjson.dumps(record)))
    return out


def _produce(d: BenchDeployment, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    start = time.perf_counter()
    for key, value in records:
        while True:
            try:
                d.producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                d.producer.poll(0.05)
    d.producer.flush(120)
    return time.perf_counter() - start


def ingest_json(n: int) -> ScenarioResult:
    result = ScenarioResult("ingest-json", {"devices per leg": n, "partitions": 8})
    d = BenchDeployment("ingest-json")
    try:
        telemetry = d.settings.topic_prefix + "bench.telemetry"
        topics.create_topics(d.settings.kafka_bootstrap, [(telemetry, d.settings.partitions, {})])
        source_file = d.root / "sources.toml"
        source_file.parent.mkdir(parents=True, exist_ok=True)
        source_file.write_text(SOURCE.format(topic=telemetry))
        d.group.start(
            "worker", ["-m", "streams.worker"], env={"OTAFLOW_REPORT_SOURCES": str(source_file)}
        )
        d.produce_reports(version_reports("warmup", 1, at=T0, start=0))
        base = end_offsets(d, topics.DEVICE_REPORTS)
        wait_progress("worker start", base, applied(d, base), timeout=180)

        legs: list[tuple[str, str, list[tuple[bytes, bytes]]]] = [
            (
                "Avro on ota.device.reports",
                d.topic(topics.DEVICE_REPORTS),
                version_reports("pkAvro", n),
            ),
            (
                "JSON topic keyed productKey/deviceName",
                telemetry,
                telemetry_records("pkJsonKeyed", n, by_device_key=True),
            ),
            (
                "JSON topic keyed by device name",
                telemetry,
                telemetry_records("pkJsonName", n, by_device_key=False),
            ),
        ]
        rates: dict[str, float] = {}
        batcher = batcher_pid(d.group.procs["worker"].pid)
        states = states_written(d)
        try:
            for label, topic, records in legs:
                # As the ingest scenario measures: producing is on the clock, then the
                # wait until every new device's state is written (and acknowledged).
                before, cpu_before = states(), cpu_seconds(batcher)
                produced_s = _produce(d, topic, records)
                elapsed = produced_s + wait_progress(
                    label, before + n, states, timeout=3600, interval=0.05
                )
                rates[label] = n / elapsed
                result.add(f"{label}: reports/s end to end", rates[label], "reports/s")
                # The batcher's own cost per record: what the mapping adds, whatever else
                # shares the machine (the rate above is the worker's and the broker's too).
                cpu_us = (cpu_seconds(batcher) - cpu_before) / n * 1e6
                result.add(f"{label}: batcher CPU per report", cpu_us, "us")
        finally:
            states.close()
        avro = rates[legs[0][0]]
        for label, _, _ in legs[1:]:
            ratio = rates[label] / avro
            result.add(f"{label}: ratio to Avro", ratio, "", "≥ 0.5", ratio >= RATIO_TARGET)
    finally:
        d.close()
    return result
