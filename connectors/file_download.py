"""MQTT file download: answers devices fetching a package block by block over MQTT.

A push with ``"dProtocol":"mqtt"`` (packages of one file up to 16 MiB, see
:func:`connectors.download_frames.uses_mqtt_download`) tells the device a ``streamId``
and ``streamFileId``; the device then asks for blocks::

    devices --/sys/{pk}/{dn}/thing/file/download--> Mosquitto
        --$share/<app id>-file-download/...--> FileDownloadResponder
        --/sys/{pk}/{dn}/thing/file/download_reply (binary frame)--> device
    otaflow.batches (compacted) --> streamId -> package file (in memory)
    malformed requests --> ota.deadletter (and an error reply when it can be addressed)

The frame and its CRC are built by :mod:`connectors.download_frames` (pure, unit
tested). The stream map comes from every ``Batch`` record: a batch whose firmware is
offered over MQTT maps ``mqtt_stream_ids(firmware_id)`` to its ``file_path`` in the
package store. It is read to the end before the responder subscribes, then followed.

Errors never stop the process: an unknown stream, an offset at or past the end of the
file or a bad request get an error reply (see ``DOWNLOAD_CODE_*``); a request that is
not one (bad JSON, missing fields) also goes to the dead-letter topic.

Scale-out: every responder joins the same MQTT shared subscription, so the broker
spreads requests over them; each holds the whole (small) stream map. Requests are
answered on paho's network thread (a file read and a CRC); replies are QoS 0 (the
SDK asks again after 10 s without an answer), and when more than
``MAX_PENDING_REPLY_BYTES`` of replies wait for the socket, further requests are
dropped (counted) rather than queued without bound.

Python API::

    FileDownloadResponder(settings, PackageStore(settings)).run(stop_event)

CLI: ``python -m connectors.file_download [--client-id ID] [--share-group NAME]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from connectors.download_frames import (
    DOWNLOAD_CODE_BAD_REQUEST,
    DOWNLOAD_CODE_SERVER_ERROR,
    DOWNLOAD_CODE_UNKNOWN_STREAM,
    DownloadRequest,
    MalformedDownloadRequest,
    build_download_block,
    build_download_error,
    crc16_ibm,
    mqtt_stream_ids,
    parse_download_request,
    uses_mqtt_download,
)
from connectors.ingress import producer_config
from connectors.mqtt_login import configure_paho
from connectors.process import serve_metrics, start_process
from otaflow import metrics
from otaflow.codec import DecodeError, codec
from otaflow.config import Settings
from otaflow.kafka_security import kafka_client_config
from otaflow.packages import PackageStore
from otaflow.topics import BATCHES, DEAD_LETTERS

_log = logging.getLogger("otaflow.file_download")

REQUEST_FILTER = "/sys/+/+/thing/file/download"
MAX_PENDING_REPLY_BYTES = 32 * 1024 * 1024
MAX_DEAD_LETTER_RAW = 256 * 1024
CRC_CACHE_ENTRIES = 65_536
CATCH_UP_TIMEOUT_S = 60.0


def default_client_id(settings: Settings) -> str:
    return f"{settings.app_id}-file-download-{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class StreamFile:
    """What one MQTT download stream serves."""

    stream_id: int
    file_id: int
    firmware_id: str
    file_path: str


class StreamDirectory:
    """streamId -> package file, from the ``Batch`` records (latest per batch id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_batch: dict[str, StreamFile] = {}
        self._by_stream: dict[int, StreamFile] = {}

    def apply(self, batch_id: str, batch: dict[str, Any] | None) -> None:
        """Take one record of the batches topic (``None``: a tombstone)."""
        stream = None
        if batch is not None:
            firmware = batch["firmware"]
            if uses_mqtt_download(firmware):
                stream_id, file_id = mqtt_stream_ids(firmware["firmware_id"])
                stream = StreamFile(
                    stream_id, file_id, firmware["firmware_id"], firmware["file_path"]
                )
        with self._lock:
            if stream is None:
                self._by_batch.pop(batch_id, None)
            else:
                known = self._by_stream.get(stream.stream_id)
                if known is not None and known.firmware_id != stream.firmware_id:
                    _log.error(
                        "file download: stream id %d of firmware %s collides with %s; "
                        "serving the later one",
                        stream.stream_id,
                        stream.firmware_id,
                        known.firmware_id,
                    )
                self._by_batch[batch_id] = stream
            self._by_stream = {s.stream_id: s for s in self._by_batch.values()}

    def get(self, stream_id: int) -> StreamFile | None:
        return self._by_stream.get(stream_id)

    def __len__(self) -> int:
        return len(self._by_stream)


class FileDownloadResponder:
    def __init__(
        self,
        settings: Settings,
        store: PackageStore,
        client_id: str | None = None,
        *,
        share_group: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client_id = client_id or default_client_id(settings)
        self.share_group = share_group or f"{settings.app_id}-file-download"
        self.batches_topic = BATCHES.full_name(settings)
        self.dead_letter_topic = DEAD_LETTERS.full_name(settings)
        self.streams = StreamDirectory()
        # Set once the stream map is caught up and the subscription confirmed.
        self.ready = threading.Event()
        # Counters (logs, tests, metrics).
        self.blocks_sent = 0
        self.errors_sent = 0
        self.dead_lettered = 0
        self.dropped = 0
        self._caught_up = threading.Event()
        self._subscribed = threading.Event()
        self._codec = codec()
        self._lock = threading.Lock()  # counters and pending reply bytes
        self._pending_bytes: dict[int, int] = {}
        self._pending_total = 0
        self._crcs: OrderedDict[tuple[str, int, int, int], int] = OrderedDict()
        self._producer: Producer | None = None

    @property
    def subscription(self) -> str:
        return f"$share/{self.share_group}/{REQUEST_FILTER}"

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        """Answer download requests until ``stop`` is set."""
        producer = Producer(producer_config(self.settings, self.client_id))
        self._producer = producer
        consumer = Consumer(
            {
                **kafka_client_config(self.settings.kafka_bootstrap),
                "group.id": f"{self.client_id}-{uuid.uuid4().hex[:8]}",  # never commits
                "client.id": self.client_id,
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
            }
        )
        partitions = [
            TopicPartition(self.batches_topic, p, OFFSET_BEGINNING)
            for p in range(BATCHES.partition_count(self.settings))
        ]
        consumer.assign(partitions)
        ends = {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in partitions
        }
        read: dict[int, int] = {}
        caught_up_by = time.monotonic() + CATCH_UP_TIMEOUT_S
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        configure_paho(client, self.settings.mqtt)
        _log.info(
            "file download %s: %s on %s", self.client_id, self.subscription, self.settings.mqtt.url
        )
        try:
            while not stop.is_set():
                for msg in consumer.consume(num_messages=500, timeout=0.1):
                    self._apply_batch_record(msg)
                    if msg.error() is None:
                        read[msg.partition() or 0] = (msg.offset() or 0) + 1
                producer.poll(0)
                if not self._caught_up.is_set() and (
                    all(read.get(p, 0) >= end for p, end in ends.items())
                    or time.monotonic() > caught_up_by
                ):
                    # Only now take requests: an unknown stream must mean unknown.
                    _log.info("file download: %d MQTT streams known", len(self.streams))
                    self._caught_up.set()
                    client.connect_async(
                        self.settings.mqtt.host, self.settings.mqtt.port, keepalive=30
                    )
                    client.loop_start()
        finally:
            client.disconnect()
            client.loop_stop()
            consumer.close()
            producer.flush(5)
            self._producer = None

    def _apply_batch_record(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                _log.warning("file download: batches consumer error: %s", err)
            return
        key = (msg.key() or b"").decode("utf-8", "replace")
        value = msg.value()
        try:
            batch = None if value is None else self._codec.decode_as("Batch", value)
            self.streams.apply(key, batch)
        except (DecodeError, KeyError, TypeError, ValueError) as exc:
            # Not ours to dead-letter (the command agent wrote it); skip and say so.
            _log.warning("file download: unusable batch record %r: %s", key, exc)

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
            _log.error("file download: broker refused the connection: %s", reason_code)
            return
        metrics.mqtt_connected("file-download")
        client.subscribe(self.subscription, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(rc.is_failure for rc in reason_codes):
            _log.error("file download: subscription refused: %s", reason_codes)
            return
        self.ready.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.ready.clear()
        metrics.mqtt_disconnected("file-download")
        with self._lock:  # QoS 0 replies not written are gone with the connection
            self._pending_bytes.clear()
            self._pending_total = 0

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._pending_total -= self._pending_bytes.pop(mid, 0)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # paho's network thread: must never raise.
        try:
            reply = self.answer(_topic_of(msg), bytes(msg.payload))
            if reply is not None:
                self._send(client, *reply)
        except Exception:
            _log.exception("file download: could not answer a request on %r", msg._topic)

    # ------------------------------------------------------------------ requests

    def answer(self, mqtt_topic: str, payload: bytes) -> tuple[str, bytes] | None:
        """``(reply topic, frame)`` for one request, or ``None`` when it cannot be addressed."""
        try:
            request = parse_download_request(mqtt_topic, payload)
        except MalformedDownloadRequest as exc:
            self._dead_letter(mqtt_topic, payload, exc.reason)
            if exc.reply_topic is None:
                return None
            return exc.reply_topic, self._error(
                exc.request_id, DOWNLOAD_CODE_BAD_REQUEST, exc.reason, exc.file_token
            )
        stream = self.streams.get(request.stream_id)
        if stream is None or stream.file_id != request.file_id:
            what = "stream" if stream is None else "file"
            return request.reply_topic, self._error(
                request.request_id,
                DOWNLOAD_CODE_UNKNOWN_STREAM,
                f"unknown {what}: streamId {request.stream_id}, fileId {request.file_id}",
                request.file_token,
            )
        try:
            data, file_length, crc = self._read(stream, request)
        except _OutOfRange as exc:
            return request.reply_topic, self._error(
                request.request_id, DOWNLOAD_CODE_BAD_REQUEST, str(exc), request.file_token
            )
        except (OSError, ValueError) as exc:
            _log.error("file download: cannot read %s: %s", stream.file_path, exc)
            return request.reply_topic, self._error(
                request.request_id,
                DOWNLOAD_CODE_SERVER_ERROR,
                "package file unavailable",
                request.file_token,
            )
        with self._lock:
            self.blocks_sent += 1
        return request.reply_topic, build_download_block(request, data, file_length, crc)

    def _read(self, stream: StreamFile, request: DownloadRequest) -> tuple[bytes, int, int]:
        """``(bytes, file length, CRC of the bytes)`` for a request."""
        path = self.store.path(stream.file_path)
        with path.open("rb") as fh:
            stat = os.fstat(fh.fileno())
            if request.offset >= stat.st_size:
                raise _OutOfRange(
                    f"offset {request.offset} is at or beyond the end of the file "
                    f"({stat.st_size} bytes)"
                )
            fh.seek(request.offset)
            data = fh.read(min(request.size, stat.st_size - request.offset))
        return data, stat.st_size, self._crc(str(path), stat.st_mtime_ns, request.offset, data)

    def _crc(self, path: str, mtime_ns: int, offset: int, data: bytes) -> int:
        # The devices of a rollout ask for the same blocks (the SDK's block size is
        # fixed): each block's CRC (pure Python, ~70 ns a byte) is computed once.
        key = (path, mtime_ns, offset, len(data))
        with self._lock:
            crc = self._crcs.get(key)
            if crc is not None:
                self._crcs.move_to_end(key)
                return crc
        crc = crc16_ibm(data)
        with self._lock:
            self._crcs[key] = crc
            if len(self._crcs) > CRC_CACHE_ENTRIES:
                self._crcs.popitem(last=False)
        return crc

    def _error(
        self, request_id: str | None, code: int, message: str, file_token: str | None
    ) -> bytes:
        with self._lock:
            self.errors_sent += 1
        return build_download_error(request_id, code, message, file_token)

    def _send(self, client: mqtt.Client, topic: str, frame: bytes) -> None:
        with self._lock:
            if self._pending_total + len(frame) > MAX_PENDING_REPLY_BYTES:
                self.dropped += 1
                return
        info = client.publish(topic, frame, qos=0)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with self._lock:
                if info.mid not in self._pending_bytes and not info.is_published():
                    self._pending_bytes[info.mid] = len(frame)
                    self._pending_total += len(frame)

    def _dead_letter(self, mqtt_topic: str, payload: bytes, reason: str) -> None:
        producer = self._producer
        raw = payload[:MAX_DEAD_LETTER_RAW]
        if len(payload) > MAX_DEAD_LETTER_RAW:
            reason = f"{reason} (raw cut to the first {MAX_DEAD_LETTER_RAW} bytes)"
        value = self._codec.encode(
            "DeadLetter",
            {
                "source": mqtt_topic,
                "reason": f"file download request: {reason}",
                "raw": raw,
                "event_time": int(time.time() * 1000),
            },
        )

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                _log.error("file download: dead letter for %s lost: %s", mqtt_topic, err)
                return
            with self._lock:
                self.dead_lettered += 1

        if producer is None:
            _log.warning("file download: no producer; dead letter for %s dropped", mqtt_topic)
            return
        try:
            producer.produce(
                self.dead_letter_topic,
                value,
                mqtt_topic.encode("utf-8", "replace"),
                on_delivery=on_delivery,
            )
        except BufferError:
            _log.warning("file download: producer queue full; dead letter dropped")


class _OutOfRange(Exception):
    pass


def _topic_of(msg: mqtt.MQTTMessage) -> str:
    try:
        return msg.topic
    except UnicodeDecodeError:
        return bytes(msg._topic).decode("utf-8", "replace")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="otaflow MQTT file download responder")
    parser.add_argument("--client-id", help="MQTT client id (default: unique per process)")
    parser.add_argument(
        "--share-group", help="MQTT shared-subscription group (default: <app id>-file-download)"
    )
    args = parser.parse_args(argv)
    settings, stop = start_process([BATCHES, DEAD_LETTERS], "file-download")
    responder = FileDownloadResponder(
        settings, PackageStore(settings), client_id=args.client_id, share_group=args.share_group
    )
    counts = {
        "otaflow_file_blocks_sent": ("File blocks sent to devices", lambda: responder.blocks_sent),
        "otaflow_file_errors_sent": (
            "Error replies sent to devices",
            lambda: responder.errors_sent,
        ),
    }
    serve_metrics(settings, "file-download", responder.ready.is_set, counts)
    responder.run(stop)


if __name__ == "__main__":
    main()
