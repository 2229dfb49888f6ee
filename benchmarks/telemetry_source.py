"""Scenario ``ingest-json``: version reports from a team's own JSON telemetry topic (mapped
by a source file, ``otaflow.report_sources``) against native Avro reports on
``ota.device.reports``, in the same deployment and run.

Each leg, in each of three rounds, brings ``n`` new devices (its own product key), so
all apply the same state writes; only the way in differs. Two JSON legs: the topic keyed
``productKey/deviceName`` by Kafka's default partitioner and as many partitions as
otaflow's (the batcher trusts the partition, as for native reports), and keyed by the
device name alone (the batcher hashes every mapped key). Target: JSON at least 0.5 of
the Avro rate.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from statistics import median

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


def ingest_json(n: int, rounds: int = 3) -> ScenarioResult:
    result = ScenarioResult(
        "ingest-json", {"devices per leg and round": n, "rounds": rounds, "partitions": 8}
    )
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

        # (label, topic, product key, keyed by productKey/deviceName): each round brings
        # new devices to every leg, so all apply the same writes.
        legs = [
            ("Avro on ota.device.reports", d.topic(topics.DEVICE_REPORTS), "pkAvro", True),
            ("JSON topic keyed productKey/deviceName", telemetry, "pkJsonKeyed", True),
            ("JSON topic keyed by device name", telemetry, "pkJsonName", False),
        ]
        rates: dict[str, list[float]] = {label: [] for label, *_ in legs}
        cpu: dict[str, list[float]] = {label: [] for label, *_ in legs}
        batcher = batcher_pid(d.group.procs["worker"].pid)
        states = states_written(d)
        try:
            # Legs alternate within each round, so a neighbour's load on the shared
            # machine falls on all of them alike; each figure is the median of the rounds.
            for round_ in range(rounds):
                for label, topic, pk, by_device_key in legs:
                    product = f"{pk}{round_}"
                    if topic == telemetry:
                        records = telemetry_records(product, n, by_device_key)
                    else:
                        records = version_reports(product, n)
                    # As the ingest scenario measures: producing is on the clock, then
                    # the wait until every new device's state is written (acknowledged).
                    before, cpu_before = states(), cpu_seconds(batcher)
                    produced_s = _produce(d, topic, records)
                    elapsed = produced_s + wait_progress(
                        f"{label} ({round_ + 1}/{rounds})",
                        before + n,
                        states,
                        timeout=3600,
                        interval=0.05,
                    )
                    rates[label].append(n / elapsed)
                    # The batcher's own cost per record: what the mapping adds, whatever
                    # else shares the machine (the rate is the worker's and broker's too).
                    cpu[label].append((cpu_seconds(batcher) - cpu_before) / n * 1e6)
        finally:
            states.close()
        for label, *_ in legs:
            result.add(f"{label}: reports/s end to end", median(rates[label]), "reports/s")
            result.add(f"{label}: batcher CPU per report", median(cpu[label]), "us")
            result.notes.append(
                f"{label}: reports/s each round {[round(r) for r in rates[label]]}, "
                f"batcher us/report {[round(c, 1) for c in cpu[label]]}"
            )
        avro = median(rates[legs[0][0]])
        for label, *_ in legs[1:]:
            ratio = median(rates[label]) / avro
            result.add(f"{label}: ratio to Avro", ratio, "", "≥ 0.5", ratio >= RATIO_TARGET)
    finally:
        d.close()
    return result
