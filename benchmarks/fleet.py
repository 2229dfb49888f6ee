"""A simulated device fleet speaking the platform's OTA protocol over MQTT.

Each device has its own MQTT connection and logs in the platform's way, as the
official device SDK does (client id, ``dn&pk``, HMAC over its DeviceSecret, derived
from the deployment's device key: ``otaflow.edge.credentials``); the broker lets it use
its own topics only. Each device reports its version, and when a push arrives it
reports progress and then its new version, the way the official device SDKs do.
Some devices can be told to fail (``fail_ratio``), and a sample can download the
package from the signed URL and check its sign.

Used by ``otaflow demo`` and the benchmarks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import selectors
import socket
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from otaflow.config import DEV_DEVICE_KEY
from otaflow.edge.credentials import device_login, device_secret


@dataclass
class FleetStats:
    pushes: int = 0
    duplicates: int = 0
    succeeded: int = 0
    failed: int = 0
    downloads_ok: int = 0
    downloads_bad: int = 0
    by_device: Counter[str] = field(default_factory=Counter)


class ClientLoop:
    """Drives many paho clients from one thread (epoll), not a network thread each:
    a thousand devices are a thousand connections.

    Every change to the selector happens on the loop's thread; other threads queue it
    (``_call``) and wake the loop. Which events a socket waits for is worked out from
    the client itself (``want_write``), so a publish from another thread is never
    left unsent.
    """

    MISC_INTERVAL_S = 1.0

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._ops: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._clients: dict[mqtt.Client, Any] = {}
        self._stopping = False
        self._shut = False
        self._thread = threading.Thread(target=self._run, name="fleet-mqtt", daemon=True)
        self._thread.start()

    def add(self, client: mqtt.Client) -> None:
        """Before ``client.connect``: its socket is then served by this loop."""
        client.on_socket_open = lambda c, _u, sock: self._call(lambda: self._opened(c, sock))
        client.on_socket_close = lambda c, _u, sock: self._call(lambda: self._closed(c))
        client.on_socket_register_write = lambda c, _u, _s: self._call(lambda: self._update(c))
        client.on_socket_unregister_write = lambda c, _u, _s: self._call(lambda: self._update(c))

    def stop(self) -> None:
        self._call(self._stop)
        self._thread.join(timeout=10)
        # A client closes its socket again when it is garbage-collected: nothing to do.
        self._shut = True
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _call(self, op: Callable[[], None]) -> None:
        if self._shut:
            return
        with self._lock:
            self._ops.append(op)
        if threading.current_thread() is not self._thread:
            with contextlib.suppress(BlockingIOError):  # else the loop is awake already
                self._wake_w.send(b"x")

    def _opened(self, client: mqtt.Client, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            # The fd of a socket closed before its close was handled here, reused.
            stale = self._selector.get_key(sock.fileno())
            self._selector.unregister(sock.fileno())
            if stale.data is not None:
                self._clients.pop(stale.data, None)
        self._clients[client] = sock
        self._selector.register(sock, selectors.EVENT_READ, client)
        self._update(client)

    def _closed(self, client: mqtt.Client) -> None:
        sock = self._clients.pop(client, None)
        if sock is not None:
            # OSError: the socket is closed already (paho closes it before telling us).
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)

    def _update(self, client: mqtt.Client) -> None:
        sock = self._clients.get(client)
        if sock is None:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.want_write() else 0)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.modify(sock, events, client)

    def _stop(self) -> None:
        self._stopping = True

    def _run(self) -> None:
        next_misc = time.monotonic() + self.MISC_INTERVAL_S
        while not self._stopping:
            with self._lock:
                ops, self._ops = self._ops, []
            for op in ops:
                op()
            if self._stopping:
                break
            for key, events in self._selector.select(timeout=0.2):
                client = key.data
                if client is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                if events & selectors.EVENT_READ:
                    client.loop_read()
                if events & selectors.EVENT_WRITE:
                    client.loop_write()
                self._update(client)
            if time.monotonic() >= next_misc:
                # Keepalive pings and retries; also a safety net for the write interest.
                for client in list(self._clients):
                    client.loop_misc()
                    self._update(client)
                next_misc = time.monotonic() + self.MISC_INTERVAL_S


class FleetLoginRefused(RuntimeError):
    """The broker refused a simulated device's login (wrong device key?)."""


class SimulatedFleet:
    def __init__(
        self,
        host: str,
        port: int,
        product_key: str,
        device_names: Sequence[str],
        *,
        version: str = "1.0",
        fail_ratio: float = 0.0,
        download_every: int = 0,
        device_key: str = DEV_DEVICE_KEY,
    ) -> None:
        self.host, self.port = host, port
        self.product_key = product_key
        self.device_names = list(device_names)
        self.version = version
        self.fail_ratio = fail_ratio
        self.download_every = download_every
        self.device_key = device_key
        self.stats = FleetStats()
        self._seen_tasks: set[str] = set()
        self._lock = threading.Lock()
        self._work: queue.Queue[tuple[str, dict[str, object]] | None] = queue.Queue()
        self._clients: dict[str, mqtt.Client] = {}
        self._ready = threading.Semaphore(0)
        self._refused: list[str] = []
        self._loop: ClientLoop | None = None
        self._worker = threading.Thread(target=self._answer, name="fleet-answers", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Every device connects, logs in and subscribes to its own upgrade topic (an offer
        published before the subscription would be lost, so this waits for every SUBACK)."""
        loop = self._loop = ClientLoop()
        for dn in self.device_names:
            secret = device_secret(self.device_key, self.product_key, dn)
            login = device_login(self.product_key, dn, secret)
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=login.client_id)
            client.user_data_set(dn)
            client.username_pw_set(login.username, login.password)
            client.max_inflight_messages_set(100)
            client.max_queued_messages_set(0)
            client.on_connect = self._on_connect
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
            loop.add(client)
            client.connect(self.host, self.port, keepalive=60)
            self._clients[dn] = client
        deadline = time.monotonic() + timeout
        for _ in self.device_names:
            if not self._ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError("fleet devices not connected and subscribed in time")
            if self._refused:
                raise FleetLoginRefused(
                    f"the broker refused {len(self._refused)} device(s), e.g. "
                    f"{self._refused[0]}: is the fleet's device key the broker's?"
                )
        self._worker.start()

    def stop(self) -> None:
        self._work.put(None)
        for client in self._clients.values():
            client.disconnect()
        if self._loop is not None:
            # Let the DISCONNECTs go out (the broker then reports each device offline).
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(
                c.want_write() for c in self._clients.values()
            ):
                time.sleep(0.05)
            self._loop.stop()

    def _client_for(self, device_name: str) -> mqtt.Client:
        return self._clients[device_name]

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object = None
    ) -> None:
        if getattr(rc, "is_failure", False):
            self._refused.append(f"{userdata} ({rc})")
            self._ready.release()
            return
        client.subscribe(f"/ota/device/upgrade/{self.product_key}/{userdata}", qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, *rest: object) -> None:
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
