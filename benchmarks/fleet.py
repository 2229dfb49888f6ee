"""A simulated device fleet speaking the platform's OTA protocol over MQTT.

Many devices share a few MQTT connections (the broker routes by topic, so one
connection can speak for thousands of devices): each device reports its version,
and when a push arrives it reports progress and then its new version, the way the
official device SDKs do. Some devices can be told to fail (``fail_ratio``), and a
sample can download the package from the signed URL and check its sign.

Used by ``otaflow demo`` and the benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass
class FleetStats:
    pushes: int = 0
    duplicates: int = 0
    succeeded: int = 0
    failed: int = 0
    downloads_ok: int = 0
    downloads_bad: int = 0
    by_device: Counter[str] = field(default_factory=Counter)


class SimulatedFleet:
    def __init__(
        self,
        host: str,
        port: int,
        product_key: str,
        device_names: Sequence[str],
        *,
        version: str = "1.0",
        connections: int = 4,
        fail_ratio: float = 0.0,
        download_every: int = 0,
    ) -> None:
        self.host, self.port = host, port
        self.product_key = product_key
        self.device_names = list(device_names)
        self.version = version
        self.fail_ratio = fail_ratio
        self.download_every = download_every
        self.stats = FleetStats()
        self._seen_tasks: set[str] = set()
        self._lock = threading.Lock()
        self._work: queue.Queue[tuple[str, dict[str, object]] | None] = queue.Queue()
        self._clients: list[mqtt.Client] = []
        self._ready = threading.Semaphore(0)
        self._n = max(1, min(connections, len(self.device_names)))
        self._worker = threading.Thread(target=self._answer, name="fleet-answers", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        for i in range(self._n):
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"fleet-{self.product_key}-{i}-{time.time_ns()}",
            )
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            client.on_connect = self._on_connect
            client.on_message = self._on_message
            client.connect(self.host, self.port, keepalive=30)
            client.loop_start()
            self._clients.append(client)
        for _ in range(self._n):
            if not self._ready.acquire(timeout=timeout):
                raise TimeoutError("fleet connections not ready")
        self._worker.start()

    def stop(self) -> None:
        self._work.put(None)
        for client in self._clients:
            client.disconnect()
            client.loop_stop()

    def _client_for(self, device_name: str) -> mqtt.Client:
        return self._clients[zlib.crc32(device_name.encode()) % len(self._clients)]

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object = None
    ) -> None:
        # A shared subscription: each push reaches exactly one of the fleet's connections.
        # (The filter itself starts with '/', hence the '//' after the group name.)
        share = f"$share/fleet-{self.product_key}/"
        client.subscribe(f"{share}/ota/device/upgrade/{self.product_key}/+", qos=1)
        self._ready.release()

    # -- device behaviour --------------------------------------------------------------------

    def report_versions(self) -> None:
        """Every device reports its current version (as devices do after connecting)."""
        for i, dn in enumerate(self.device_names):
            payload = {"id": str(i), "params": {"version": self.version, "module": "default"}}
            self._client_for(dn).publish(
                f"/ota/device/inform/{self.product_key}/{dn}", json.dumps(payload), qos=1
            )

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        dn = msg.topic.rsplit("/", 1)[-1]
        try:
            push = json.loads(msg.payload)
        except ValueError:
            return
        self._work.put((dn, push))

    def _answer(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            dn, push = item
            data = push.get("data")
            if not isinstance(data, dict):
                continue
            task_id = str(data.get("taskId", ""))
            with self._lock:
                self.stats.pushes += 1
                self.stats.by_device[dn] += 1
                if task_id in self._seen_tasks:
                    self.stats.duplicates += 1
                    continue  # the notification carries its task id: a repeat is ignored
                self._seen_tasks.add(task_id)
                n = self.stats.pushes
            client = self._client_for(dn)
            if self.download_every and n % self.download_every == 0:
                self._download(data)
            progress = f"/ota/device/progress/{self.product_key}/{dn}"
            if self.fail_ratio and (zlib.crc32(dn.encode()) % 1000) < self.fail_ratio * 1000:
                step = {"id": "1", "params": {"step": "-2", "desc": "simulated HTTP 404"}}
                client.publish(progress, json.dumps(step), qos=1)
                with self._lock:
                    self.stats.failed += 1
                continue
            for pct in (30, 100):
                step = {"id": "1", "params": {"step": str(pct), "desc": ""}}
                client.publish(progress, json.dumps(step), qos=1)
            inform = {"id": "2", "params": {"version": data.get("version"), "module": "default"}}
            client.publish(f"/ota/device/inform/{self.product_key}/{dn}", json.dumps(inform), qos=1)
            with self._lock:
                self.stats.succeeded += 1

    def _download(self, data: dict[str, object]) -> None:
        url = data.get("url")
        if not isinstance(url, str):
            return
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read()
        except OSError:
            with self._lock:
                self.stats.downloads_bad += 1
            return
        ok = hashlib.sha256(body).hexdigest() == data.get("sign")
        with self._lock:
            if ok:
                self.stats.downloads_ok += 1
            else:
                self.stats.downloads_bad += 1
