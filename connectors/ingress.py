"""Ingress connector: device OTA messages on MQTT -> ``DeviceReport`` records on Kafka.

One process (scale out by running more; they share the work through the MQTT shared
subscription ``$share/<group>/...``)::

    devices --QoS 1--> Mosquitto --$share/otaflow-ingress/...--> IngressConnector
        --> ota.device.reports  (DeviceReport, key productKey/deviceName)
        --> ota.deadletter      (DeadLetter, key = MQTT topic) for malformed payloads

No lost report
--------------
The MQTT client runs with ``manual_ack=True`` (paho-mqtt 2). A QoS 1 message is
PUBACKed only from the Kafka delivery report of the record made from it (the report,
or its dead letter), so a crash at any point leaves the message unacknowledged in the
broker session, which redelivers it when the connector comes back with the same
client id (``clean_start=False`` plus a session expiry interval: MQTT 5). Records may
then be written twice (ingress is at-least-once): consumers must tolerate a repeated
report, which carries the device's ``message_id``.

PUBACKs are only valid on the connection that received the message: each message
remembers the connection generation it arrived on, and an ack for an older
generation is dropped (the broker resends that message on the new connection). The
broker never sends more than ``max_in_flight`` unacknowledged messages (MQTT 5
Receive Maximum), which bounds memory and the producer queue.

On ``stop`` (a restart or a deploy): new messages are left unacknowledged, what is
already on its way to Kafka is delivered and acknowledged, and the connector
disconnects keeping its session and subscriptions, so the broker queues this
member's share until it is back (same client id) and nothing is lost in between.
With ``leave_on_stop=True`` (scaling down for good): unsubscribe, so the share group
stops routing here, forward everything still arriving until quiet, then end the
session if everything received was acknowledged (otherwise keep it, so nothing is
lost). Mosquitto (2.0) does route a share to a disconnected member whose session
lives (checked), which is why a member that will not come back must leave: its
queued share would otherwise wait, then vanish with the session.

Python API::

    connector = IngressConnector(config.load(), client_id="otaflow-ingress-1")
    connector.run(stop_event)          # blocks until stop_event is set

CLI: ``python -m connectors.ingress [--client-id ID] [--share-group NAME] [--leave]``.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, Message, Producer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from connectors.device_json import MAX_PAYLOAD_BYTES, MalformedPayload
from connectors.mqtt_login import configure_paho
from connectors.ota_messages import parse_report
from connectors.presence import STATUS_TOPIC_FILTER, is_status_topic, parse_status
from connectors.process import serve_metrics, start_process
from otaflow import instances, metrics
from otaflow.codec import codec
from otaflow.config import Settings
from otaflow.device_keys import device_key
from otaflow.kafka_partitions import CONFLUENT_PARTITIONER
from otaflow.kafka_security import kafka_client_config
from otaflow.topics import DEAD_LETTERS, DEVICE_REPORTS

_log = logging.getLogger("otaflow.ingress")

# '#' and the extra-level filter also bring topics whose device name (or product key)
# holds a '/', so they reach the dead-letter topic with a reason instead of vanishing.
TOPIC_FILTERS = (
    "/ota/device/inform/#",
    "/ota/device/progress/#",
    "/sys/+/+/thing/ota/firmware/get",
    "/sys/+/+/+/thing/ota/firmware/get",
)
# Dead letters keep the raw payload whole up to this size (Kafka's default record
# limit is 1 MiB); a bigger payload is cut and the reason says so.
MAX_DEAD_LETTER_RAW = 256 * 1024
DEFAULT_MAX_IN_FLIGHT = 1000
# MQTT packet ids are 16-bit: far fewer in flight than that, so no id is ever reused
# while an earlier message with it is still unacknowledged.
MAX_IN_FLIGHT_LIMIT = 60_000
DEFAULT_SESSION_EXPIRY_S = 3600
DRAIN_TIMEOUT_S = 10.0
# During the drain, this long without a message and with nothing pending means done.
DRAIN_QUIET_S = 0.3


def default_client_id(settings: Settings) -> str:
    """Unique per copy on a host (the broker drops a connection whose client id another
    takes) and stable across a restart, so a restarted connector resumes its MQTT session."""
    return instances.instance_name(settings, "ingress")


def producer_config(settings: Settings, client_id: str) -> dict[str, Any]:
    return {
        **kafka_client_config(settings.kafka_bootstrap),
        "client.id": client_id,
        "enable.idempotence": True,
        "linger.ms": 5,
        "partitioner": CONFLUENT_PARTITIONER,
    }


@dataclass(frozen=True)
class _Job:
    """One MQTT message on its way to Kafka; acked on the broker once delivered."""

    generation: int
    mid: int
    qos: int
    mqtt_topic: str
    payload: bytes
    kafka_topic: str
    key: bytes
    value: bytes
    dead_letter: bool


class IngressConnector:
    def __init__(
        self,
        settings: Settings,
        client_id: str | None = None,
        *,
        share_group: str | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
        leave_on_stop: bool = False,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ) -> None:
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT_LIMIT:
            raise ValueError(f"max_in_flight must be 1-{MAX_IN_FLIGHT_LIMIT}, got {max_in_flight}")
        self.settings = settings
        self.client_id = client_id or default_client_id(settings)
        self.share_group = share_group or f"{settings.app_id}-ingress"
        self.max_in_flight = max_in_flight
        self.session_expiry_s = session_expiry_s
        self.leave_on_stop = leave_on_stop
        self.drain_timeout_s = drain_timeout_s
        self.reports_topic = DEVICE_REPORTS.full_name(settings)
        self.dead_letter_topic = DEAD_LETTERS.full_name(settings)
        # Set once the broker confirmed the subscriptions (again after each reconnect).
        self.ready = threading.Event()
        # Counters of delivered records (for logs, tests and metrics).
        self.forwarded = 0
        self.dead_lettered = 0
        self._lock = threading.Lock()
        self._generation = 0
        self._pending = 0
        self._last_message_at = 0.0
        self._fatal: KafkaError | None = None
        self._closing = False  # stop taking messages (they stay in the broker session)
        self._ignored = 0  # messages left unacknowledged because we were closing
        self._stopping = False
        self._unsubscribed = threading.Event()
        self._codec = codec()
        self._client: mqtt.Client | None = None
        self._producer: Producer | None = None

    @property
    def subscriptions(self) -> list[str]:
        filters = (*TOPIC_FILTERS, STATUS_TOPIC_FILTER) if self.settings.presence else TOPIC_FILTERS
        return [f"$share/{self.share_group}/{f}" for f in filters]

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        """Forward device messages until ``stop`` is set, then drain and disconnect."""
        producer = Producer(producer_config(self.settings, self.client_id))
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        configure_paho(client, self.settings.mqtt)
        self._producer, self._client = producer, client
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.SessionExpiryInterval = self.session_expiry_s
        connect_props.ReceiveMaximum = self.max_in_flight
        client.connect_async(
            self.settings.mqtt.host,
            self.settings.mqtt.port,
            keepalive=30,
            clean_start=False,
            properties=connect_props,
        )
        client.loop_start()
        _log.info(
            "ingress %s: %s -> %s", self.client_id, self.settings.mqtt.url, self.reports_topic
        )
        _log.info(
            "ingress %s: presence %s",
            self.client_id,
            f"on (device status messages on {STATUS_TOPIC_FILTER})"
            if self.settings.presence
            else "off (OTAFLOW_PRESENCE unset): a device counts as online from its last message",
        )
        try:
            while not stop.is_set():
                producer.poll(0.05)
                self._raise_if_fatal()
            self._stopping = True
            self._drain(client, producer)
        finally:
            self._stopping = self._closing = True
            client.loop_stop()
            # Anything still queued is unacknowledged on the broker, which redelivers it.
            producer.purge()
            producer.flush(1)
            self._client = self._producer = None

    @property
    def pending(self) -> int:
        """Messages received from the broker and not yet acknowledged by Kafka."""
        with self._lock:
            return self._pending

    def _drain(self, client: mqtt.Client, producer: Producer) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        if self.leave_on_stop and client.is_connected():
            self._unsubscribed.clear()
            client.unsubscribe(list(self.subscriptions))
            while not self._unsubscribed.is_set() and time.monotonic() < deadline:
                producer.poll(0.05)
        else:
            with self._lock:
                self._closing = True
        while time.monotonic() < deadline:
            producer.poll(0.05)
            with self._lock:
                idle = time.monotonic() - self._last_message_at > DRAIN_QUIET_S
                if self._pending == 0 and (idle or self._closing):
                    break
        with self._lock:
            self._closing = True
            clean = self._pending == 0 and self._ignored == 0 and self._fatal is None
            self._generation += 1  # no PUBACK after this point
        if not clean:
            _log.log(
                logging.WARNING if self._pending else logging.INFO,
                "ingress %s: stopping with %d messages unacknowledged (%d not yet in "
                "Kafka); the broker keeps them in the session for the next start",
                self.client_id,
                self._pending + self._ignored,
                self._pending,
            )
        if self.leave_on_stop and clean:
            # Everything received is in Kafka: end the session so the broker does
            # not keep queueing this member's share for a process that is gone.
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
            client.disconnect(properties=props)
        else:
            client.disconnect()

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise RuntimeError(f"Kafka producer failed fatally: {self._fatal}")

    # ------------------------------------------------------------------ MQTT callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            _log.error("ingress %s: broker refused the connection: %s", self.client_id, reason_code)
            return
        with self._lock:
            self._generation += 1
        _log.info(
            "ingress %s: connected (session present: %s)", self.client_id, flags.session_present
        )
        metrics.mqtt_connected("ingress")
        client.subscribe([(s, SubscribeOptions(qos=1)) for s in self.subscriptions])

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._generation += 1
        self.ready.clear()
        metrics.mqtt_disconnected("ingress", self._stopping)
        if not self._stopping:
            _log.warning(
                "ingress %s: disconnected (%s); paho reconnects", self.client_id, reason_code
            )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            _log.error("ingress %s: subscription refused: %s", self.client_id, failed)
            return
        self.ready.set()

    def _on_unsubscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._unsubscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Runs on paho's network thread: it must never raise (that would stop the loop).
        try:
            self._handle(msg)
        except Exception:
            _log.exception(
                "ingress %s: could not forward a message on mid %d; the broker "
                "will redeliver it after a reconnect",
                self.client_id,
                msg.mid,
            )

    # ------------------------------------------------------------------ forwarding

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if self._closing:
                self._ignored += 1
                return  # not acknowledged: the broker redelivers it to this session
            generation = self._generation
            self._last_message_at = time.monotonic()
        try:
            mqtt_topic = msg.topic
        except UnicodeDecodeError:
            mqtt_topic = bytes(msg._topic).decode("utf-8", "replace")
        payload = bytes(msg.payload)
        now_ms = int(time.time() * 1000)
        try:
            if is_status_topic(mqtt_topic):
                record = parse_status(mqtt_topic, payload, now_ms)
            else:
                record = parse_report(mqtt_topic, payload, now_ms)
            job = _Job(
                generation,
                msg.mid,
                msg.qos,
                mqtt_topic,
                payload,
                self.reports_topic,
                device_key(record["product_key"], record["device_name"]).encode(),
                self._codec.encode("DeviceReport", record),
                dead_letter=False,
            )
        except MalformedPayload as exc:
            job = self._dead_letter_job(
                generation, msg.mid, msg.qos, mqtt_topic, payload, exc.reason, now_ms
            )
        with self._lock:
            self._pending += 1
        self._produce(job)

    def _dead_letter_job(
        self,
        generation: int,
        mid: int,
        qos: int,
        mqtt_topic: str,
        payload: bytes,
        reason: str,
        now_ms: int,
    ) -> _Job:
        raw = payload
        if len(raw) > MAX_DEAD_LETTER_RAW:
            raw = raw[:MAX_DEAD_LETTER_RAW]
            reason = f"{reason} (raw cut to the first {MAX_DEAD_LETTER_RAW} bytes)"
        value = self._codec.encode(
            "DeadLetter",
            {
                "source": mqtt_topic,
                "reason": reason,
                "raw": raw,
                "event_time": now_ms,
            },
        )
        return _Job(
            generation,
            mid,
            qos,
            mqtt_topic,
            payload,
            self.dead_letter_topic,
            mqtt_topic.encode(),
            value,
            dead_letter=True,
        )

    def _produce(self, job: _Job) -> None:
        producer = self._producer
        assert producer is not None

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            self._delivered(job, err)

        while True:
            try:
                producer.produce(job.kafka_topic, job.value, job.key, on_delivery=on_delivery)
                return
            except BufferError:
                # Only when Kafka is unreachable for long: wait for room (the broker
                # holds the rest, Receive Maximum stops it from sending more).
                time.sleep(0.01)

    def _delivered(self, job: _Job, err: KafkaError | None) -> None:
        if err is not None and self._stopping and err.code() == KafkaError._PURGE_QUEUE:
            return  # purged at shutdown: left unacknowledged on the broker
        if err is not None:
            if err.fatal():
                self._fatal = err  # run() raises; the message stays unacked
                return
            if err.retriable() or err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT):
                _log.warning("ingress: retrying a record to %s: %s", job.kafka_topic, err)
                self._produce(job)
                return
            if not job.dead_letter:
                _log.error("ingress: Kafka refused a report from %s: %s", job.mqtt_topic, err)
                self._produce(
                    self._dead_letter_job(
                        job.generation,
                        job.mid,
                        job.qos,
                        job.mqtt_topic,
                        job.payload,
                        f"Kafka refused the report: {err.str()}",
                        int(time.time() * 1000),
                    )
                )
                return
            _log.error(
                "ingress: Kafka refused a dead letter from %s (%s); dropping it",
                job.mqtt_topic,
                err,
            )
        elif job.dead_letter:
            self.dead_lettered += 1
        else:
            self.forwarded += 1
        with self._lock:
            self._pending -= 1
            client = self._client
            if client is not None and job.qos > 0 and job.generation == self._generation:
                client.ack(job.mid, job.qos)


assert MAX_DEAD_LETTER_RAW > MAX_PAYLOAD_BYTES  # a rejected-for-size payload still shows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="otaflow MQTT -> Kafka ingress connector")
    parser.add_argument(
        "--client-id",
        help="MQTT client id; stable across restarts so the "
        "broker session (and its unacknowledged messages) is resumed; "
        "distinct per replica (default: <deployment>-ingress-<hostname>-<slot>)",
    )
    parser.add_argument(
        "--share-group", help="MQTT shared-subscription group (default: <app id>-ingress)"
    )
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT)
    parser.add_argument(
        "--leave",
        action="store_true",
        help="on SIGTERM, leave the share "
        "group and end the MQTT session (scaling down for good) instead of "
        "keeping the session for a restart",
    )
    args = parser.parse_args(argv)
    settings, stop = start_process([DEVICE_REPORTS, DEAD_LETTERS], "ingress")
    connector = IngressConnector(
        settings,
        client_id=args.client_id,
        share_group=args.share_group,
        max_in_flight=args.max_in_flight,
        leave_on_stop=args.leave,
    )
    counts = {
        "otaflow_ingress_forwarded": (
            "Device messages forwarded to Kafka",
            lambda: connector.forwarded,
        ),
        "otaflow_ingress_dead_lettered": (
            "Device messages dead-lettered",
            lambda: connector.dead_lettered,
        ),
    }
    serve_metrics(settings, "ingress", connector.ready.is_set, counts)
    connector.run(stop)


if __name__ == "__main__":
    main()
