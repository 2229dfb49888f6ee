"""Egress connector: ``Notification`` records on Kafka -> update offers on MQTT.

::

    ota.notifications --(group <app_id>-egress)--> EgressConnector --QoS 1--> Mosquitto
        PUSH        -> /ota/device/upgrade/{pk}/{dn}
        PULL_REPLY  -> /sys/{pk}/{dn}/thing/ota/firmware/get_reply
        unusable    -> ota.deadletter (source "topic/partition/offset")

The payloads are built by :func:`connectors.ota_messages.build_upgrade_message`.

No lost notification
--------------------
Auto-commit is off. Every consumed record gets an entry in its partition's window (in
offset order); the entry is *done* when the broker PUBACKs its publish (or its dead
letter is delivered). The connector commits, per partition, the offset after the
longest done prefix of the window, so a committed offset never passes a message the
broker has not acknowledged. The MQTT client keeps unacknowledged QoS 1 publishes and
sends them again (DUP) after a reconnect (the connector retries the connection after
1 s, doubling to 30 s); messages consumed while the broker is away wait in it until
the broker returns.
At-least-once: a device may get an offer twice (after a reconnect or a rebalance),
which is why ``data.taskId`` is there.

Paced by event time
-------------------
Offers go out with the spacing of their ``event_time`` (the rate agent's release
instants), shifted to wall time (:mod:`connectors.offer_pacing`): a backlog found after
a restart, a broker outage or a slow spell drains at the rates it was released at, not
as fast as the broker takes it. Offers answering device pulls are spaced to
``--pull-offers-per-minute`` (``OTAFLOW_PULL_OFFERS_PER_MINUTE``, default 10,000, per
process). Held offers count against ``max_in_flight`` and are not committed; a revoked
partition's held offers are left to its next owner.

Memory stays flat: at most ``max_in_flight`` records are between Kafka and the
broker's PUBACK. At the bound the connector waits for PUBACKs; if it stays full for a
second (broker away or slow) the consumer's partitions are paused (it keeps polling,
so the group does not evict it) and resumed at half the bound.

Throughput
----------
One thread does everything: it polls Kafka in batches, publishes, and drives the MQTT
socket itself (non-blocking; a batch of PUBLISH packets goes out in one write, every
PUBACK that has arrived is read in one ``recv``), so PUBACK callbacks run on the
thread that owns the windows, with no lock and no thread hand-off. The MQTT client is
:class:`connectors.mqtt_publisher.QoS1Publisher`, a publish-only QoS 1 client:
paho-mqtt cost ~45 µs of CPU per message on its own (see that module and
``benchmarks/egress_bench.py`` for the measurements), more than the rest of the
connector together.

Python API::

    store = PackageStore(settings)
    EgressConnector(settings, store.signed_url).run(stop_event)

CLI: ``python -m connectors.egress [--client-id ID]``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from connectors.ingress import producer_config
from connectors.mqtt_login import tls_context
from connectors.mqtt_publisher import QoS1Publisher, check_topic
from connectors.offer_pacing import DEFAULT_PULL_OFFERS_PER_MINUTE, EventTimePacer, PullSlots
from connectors.ota_messages import build_upgrade_message, needs_url
from connectors.process import serve_metrics, start_process
from otaflow import membership, metrics
from otaflow.codec import DecodeError, codec
from otaflow.config import Settings
from otaflow.kafka_security import kafka_client_config
from otaflow.topics import DEAD_LETTERS, NOTIFICATIONS

_log = logging.getLogger("otaflow.egress")

UrlSigner = Callable[[str], str]

DEFAULT_MAX_IN_FLIGHT = 1000
# MQTT packet ids are 16-bit: far fewer in flight than that, so no id is ever reused
# while an earlier message with it is still unacknowledged.
MAX_IN_FLIGHT_LIMIT = 60_000
COMMIT_INTERVAL_S = 0.2
DRAIN_TIMEOUT_S = 10.0
CONSUME_BATCH = 500
# How long consume() may wait for records: short while PUBACKs are due (they are read
# between polls), longer when there is nothing in flight.
CONSUME_WAIT_BUSY_S = 0.005
CONSUME_WAIT_IDLE_S = 0.05
KEEPALIVE_S = 30
URL_REUSE_S = 1.0
# Reconnect backoff: 1 s, doubling to 30 s, back to 1 s after a CONNACK.
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
# Full for this long: pause the partitions (a burst shorter than this just waits).
PAUSE_AFTER_S = 1.0
# On a revoke, wait at most this long for the revoked partitions' PUBACKs.
REVOKE_DRAIN_S = 2.0


def default_client_id(settings: Settings) -> str:
    return f"{settings.app_id}-egress-{socket.gethostname()}-{os.getpid()}"


@dataclass(eq=False)
class _Entry:
    partition: int
    offset: int
    done: bool = False
    orphan: bool = False  # its partition was revoked: nobody commits it any more


class EgressConnector:
    def __init__(
        self,
        settings: Settings,
        url_signer: UrlSigner,
        client_id: str | None = None,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        pull_offers_per_minute: int = DEFAULT_PULL_OFFERS_PER_MINUTE,
    ) -> None:
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT_LIMIT:
            raise ValueError(f"max_in_flight must be 1-{MAX_IN_FLIGHT_LIMIT}, got {max_in_flight}")
        self.settings = settings
        self.url_signer = url_signer
        self.client_id = client_id or default_client_id(settings)
        self.max_in_flight = max_in_flight
        self.topic = NOTIFICATIONS.full_name(settings)
        self.dead_letter_topic = DEAD_LETTERS.full_name(settings)
        self.group_id = f"{settings.app_id}-egress"
        # Set while connected to the broker.
        self.ready = threading.Event()
        # Counters: publishes acknowledged by the broker, records sent to dead letters.
        self.published = 0
        self.dead_lettered = 0
        self.peak_in_flight = 0
        self._stopping = False
        self._codec = codec()
        self._windows: dict[int, deque[_Entry]] = {}
        self._by_mid: dict[int, _Entry] = {}
        # Per partition: the offset to commit next, once the commit is due.
        self._to_commit: dict[int, int] = {}
        self._orphans = 0  # entries of revoked partitions not acknowledged yet
        self._paused = False
        self._full_since: float | None = None
        self._last_commit = 0.0
        self._consumer: Consumer | None = None
        self._client: QoS1Publisher | None = None
        self._producer: Producer | None = None
        # MQTT reconnection (backoff state).
        self._reconnect_at = 0.0
        self._reconnect_delay = RECONNECT_MIN_S
        self._urls: dict[str, tuple[str, float]] = {}
        # Offers go out with the spacing of their event times (connectors.offer_pacing):
        # a backlog after a stall keeps the rates the rate agent released it at.
        self._pacer: EventTimePacer[tuple[_Entry, bytes, bytes]] = EventTimePacer()
        self._now_ms = 0
        # Offers answering pulls: their own limit, in their own lanes (2p + 1; pushes 2p)
        # so a pull waiting for its slot never holds a push up.
        self._pull_slots = PullSlots(pull_offers_per_minute)

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        """Publish notifications until ``stop`` is set, then drain, commit and close."""
        mqtt = self.settings.mqtt
        client = QoS1Publisher(
            self.client_id,
            mqtt.host,
            mqtt.port,
            keepalive=KEEPALIVE_S,
            username=mqtt.username,
            password=mqtt.password,
            ssl_context=tls_context(mqtt),
        )
        client.on_ack = self._on_ack
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._mqtt_connect(client)
        producer = Producer(producer_config(self.settings, self.client_id))
        consumer = Consumer(
            {
                **kafka_client_config(self.settings.kafka_bootstrap),
                "group.id": self.group_id,
                "client.id": self.client_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # A dead egress's partitions move in seconds, not librdkafka's 45 s.
                **membership.librdkafka_group_settings(None, "egress"),
            }
        )
        self._consumer = consumer
        self._client, self._producer = client, producer
        consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        _log.info("egress %s: %s -> %s", self.client_id, self.topic, self.settings.mqtt.url)
        try:
            while not stop.is_set():
                self._step(consumer, producer, client)
            self._stopping = True
            self._drain(consumer, producer, client)
        finally:
            self._stopping = True
            consumer.close()
            client.disconnect()  # what is unacknowledged is published again by the next owner
            producer.flush(5)
            self._consumer = self._client = self._producer = None

    def _step(self, consumer: Consumer, producer: Producer, client: QoS1Publisher) -> None:
        producer.poll(0)
        self._now_ms = int(time.time() * 1000)
        if self._pacer and client.connected:
            for entry, topic, payload in self._pacer.due(self._now_ms):
                self._by_mid[client.publish(topic, payload)] = entry
        self._service_mqtt(client, 0)  # PUBACKs in, pending publishes out
        self._commit(consumer)
        in_flight = self.in_flight
        room = self.max_in_flight - in_flight
        now = time.monotonic()
        if room > 0:
            self._full_since = None
            if self._paused and in_flight <= self.max_in_flight // 2:
                consumer.resume(consumer.assignment())
                self._paused = False
        elif self._full_since is None:
            self._full_since = now
        elif now - self._full_since > PAUSE_AFTER_S:
            # Not a burst but a broker that is away or slow: pause, so that polling
            # (which keeps this member in the group) fetches nothing.
            consumer.pause(consumer.assignment())  # again: new assignments start unpaused
            self._paused = True
        if room <= 0 or self._paused:
            # Full: wait for PUBACKs on the MQTT socket. A short burst only skips
            # polling (cheaper than a pause/resume, which makes librdkafka drop and
            # fetch again what it had).
            self._service_mqtt(client, 0.05)
            if not self._paused:
                return
        batch = min(CONSUME_BATCH, room) if room > 0 and not self._paused else 1
        # With publishes in flight, come back soon for their PUBACKs.
        if room > 0 and not self._paused:
            timeout = CONSUME_WAIT_BUSY_S if in_flight else CONSUME_WAIT_IDLE_S
        else:
            timeout = 0
        messages = consumer.consume(num_messages=batch, timeout=timeout)
        if not messages and not self._paused:
            self._pacer.idle()  # caught up: a stall's delay ends with its backlog
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                _log.warning("egress: consumer error: %s", err)
                continue
            self._handle(msg, producer, client)
        client.flush()  # the batch's PUBLISH packets, in one write
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _drain(self, consumer: Consumer, producer: Producer, client: QoS1Publisher) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        # Held offers are not waited for: uncommitted, the next owner sends them.
        while self.in_flight > len(self._pacer) and time.monotonic() < deadline:
            producer.poll(0)
            self._service_mqtt(client, 0.02)
        self._commit(consumer, force=True, asynchronous=False)
        if self.in_flight:
            _log.warning(
                "egress %s: stopping with %d notifications unacknowledged; they "
                "will be published again",
                self.client_id,
                self.in_flight,
            )

    @property
    def paused(self) -> bool:
        """Whether consumption is paused because ``max_in_flight`` records are unacknowledged."""
        return self._paused

    @property
    def in_flight(self) -> int:
        """Records consumed whose offsets cannot be committed yet (the memory bound)."""
        return sum(len(w) for w in list(self._windows.values())) + self._orphans

    # ------------------------------------------------------------------ MQTT I/O

    def _mqtt_connect(self, client: QoS1Publisher) -> None:
        """Open the connection (or plan the next try); CONNACK arrives through ``read``."""
        self._reconnect_at = time.monotonic() + self._reconnect_delay
        delay = self._reconnect_delay
        self._reconnect_delay = min(self._reconnect_delay * 2, RECONNECT_MAX_S)
        try:
            client.connect()  # blocking TCP connect (loopback or LAN: quick)
        except OSError as exc:
            if not self._stopping:
                _log.warning(
                    "egress %s: cannot reach %s (%s); retrying in %.0f s",
                    self.client_id,
                    self.settings.mqtt.url,
                    exc,
                    delay,
                )

    def _service_mqtt(self, client: QoS1Publisher, timeout: float) -> None:
        """Read PUBACKs, write queued packets, keep alive, reconnect; wait up to ``timeout``."""
        if client.socket() is None:
            now = time.monotonic()
            if now >= self._reconnect_at and not self._stopping:
                self._mqtt_connect(client)
            elif timeout:
                time.sleep(min(timeout, max(0.0, self._reconnect_at - now)))
            return
        client.service(timeout)

    # ------------------------------------------------------------------ records

    def _handle(self, msg: Message, producer: Producer, client: QoS1Publisher) -> None:
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        entry = _Entry(partition, offset)
        window = self._windows.get(partition)
        if window is None:  # a record of a partition we were not told about: track anyway
            window = self._windows[partition] = deque()
        window.append(entry)
        raw = msg.value() or b""
        try:
            notification = self._codec.decode_as("Notification", raw)
            url, file_urls = None, None
            if needs_url(notification):
                url = self._signed_url(notification["firmware"]["file_path"])
                several = notification["firmware"].get("files") or []
                file_urls = {f["file_path"]: self._signed_url(f["file_path"]) for f in several}
            mqtt_topic, payload = build_upgrade_message(notification, url, file_urls)
            topic = check_topic(mqtt_topic)
        except (DecodeError, ValueError, KeyError, TypeError) as exc:
            self._dead_letter(producer, entry, raw, f"unusable notification: {exc}")
            return
        except Exception as exc:  # the URL signer is someone else's code
            _log.exception("egress: could not build a notification at %d/%d", partition, offset)
            self._dead_letter(producer, entry, raw, f"could not build the message: {exc!r}")
            return
        pace_ms, lane = notification["event_time"], 2 * partition
        if notification["kind"] == "PULL_REPLY" and notification.get("firmware") is not None:
            pace_ms, lane = self._pull_slots.take(pace_ms), lane + 1
        if self._pacer.offer(
            lane,
            pace_ms,
            (entry, topic, payload),
            self._now_ms,
            can_send=client.connected,
        ):
            self._by_mid[client.publish(topic, payload)] = entry

    def _signed_url(self, file_path: str) -> str:
        """The signer's URL, reused for a second: one HMAC per package per second, not per
        offer (a reused URL expires at most that second earlier than a fresh one)."""
        now = time.monotonic()
        cached = self._urls.get(file_path)
        if cached is not None and now - cached[1] < URL_REUSE_S:
            return cached[0]
        if len(self._urls) > 1000:
            self._urls.clear()
        url = self.url_signer(file_path)
        self._urls[file_path] = (url, now)
        return url

    def _dead_letter(self, producer: Producer, entry: _Entry, raw: bytes, reason: str) -> None:
        source = f"{self.topic}/{entry.partition}/{entry.offset}"
        value = self._codec.encode(
            "DeadLetter",
            {
                "source": source,
                "reason": reason,
                "raw": raw,
                "event_time": int(time.time() * 1000),
            },
        )

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None and not err.fatal():
                _log.warning("egress: dead letter for %s failed (%s); retrying", source, err)
                producer.produce(
                    self.dead_letter_topic, value, source.encode(), on_delivery=on_delivery
                )
                return
            if err is not None:
                raise KafkaException(err)
            self.dead_lettered += 1
            self._done(entry)

        producer.produce(self.dead_letter_topic, value, source.encode(), on_delivery=on_delivery)

    def _done(self, entry: _Entry) -> None:
        if entry.done:
            return
        entry.done = True
        if entry.orphan:
            self._orphans -= 1
            return
        window = self._windows.get(entry.partition)
        last = None
        while window and window[0].done:
            last = window.popleft().offset
        if last is not None:
            self._to_commit[entry.partition] = last + 1

    def _commit(
        self,
        consumer: Consumer,
        *,
        force: bool = False,
        asynchronous: bool = True,
        partitions: list[int] | None = None,
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_INTERVAL_S:
            return
        self._last_commit = now
        offsets = [
            TopicPartition(self.topic, p, self._to_commit.pop(p))
            for p in (list(self._to_commit) if partitions is None else partitions)
            if p in self._to_commit
        ]
        if not offsets:
            return
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance is under way: the next one retries
            _log.warning("egress: commit failed: %s", exc)

    # ------------------------------------------------------------------ rebalances

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._windows[tp.partition] = deque()
        if self._paused:
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Let what is in flight on these partitions be acknowledged first (PUBACKs take
        # milliseconds), so the commit covers it and the new owner does not publish it
        # again: a scale-out then costs no duplicate offers, not up to max_in_flight.
        revoked = [tp.partition for tp in partitions]
        self._drop_held(revoked)
        client, producer = self._client, self._producer
        deadline = time.monotonic() + REVOKE_DRAIN_S
        while (
            client is not None
            and client.connected
            and producer is not None
            and any(self._windows.get(p) for p in revoked)
            and time.monotonic() < deadline
        ):
            producer.poll(0)
            self._service_mqtt(client, 0.01)
        self._commit(
            consumer, force=True, asynchronous=False, partitions=[tp.partition for tp in partitions]
        )
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)

    def _drop_held(self, partitions: list[int]) -> None:
        """Forget the held offers of these partitions: never sent, never committed, so the
        partitions' next owner sends them (a held offer is always at a window's end)."""
        lanes = {2 * p for p in partitions} | {2 * p + 1 for p in partitions}
        for entry, _, _ in self._pacer.drop(lanes):
            window = self._windows.get(entry.partition)
            if window is not None and entry in window:
                window.remove(entry)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        # The new owner starts at the committed offset and publishes these again;
        # ours still in the MQTT client will be published too (at-least-once) but not committed.
        self._drop_held([tp.partition for tp in partitions])
        for tp in partitions:
            self._to_commit.pop(tp.partition, None)
            for entry in self._windows.pop(tp.partition, ()):
                if not entry.done:
                    entry.orphan = True
                    self._orphans += 1

    # ------------------------------------------------------------------ MQTT callbacks

    def _on_connect(self) -> None:
        _log.info("egress %s: connected", self.client_id)
        metrics.mqtt_connected("egress")
        self._reconnect_delay = RECONNECT_MIN_S
        self.ready.set()

    def _on_disconnect(self, reason: str) -> None:
        self.ready.clear()
        metrics.mqtt_disconnected("egress", self._stopping)
        self._reconnect_at = time.monotonic() + self._reconnect_delay
        if not self._stopping:
            _log.warning(
                "egress %s: disconnected (%s); reconnecting in %.0f s, then what was not "
                "acknowledged is published again",
                self.client_id,
                reason,
                self._reconnect_delay,
            )

    def _on_ack(self, mid: int) -> None:
        # Inside client.read(), on this connector's thread: the windows need no lock.
        entry = self._by_mid.pop(mid, None)
        if entry is None:
            _log.warning("egress: PUBACK for unknown message id %d", mid)
            return
        self.published += 1
        self._done(entry)


def fallback_url_signer(settings: Settings) -> UrlSigner:
    """Used only while ``otaflow.packages`` is absent: same URL shape, HMAC-SHA256 signed."""
    key = settings.url_signing_key.encode()

    def sign(file_path: str) -> str:
        expires = int(time.time()) + 24 * 3600
        message = f"GET\n{file_path}\n{expires}".encode()
        signature = hmac.new(key, message, hashlib.sha256).hexdigest()
        return (
            f"{settings.package_base_url}/packages/{quote(file_path)}"
            f"?Expires={expires}&Signature={signature}"
        )

    return sign


def url_signer_for(settings: Settings) -> UrlSigner:
    try:
        from otaflow.packages import PackageStore
    except ImportError:
        _log.warning("otaflow.packages not available: signing URLs with the fallback signer")
        return fallback_url_signer(settings)
    signer: UrlSigner = PackageStore(settings).signed_url
    return signer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="otaflow Kafka -> MQTT egress connector")
    parser.add_argument("--client-id", help="MQTT client id (default: unique per process)")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT)
    parser.add_argument(
        "--pull-offers-per-minute",
        type=int,
        default=int(
            os.environ.get("OTAFLOW_PULL_OFFERS_PER_MINUTE", DEFAULT_PULL_OFFERS_PER_MINUTE)
        ),
        help="offers answering device pulls, per minute and egress process (docs/edge.md)",
    )
    args = parser.parse_args(argv)
    settings, stop = start_process([NOTIFICATIONS, DEAD_LETTERS], "egress")
    connector = EgressConnector(
        settings,
        url_signer_for(settings),
        client_id=args.client_id,
        max_in_flight=args.max_in_flight,
        pull_offers_per_minute=args.pull_offers_per_minute,
    )
    counts = {
        "otaflow_mqtt_published": (
            "Update offers the broker acknowledged",
            lambda: connector.published,
        ),
        "otaflow_egress_dead_lettered": (
            "Notifications sent to dead letters",
            lambda: connector.dead_lettered,
        ),
    }
    serve_metrics(settings, "egress", connector.ready.is_set, counts, lag_of=connector.group_id)
    connector.run(stop)


if __name__ == "__main__":
    main()
