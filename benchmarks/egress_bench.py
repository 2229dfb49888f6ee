"""Egress throughput: ``Notification`` records on Kafka -> QoS 1 offers on Mosquitto.

One run::

    1. a fresh topic prefix; n notifications produced onto its ``ota.notifications``
       (9 in 10 HTTPS with a signed URL, 1 in 10 MQTT download; one device each, so
       every offer has its own MQTT topic and a subscriber can count distinct ones);
    2. ``mosquitto_sub`` (the broker's own C client, so the instrument costs little
       CPU) subscribes to the product's upgrade topics and prints topic + time;
    3. ``processes`` egress connectors start (``python -m connectors.egress``, one
       consumer group) and drain the backlog;
    4. done when every notification was received and the group's committed offsets
       (committed only after the broker's PUBACK) reached the end of the topic.

Figures: ``rate`` = notifications/s between the first and the last offer the
subscriber received (consumer start-up excluded), ``committed_rate`` = n / (first
offer -> offsets committed to the end), and the egress processes' CPU per
notification. ``main()`` prints each run and the median of ``--runs`` runs.

CLI: ``python -m benchmarks.egress_bench [--n 100000] [--runs 3] [--processes 1]``.
Benchmarks print figures; they never fail because a machine was slow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from confluent_kafka import Consumer, Producer, TopicPartition

from otaflow import config
from otaflow.codec import codec
from otaflow.config import Settings
from otaflow.partitioning import CONFLUENT_PARTITIONER, device_key
from otaflow.topics import BATCHES, DEAD_LETTERS, NOTIFICATIONS, ensure_topics

REPO = Path(__file__).resolve().parent.parent
PROBE_DEVICE = "__probe__"


def fresh_settings(base: Settings) -> Settings:
    uid = uuid.uuid4().hex[:10]
    return dataclasses.replace(base, topic_prefix=f"bench{uid}.", app_id=f"bench{uid}")


def notification(pk: str, i: int) -> dict[str, Any]:
    mqtt_download = i % 10 == 0
    return {
        "product_key": pk,
        "device_name": f"dev-{i}",
        "kind": "PUSH",
        "reply_to": None,
        "task_id": f"task-{i}",
        "batch_id": "bench-batch",
        "firmware": {
            "firmware_id": f"fw-{i % 3}",
            "module": "default",
            "version": "2.0.0",
            "src_version": None,
            "is_diff": False,
            "size": 512_000,
            "sign_method": "SHA256",
            "sign": "ab" * 32,
            "md5": None,
            "file_path": f"{pk}/fw-{i % 3}.bin",
            "download_protocol": "MQTT" if mqtt_download else "HTTPS",
        },
        "ext_data": {"wave": str(i % 2)},
        "event_time": 1_700_000_000_000 + i,
    }


def produce(settings: Settings, pk: str, n: int) -> float:
    """Write n notifications; returns the seconds it took."""
    started = time.monotonic()
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "partitioner": CONFLUENT_PARTITIONER,
        }
    )
    topic = NOTIFICATIONS.full_name(settings)
    encode = codec().encode
    for i in range(n):
        record = notification(pk, i)
        value = encode("Notification", record)
        key = device_key(pk, record["device_name"]).encode()
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} notifications not written")
    return time.monotonic() - started


class Subscriber:
    """``mosquitto_sub`` on the product's upgrade topics, counted from a reader thread."""

    def __init__(self, settings: Settings, pk: str, qos: int) -> None:
        binary = shutil.which("mosquitto_sub")
        if binary is None:
            raise RuntimeError("mosquitto_sub not found (apt-get install mosquitto-clients)")
        self.settings = settings
        self.pk = pk
        self.lines = 0
        self.topics: set[str] = set()
        self.first: float | None = None
        self.last: float | None = None
        self.probed = threading.Event()
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [
                binary,
                "-h",
                settings.mqtt.host,
                "-p",
                str(settings.mqtt.port),
                "-i",
                f"{settings.app_id}-sub",
                "-q",
                str(qos),
                "-t",
                f"/ota/device/upgrade/{pk}/+",
                "-F",
                "%t %U",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            topic, _, stamp = raw.decode().rstrip("\n").rpartition(" ")
            if topic.endswith("/" + PROBE_DEVICE):
                self.probed.set()
                continue
            at = float(stamp)
            with self._lock:
                self.lines += 1
                self.topics.add(topic)
                if self.first is None:
                    self.first = at
                self.last = at

    def wait_subscribed(self, timeout: float = 15) -> None:
        """Publish probes until one comes back, so no offer is missed for want of a SUBACK."""
        deadline = time.monotonic() + timeout
        pub = shutil.which("mosquitto_pub") or "mosquitto_pub"
        while not self.probed.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto_sub never received the probe")
            subprocess.run(
                [
                    pub,
                    "-h",
                    self.settings.mqtt.host,
                    "-p",
                    str(self.settings.mqtt.port),
                    "-t",
                    f"/ota/device/upgrade/{self.pk}/{PROBE_DEVICE}",
                    "-m",
                    "probe",
                ],
                check=True,
                timeout=10,
            )
            self.probed.wait(0.2)

    def unique(self) -> int:
        with self._lock:
            return len(self.topics)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._thread.join(10)


def committed_to_end(settings: Settings, group_id: str, ends: list[int]) -> bool:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id})
    try:
        topic = NOTIFICATIONS.full_name(settings)
        tps = [TopicPartition(topic, p) for p in range(len(ends))]
        committed = consumer.committed(tps, timeout=10)
        return all(c.offset == end or end == 0 for c, end in zip(committed, ends, strict=True))
    finally:
        consumer.close()


def end_offsets(settings: Settings) -> list[int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench-ends"})
    try:
        topic = NOTIFICATIONS.full_name(settings)
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(NOTIFICATIONS.partition_count(settings))
        ]
    finally:
        consumer.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def start_egress(settings: Settings, index: int, extra_args: list[str]) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OTAFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "OTAFLOW_MQTT_URL": settings.mqtt.url,
        "OTAFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "OTAFLOW_APP_ID": settings.app_id,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connectors.egress",
            "--client-id",
            f"{settings.app_id}-egress-{index}",
            *extra_args,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run(
    n: int,
    settings: Settings,
    *,
    processes: int = 1,
    qos: int = 1,
    egress_args: list[str] | None = None,
    timeout_s: float = 600,
) -> dict[str, Any]:
    """One benchmark run on a fresh topic; returns its figures (see the module doc)."""
    settings = fresh_settings(settings)
    ensure_topics(settings.kafka_bootstrap, settings, [NOTIFICATIONS, DEAD_LETTERS, BATCHES])
    pk = f"pk{uuid.uuid4().hex[:8]}"
    produce_s = produce(settings, pk, n)
    ends = end_offsets(settings)
    assert sum(ends) == n, f"expected {n} records, the topic has {sum(ends)}"
    subscriber = Subscriber(settings, pk, qos)
    egresses: list[subprocess.Popen[bytes]] = []
    try:
        subscriber.wait_subscribed()
        started = time.monotonic()
        egresses = [start_egress(settings, i, egress_args or []) for i in range(processes)]
        deadline = started + timeout_s
        while subscriber.unique() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out: {subscriber.unique()} of {n} offers received")
            for proc in egresses:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                    raise RuntimeError(f"an egress process exited ({proc.returncode}): {err}")
            time.sleep(0.02)
        received_at = time.monotonic()
        while not committed_to_end(settings, f"{settings.app_id}-egress", ends):
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for the offsets to be committed")
            time.sleep(0.05)
        committed_at = time.monotonic()
        cpu = sum(cpu_seconds(p.pid) for p in egresses)
    finally:
        for proc in egresses:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in egresses:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subscriber.close()
    assert subscriber.first is not None and subscriber.last is not None
    span = subscriber.last - subscriber.first
    # Wall clock of the subscriber's stamps vs. monotonic here: both are seconds; the
    # commit figure uses the monotonic clock from the first offer's arrival, estimated.
    first_offer_monotonic = received_at - span
    return {
        "n": n,
        "processes": processes,
        "subscriber_qos": qos,
        "egress_args": egress_args or [],
        "produce_s": round(produce_s, 3),
        "startup_s": round(first_offer_monotonic - started, 3),
        "delivered": subscriber.lines,
        "unique": subscriber.unique(),
        "duplicates": subscriber.lines - subscriber.unique(),
        "span_s": round(span, 3),
        "rate": round((n - 1) / span, 1) if span > 0 else None,
        "committed_rate": round(n / (committed_at - first_offer_monotonic), 1),
        "egress_cpu_s": round(cpu, 2),
        "egress_cpu_us_per_notification": round(cpu / n * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="egress connector throughput")
    parser.add_argument("--n", type=int, default=100_000, help="notifications per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="egress processes, one group")
    parser.add_argument("--qos", type=int, default=1, choices=(0, 1), help="subscriber QoS")
    parser.add_argument(
        "--egress-arg",
        action="append",
        default=[],
        help="extra argument for connectors.egress (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the runs and median here")
    args = parser.parse_args(argv)
    from otaflow import devstack

    stack = devstack.up()
    base = dataclasses.replace(
        config.load(),
        kafka_bootstrap=stack.kafka_bootstrap,
        mqtt=config.MqttAddress.parse(stack.mqtt_url),
    )
    runs = []
    for i in range(args.runs):
        result = run(
            args.n, base, processes=args.processes, qos=args.qos, egress_args=args.egress_arg
        )
        runs.append(result)
        print(
            f"run {i + 1}: {result['rate']:>9,.0f} notifications/s delivered, "
            f"{result['committed_rate']:>9,.0f}/s committed, "
            f"{result['egress_cpu_us_per_notification']:.0f} µs egress CPU each, "
            f"{result['duplicates']} duplicates",
            flush=True,
        )
    median = statistics.median(r["rate"] for r in runs)
    median_committed = statistics.median(r["committed_rate"] for r in runs)
    print(
        f"egress, {args.processes} process(es), n={args.n:,}: median {median:,.0f} "
        f"notifications/s delivered ({median_committed:,.0f}/s to committed offsets)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"runs": runs, "median_rate": median, "median_committed": median_committed})
        )


if __name__ == "__main__":
    main()
