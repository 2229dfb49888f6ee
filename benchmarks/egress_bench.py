"""Egress throughput: ``Notification`` records on Kafka -> QoS 1 offers on Mosquitto.

One run::

    1. a fresh topic prefix; n notifications produced onto its ``ota.notifications``
       (9 in 10 HTTPS with a signed URL, 1 in 10 MQTT download; one device each, so
       every offer has its own MQTT topic and a subscriber can count distinct ones);
    2. ``mosquitto_sub`` (the broker's own C client, so the instrument costs little
       CPU) subscribes to the product's upgrade topics (QoS 1 by default, as devices
       do) and prints each topic; a reader thread counts distinct ones;
    3. ``processes`` egress connectors start (``python -m connectors.egress``, one
       consumer group) and drain the backlog;
    4. every 20 ms the group's committed offsets (committed only after the broker's
       PUBACK) and the subscriber's count are sampled, until both reach n.

Figures: ``rate`` = notifications/s PUBACKed and committed, from 10% to 90% of n (the
steady state, without the consumer's start-up or the tail); ``received_rate`` = the
same for offers the subscriber received; CPU per notification of the egress
processes, the broker and the subscriber (all on this machine). ``main()`` prints
each run and the median of ``--runs`` runs.

``--publish-only paho|qos1`` measures the MQTT client alone (QoS 1 publish + PUBACK,
no Kafka): why the egress has its own publish-only client.

CLI: ``python -m benchmarks.egress_bench [--n 100000] [--runs 3] [--processes 1]
[--qos 1] [--egress-repo PATH] [--publish-only paho|qos1] [--json PATH]``.
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
from otaflow.device_keys import device_key
from otaflow.kafka_partitions import CONFLUENT_PARTITIONER
from otaflow.topics import (
    BATCHES,
    DEAD_LETTERS,
    NOTIFICATIONS,
    delete_deployment_topics,
    ensure_topics,
    scratch_settings,
)

REPO = Path(__file__).resolve().parent.parent
PROBE_DEVICE = "__probe__"


def fresh_settings(base: Settings) -> Settings:
    return scratch_settings(base, "bench-egress")


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
        # One release instant: the egress sends offers with their event times' spacing
        # (connectors.offer_pacing), so a backlog of one instant measures its throughput.
        "event_time": 1_700_000_000_000,
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
    """``mosquitto_sub`` on the product's upgrade topics (printing only the topic),
    counted from a reader thread."""

    def __init__(self, settings: Settings, pk: str, qos: int) -> None:
        binary = shutil.which("mosquitto_sub")
        if binary is None:
            raise RuntimeError("mosquitto_sub not found (apt-get install mosquitto-clients)")
        self.settings = settings
        self.pk = pk
        self.lines = 0
        self.topics: set[str] = set()
        self.probed = threading.Event()
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [
                binary,
                "-h",
                settings.mqtt.host,
                "-p",
                str(settings.mqtt.port),
                *_login(settings),
                "-i",
                f"{settings.app_id}-sub",
                "-q",
                str(qos),
                "-t",
                f"/ota/device/upgrade/{pk}/+",
                "-F",
                "%t",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            topic = raw.decode().rstrip("\n")
            if topic.endswith("/" + PROBE_DEVICE):
                self.probed.set()
                continue
            with self._lock:
                self.lines += 1
                self.topics.add(topic)

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
                    *_login(self.settings),
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


class CommitWatcher:
    """The egress group's committed offsets, summed over the topic's partitions."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.app_id}-egress"}
        )
        topic = NOTIFICATIONS.full_name(settings)
        self.partitions = [
            TopicPartition(topic, p) for p in range(NOTIFICATIONS.partition_count(settings))
        ]

    def committed(self) -> int:
        return sum(max(tp.offset, 0) for tp in self.consumer.committed(self.partitions, timeout=10))

    def close(self) -> None:
        self.consumer.close()


def rate_between(samples: list[tuple[float, int]], n: int, low: float, high: float) -> float | None:
    """Records/s between the first samples at ``low`` and ``high`` fractions of n: the
    steady state, without the consumer's start or the tail."""
    t_low = next((t for t, c in samples if c >= low * n), None)
    t_high = next((t for t, c in samples if c >= high * n), None)
    if t_low is None or t_high is None or t_high <= t_low:
        return None
    c_low = next(c for t, c in samples if t == t_low)
    c_high = next(c for t, c in samples if t == t_high)
    return (c_high - c_low) / (t_high - t_low)


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


def _login(settings: Settings) -> list[str]:
    """mosquitto_sub/pub options for a broker that wants a login (the service user)."""
    mqtt = settings.mqtt
    if mqtt.username is None:
        return []
    return ["-u", mqtt.username, *(["-P", mqtt.password] if mqtt.password is not None else [])]


def broker_pid(settings: Settings) -> int | None:
    """The Mosquitto serving ``settings.mqtt`` (found by the port in its config), if local."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "mosquitto":
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        conf = next((a for i, a in enumerate(args) if i and args[i - 1] == b"-c"), None)
        try:
            text = Path(conf.decode()).read_text() if conf else ""
        except OSError:
            continue
        if f"listener {settings.mqtt.port}" in text:
            return int(entry.name)
    return None


def start_egress(
    settings: Settings, index: int, extra_args: list[str], repo: Path = REPO
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "OTAFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "OTAFLOW_MQTT_URL": settings.mqtt.connect_url,
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
        cwd=repo,
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
    egress_repo: Path = REPO,
    timeout_s: float = 600,
) -> dict[str, Any]:
    """One benchmark run on a fresh topic; returns its figures (see the module doc)."""
    settings = fresh_settings(settings)
    ensure_topics(settings.kafka_bootstrap, settings, [NOTIFICATIONS, DEAD_LETTERS, BATCHES])
    pk = f"pk{uuid.uuid4().hex[:8]}"
    produce_s = produce(settings, pk, n)
    ends = end_offsets(settings)
    assert sum(ends) == n, f"expected {n} records, the topic has {sum(ends)}"
    subscriber: Subscriber | None = None
    watcher: CommitWatcher | None = None
    egresses: list[subprocess.Popen[bytes]] = []
    broker = broker_pid(settings)
    acked: list[tuple[float, int]] = []  # (time, committed offsets): PUBACKed, in order
    received: list[tuple[float, int]] = []  # (time, distinct offers the subscriber got)
    try:
        # Inside the try: a run that cannot start its instruments still deletes its topics.
        subscriber = Subscriber(settings, pk, qos)
        watcher = CommitWatcher(settings)
        subscriber.wait_subscribed()
        broker_cpu = cpu_seconds(broker) if broker else 0.0
        subscriber_cpu = cpu_seconds(subscriber.proc.pid)
        started = time.monotonic()
        egresses = [
            start_egress(settings, i, egress_args or [], egress_repo) for i in range(processes)
        ]
        deadline = started + timeout_s
        while not acked or acked[-1][1] < n or received[-1][1] < n:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(
                    f"timed out: {acked[-1][1] if acked else 0} of {n} committed, "
                    f"{subscriber.unique()} received"
                )
            for proc in egresses:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                    raise RuntimeError(f"an egress process exited ({proc.returncode}): {err}")
            acked.append((now, watcher.committed()))
            received.append((now, subscriber.unique()))
            time.sleep(0.02)
        broker_cpu = cpu_seconds(broker) - broker_cpu if broker else 0.0
        subscriber_cpu = cpu_seconds(subscriber.proc.pid) - subscriber_cpu
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
        if subscriber is not None:
            subscriber.close()
        if watcher is not None:
            watcher.close()
        delete_deployment_topics(settings.kafka_bootstrap, settings)
    first_ack = next(t for t, c in acked if c > 0)
    acked_rate = rate_between(acked, n, 0.1, 0.9)
    received_rate = rate_between(received, n, 0.1, 0.9)
    return {
        "n": n,
        "processes": processes,
        "subscriber_qos": qos,
        "egress_args": egress_args or [],
        "produce_s": round(produce_s, 3),
        "first_commit_s": round(first_ack - started, 3),
        "all_committed_s": round(acked[-1][0] - started, 3),
        # Steady state (10% -> 90% of n): offsets committed after PUBACK, and offers the
        # subscriber received.
        "rate": round(acked_rate, 1) if acked_rate else None,
        "received_rate": round(received_rate, 1) if received_rate else None,
        "delivered": subscriber.lines,
        "unique": subscriber.unique(),
        "duplicates": subscriber.lines - subscriber.unique(),
        "egress_cpu_s": round(cpu, 2),
        "egress_cpu_us_per_notification": round(cpu / n * 1e6, 1),
        # The broker's and mosquitto_sub's share of the machine over the same run.
        "broker_cpu_us_per_notification": round(broker_cpu / n * 1e6, 1) if broker else None,
        "subscriber_cpu_us_per_notification": round(subscriber_cpu / n * 1e6, 1),
    }


def publish_only(n: int, settings: Settings, client: str, window: int = 1000) -> dict[str, Any]:
    """The MQTT client alone: n QoS 1 publishes of an offer-sized payload, at most
    ``window`` unacknowledged, to distinct topics nobody subscribes to. ``client`` is
    ``"paho"`` (paho-mqtt driven from this thread through its external-loop API, its
    in-flight limit off) or ``"qos1"`` (:class:`connectors.mqtt_publisher.QoS1Publisher`).
    Returns messages/s and this process's CPU per message."""
    import resource
    import select

    payload = json.dumps(
        {"code": "1000", "data": {"url": "x" * 160, "sign": "ab" * 32}, "id": 1}
    ).encode()
    topics = [f"/ota/device/upgrade/pkbench/dev-{i}" for i in range(n)]
    acked = 0

    def on_ack(*_: Any) -> None:
        nonlocal acked
        acked += 1

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    host, port = settings.mqtt.host, settings.mqtt.port
    sent = 0
    if client == "paho":
        import paho.mqtt.client as mqtt

        paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{os.getpid()}")
        paho.max_inflight_messages_set(0)
        if settings.mqtt.username is not None:  # the service login, like the egress
            paho.username_pw_set(settings.mqtt.username, settings.mqtt.password)
        paho.on_publish = on_ack
        paho.on_socket_register_write = lambda *_: None
        paho.on_socket_unregister_write = lambda *_: None
        paho.connect(host, port, 30)
        sock = paho.socket()
        assert sock is not None
        while not paho.is_connected():
            paho.loop_write()
            select.select([sock], [], [], 0.1)
            paho.loop_read()
        started, cpu_started = time.monotonic(), cpu()
        while acked < n:
            while sent < n and sent - acked < window:
                paho.publish(topics[sent], payload, qos=1)
                sent += 1
            if paho.want_write():
                paho.loop_write()
            select.select([sock], [], [], 0.05)
            paho.loop_read()
        elapsed, used = time.monotonic() - started, cpu() - cpu_started
        paho.disconnect()
        paho.loop_write()
    elif client == "qos1":
        from connectors.mqtt_publisher import QoS1Publisher, check_topic

        pub = QoS1Publisher(
            f"bench-qos1-{os.getpid()}",
            host,
            port,
            username=settings.mqtt.username,
            password=settings.mqtt.password,
        )
        pub.on_ack = on_ack
        pub.connect()
        while not pub.connected:
            pub.service(0.1)
        started, cpu_started = time.monotonic(), cpu()
        while acked < n:
            while sent < n and sent - acked < window:
                pub.publish(check_topic(topics[sent]), payload)
                sent += 1
            pub.flush()
            pub.service(0.05)
        elapsed, used = time.monotonic() - started, cpu() - cpu_started
        pub.disconnect()
    else:
        raise ValueError(f"unknown client {client!r}")
    return {
        "client": client,
        "n": n,
        "rate": round(n / elapsed, 1),
        "cpu_us_per_message": round(used / n * 1e6, 1),
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
    parser.add_argument(
        "--egress-repo",
        type=Path,
        default=REPO,
        help="run the egress of another checkout (e.g. an older commit, to compare)",
    )
    parser.add_argument(
        "--publish-only",
        choices=("paho", "qos1"),
        help="measure only the MQTT client (QoS 1 publish + PUBACK), without Kafka",
    )
    parser.add_argument("--json", type=Path, help="also write the runs and median here")
    args = parser.parse_args(argv)
    from otaflow.dev import devstack

    stack = devstack.up()
    base = dataclasses.replace(
        config.load(),
        kafka_bootstrap=stack.kafka_bootstrap,
        mqtt=config.MqttAddress.parse(stack.mqtt_url),
    )
    if args.publish_only:
        results = [publish_only(args.n, base, args.publish_only) for _ in range(args.runs)]
        for i, r in enumerate(results):
            print(f"run {i + 1}: {r['rate']:,.0f} msg/s, {r['cpu_us_per_message']} µs CPU each")
        print(
            f"{args.publish_only}, QoS 1 publish + PUBACK, n={args.n:,}: median "
            f"{statistics.median(r['rate'] for r in results):,.0f} msg/s, "
            f"{statistics.median(r['cpu_us_per_message'] for r in results)} µs CPU per message"
        )
        return
    runs = []
    for i in range(args.runs):
        result = run(
            args.n,
            base,
            processes=args.processes,
            qos=args.qos,
            egress_args=args.egress_arg,
            egress_repo=args.egress_repo,
        )
        runs.append(result)
        print(
            f"run {i + 1}: {result['rate'] or 0:>9,.0f} notifications/s PUBACKed+committed, "
            f"{result['received_rate'] or 0:>9,.0f}/s received, "
            f"CPU each: egress {result['egress_cpu_us_per_notification']:.0f} µs, "
            f"broker {result['broker_cpu_us_per_notification']} µs, "
            f"subscriber {result['subscriber_cpu_us_per_notification']:.0f} µs; "
            f"{result['duplicates']} duplicates",
            flush=True,
        )
    median = statistics.median(r["rate"] or 0 for r in runs)
    median_received = statistics.median(r["received_rate"] or 0 for r in runs)
    print(
        f"egress, {args.processes} process(es), n={args.n:,}: median {median:,.0f} "
        f"notifications/s PUBACKed and committed ({median_received:,.0f}/s received by "
        f"the subscriber, QoS {args.qos})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"runs": runs, "median_rate": median, "median_received": median_received})
        )


if __name__ == "__main__":
    main()
