"""``otaflow demo``: the main job, end to end, on the real Kafka and Mosquitto.

Starts the dev stack and otaflow's processes in a fresh, isolated deployment,
registers a package, creates a dynamic batch 1.0 -> 2.0, connects 1,000 simulated
devices over MQTT, and shows the rollout live until every task has ended, then a
summary. A few devices are made to fail, to show what failure looks like.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import socket
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from benchmarks.fleet import SimulatedFleet
from otaflow import config, membership, topics
from otaflow.codec import codec
from otaflow.control.client import ControlClient
from otaflow.dev import devstack
from otaflow.kafka_security import kafka_client_config
from otaflow.packages import PackageStore, package_dir
from otaflow.processes import ProcessGroup

FINAL = ("SUCCEEDED", "FAILED", "CANCELED")
STATUSES = ("QUEUED", "NOTIFIED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "CANCELED")


class TaskBoard:
    """Latest status of every task, read from the task-status topic (what users consume)."""

    def __init__(self, settings: config.Settings) -> None:
        self.codec = codec()
        self.status: dict[str, str] = {}
        self.desc: dict[str, str] = {}
        self.notified_at: list[int] = []
        name = topics.TASK_EVENTS.full_name(settings)
        self.consumer = Consumer(
            {
                **kafka_client_config(settings.kafka_bootstrap),
                "group.id": f"{settings.app_id}-demo-{uuid.uuid4()}",
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign(
            [
                TopicPartition(name, p, 0)
                for p in range(topics.TASK_EVENTS.partition_count(settings))
            ]
        )

    def poll(self) -> None:
        for msg in self.consumer.consume(5000, 0.1):
            value = msg.value()
            if msg.error() is None and value:
                event = self.codec.decode_as("TaskEvent", value)
                self.status[event["task_id"]] = event["status"]
                self.desc[event["task_id"]] = event["desc"]
                if event["status"] == "NOTIFIED":
                    self.notified_at.append(event["event_time"])

    def counts(self) -> Counter[str]:
        return Counter(self.status.values())

    def close(self) -> None:
        self.consumer.close()


def progress_table(board: TaskBoard, devices: int, started: float) -> Table:
    counts = board.counts()
    done = sum(counts[s] for s in FINAL)
    table = Table(title=f"otaflow demo: rollout to {devices:,} devices", show_edge=False)
    table.add_column("status")
    table.add_column("tasks", justify="right")
    table.add_column("", min_width=32)
    for status in STATUSES:
        n = counts[status]
        table.add_row(status, f"{n:,}", "█" * int(32 * n / max(devices, 1)))
    table.caption = f"{done:,}/{devices:,} finished · {time.monotonic() - started:5.1f}s"
    return table


def run(devices: int, rate: int, fail_ratio: float, timeout_s: float, keep: bool = False) -> int:
    console = Console()
    stack = devstack.up()
    base = config.load()
    # The configured ports when free, else any free ones: a demo must not fail because
    # `otaflow up` (or anything else) already serves 8080/8081.
    api_port = port_or_free(base.api_port)
    package_port = port_or_free(base.package_port, avoid=api_port)
    settings = replace(
        topics.scratch_settings(base, "demo"),
        kafka_bootstrap=stack.kafka_bootstrap,
        mqtt=config.MqttAddress.parse(stack.mqtt_url),
        partitions=4,
        api_port=api_port,
        package_port=package_port,
        package_base_url=f"http://127.0.0.1:{package_port}",
    )
    tag = time.strftime("%Y%m%d%H%M%S")
    log_dir = config.cache_dir() / "demo" / tag
    status = 1
    try:
        status = _run(console, stack, settings, devices, rate, fail_ratio, timeout_s, tag, log_dir)
        return status
    finally:
        if keep:
            console.print(f"topics kept under the prefix {settings.topic_prefix}")
        else:
            # A demo is a throwaway deployment: leave the broker and the disk as we found them
            # (its logs too, unless something went wrong and they are worth reading).
            topics.delete_deployment_topics(settings.kafka_bootstrap, settings)
            busy = delete_consumer_groups(settings)
            if busy:
                console.print(f"consumer groups still in use, not deleted: {', '.join(busy)}")
            shutil.rmtree(config.data_dir() / settings.app_id, ignore_errors=True)
            # The package and its facts (size, digests), kept beside the store's files.
            for root in (package_dir(), package_dir() / ".meta"):
                shutil.rmtree(root / "demo" / tag, ignore_errors=True)
            if status == 0:
                shutil.rmtree(log_dir, ignore_errors=True)
            else:
                console.print(f"logs kept in {log_dir}")


def _run(
    console: Console,
    stack: devstack.DevStack,
    settings: config.Settings,
    devices: int,
    rate: int,
    fail_ratio: float,
    timeout_s: float,
    tag: str,
    log_dir: Path,
) -> int:
    env = {
        "OTAFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "OTAFLOW_MQTT_URL": stack.mqtt_url,
        "OTAFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "OTAFLOW_APP_ID": settings.app_id,
        "OTAFLOW_PARTITIONS": str(settings.partitions),
        "OTAFLOW_ACCESS_KEYS": os.environ.get("OTAFLOW_ACCESS_KEYS", "demo:demo-secret"),
        "OTAFLOW_API_PORT": str(settings.api_port),
        "OTAFLOW_PACKAGE_PORT": str(settings.package_port),
        "OTAFLOW_PACKAGE_BASE_URL": settings.package_base_url,
    }
    topics.ensure_topics(settings.kafka_bootstrap, settings)
    console.print(
        f"[bold]otaflow demo[/] · deployment {settings.app_id} · Kafka {stack.kafka_bootstrap}"
        f" · MQTT {config.MqttAddress.parse(stack.mqtt_url).url} · logs {log_dir}"
    )
    with ProcessGroup(env, log_dir=log_dir) as group:
        for name in ("worker", "ingress", "egress", "api"):
            group.start(name)
        board = TaskBoard(settings)
        with ControlClient(settings) as control:
            payload = random.Random(7).randbytes(64 * 1024)
            store = PackageStore(settings)
            stored = store.add_bytes(f"demo/{tag}/firmware-2.0.bin", payload)
            pk = "demoProduct"
            firmware = control.call(
                "CreateOTAFirmware",
                {
                    "ProductKey": pk,
                    "FirmwareName": "demo-firmware-2_0",
                    "DestVersion": "2.0",
                    "FirmwareUrl": store.url(stored.file_path),
                    "SignMethod": "SHA256",
                    "FirmwareSign": hashlib.sha256(payload).hexdigest(),
                    "FirmwareSize": str(len(payload)),
                    "NeedToVerify": "false",
                },
                timeout=120,
            )
            if not firmware.success:
                console.print(f"[red]CreateOTAFirmware failed: {firmware.code} {firmware.message}")
                return 1
            job = control.call(
                "CreateOTADynamicUpgradeJob",
                {
                    "ProductKey": pk,
                    "FirmwareId": firmware.data["FirmwareId"],
                    "SrcVersion.1": "1.0",
                    "MaximumPerMinute": str(rate),
                    "Tag.1.Key": "campaign",
                    "Tag.1.Value": "demo",
                },
            )
            if not job.success:
                console.print(f"[red]CreateOTADynamicUpgradeJob failed: {job.code} {job.message}")
                return 1
        console.print(f"batch {job.data['JobId']}: 1.0 -> 2.0 at {rate:,} devices/minute")
        names = [f"device-{i:05d}" for i in range(devices)]
        fleet = SimulatedFleet(
            stack_host(stack),
            stack_port(stack),
            pk,
            names,
            fail_ratio=fail_ratio,
            download_every=50,
            device_key=settings.device_key,  # the broker's: each device logs in with its secret
        )
        fleet.start()
        started = time.monotonic()
        fleet.report_versions()
        deadline = started + timeout_s
        with Live(
            progress_table(board, devices, started), console=console, refresh_per_second=4
        ) as live:
            while time.monotonic() < deadline:
                board.poll()
                live.update(progress_table(board, devices, started))
                counts = board.counts()
                if sum(counts[s] for s in FINAL) >= devices:
                    break
                if group.exited():
                    console.print(f"[red]a process exited: {group.exited()} (see {log_dir})")
                    break
        elapsed = time.monotonic() - started
        fleet.stop()
        board.poll()
        summary(console, board, fleet, devices, rate, elapsed)
        board.close()
        counts = board.counts()
        return 0 if sum(counts[s] for s in FINAL) >= devices else 1


def delete_consumer_groups(settings: config.Settings) -> list[str]:
    """Delete the demo deployment's consumer groups; return those still busy at the end.

    Its processes have stopped, but a static member (worker, batcher: otaflow.membership)
    does not leave its group when it stops: the broker drops it one session timeout
    later, and only then is the group empty and deletable.
    """
    patience = 3 * membership.session_timeout_s() + 10
    _, busy = topics.delete_groups_where(
        settings.kafka_bootstrap, topics.group_owner_of(settings), patience_s=patience
    )
    return busy


def port_or_free(port: int, avoid: int | None = None) -> int:
    """``port`` if nothing listens on it (and it is not ``avoid``), else a free one."""
    if port != avoid:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free: int = probe.getsockname()[1]
        return free


def stack_host(stack: devstack.DevStack) -> str:
    return config.MqttAddress.parse(stack.mqtt_url).host


def stack_port(stack: devstack.DevStack) -> int:
    return config.MqttAddress.parse(stack.mqtt_url).port


def summary(
    console: Console,
    board: TaskBoard,
    fleet: SimulatedFleet,
    devices: int,
    rate: int,
    elapsed: float,
) -> None:
    counts = board.counts()
    reasons = Counter(board.desc[t] for t, s in board.status.items() if s == "FAILED")
    per_second: Counter[int] = Counter(t // 1000 for t in board.notified_at)
    peak = max(per_second.values(), default=0)
    table = Table(title="summary", show_header=False)
    rows: list[tuple[str, Any]] = [
        ("devices", f"{devices:,}"),
        ("tasks created", f"{len(board.status):,}"),
        ("succeeded", f"{counts['SUCCEEDED']:,}"),
        ("failed", f"{counts['FAILED']:,} " + ", ".join(f"{r!r} x{n}" for r, n in reasons.items())),
        ("unfinished", f"{devices - sum(counts[s] for s in FINAL):,}"),
        ("configured rate", f"{rate:,} devices/minute ({rate / 60:.0f}/s paced)"),
        ("peak pushes in one second", f"{peak:,}"),
        (
            "pushes received by devices",
            f"{fleet.stats.pushes:,} ({fleet.stats.duplicates} repeats)",
        ),
        (
            "packages downloaded + sign checked",
            f"{fleet.stats.downloads_ok} ok, {fleet.stats.downloads_bad} bad",
        ),
        ("wall time", f"{elapsed:.1f}s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run a rollout to simulated devices, live")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=6000, help="devices per minute (10-10,000)")
    parser.add_argument("--fail-ratio", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--keep", action="store_true", help="keep the demo's topics (deleted at the end otherwise)"
    )
    parser.set_defaults(func=lambda a: run(a.devices, a.rate, a.fail_ratio, a.timeout, a.keep))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otaflow")
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(["demo", *(argv or [])])
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
