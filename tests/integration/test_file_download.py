"""MQTT file download against the real dev-stack Kafka and Mosquitto.

A device (a paho client speaking the Link SDK's request format) fetches a 100 KB
package in 8 KB blocks and reassembles it byte for byte; unknown streams and
malformed requests get error replies (the latter also a dead letter); two responders
share the requests through the MQTT shared subscription.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Producer

from connectors.download_frames import (
    DOWNLOAD_CODE_BAD_REQUEST,
    DOWNLOAD_CODE_UNKNOWN_STREAM,
    DownloadReply,
    file_download_reply_topic,
    file_download_request_topic,
    mqtt_stream_ids,
    parse_download_reply,
)
from connectors.file_download import FileDownloadResponder
from connectors.ingress import producer_config
from otaflow.codec import codec
from otaflow.config import MqttAddress, Settings
from otaflow.dev import devstack
from otaflow.packages import PackageStore
from otaflow.topics import BATCHES, DEAD_LETTERS, ensure_topics
from tests.integration.conftest import scratch
from tests.integration.connector_support import TopicReader, connected, running
from tests.mqtt_logins import device_client

pytestmark = pytest.mark.integration

PACKAGE_BYTES = 100 * 1024
BLOCK = 8 * 1024


@pytest.fixture(scope="module")
def stack() -> devstack.DevStack:
    return devstack.up()


def make_settings(stack: devstack.DevStack) -> Settings:
    settings = scratch(
        Settings(
            kafka_bootstrap=stack.kafka_bootstrap,
            mqtt=MqttAddress.parse(stack.mqtt_url),
        )
    )
    ensure_topics(settings.kafka_bootstrap, settings, [BATCHES, DEAD_LETTERS])
    return settings


def publish_batch(settings: Settings, pk: str, firmware_id: str, file_path: str, size: int) -> None:
    batch_id = f"batch-{firmware_id}"
    batch = {
        "batch_id": batch_id,
        "product_key": pk,
        "firmware": {
            "firmware_id": firmware_id,
            "version": "2.0.0",
            "size": size,
            "sign_method": "SHA256",
            "sign": "00" * 32,
            "file_path": file_path,
            "download_protocol": "MQTT",
        },
        "kind": "STATIC",
        "scope": "ALL",
        "status": "IN_PROGRESS",
        "created_at": 1,
        "updated_at": 1,
    }
    producer = Producer(producer_config(settings, "test-batches"))
    producer.produce(BATCHES.full_name(settings), codec().encode("Batch", batch), batch_id.encode())
    assert producer.flush(10) == 0


class Device:
    """A device asking for blocks the way the Link SDK does, one request at a time."""

    def __init__(self, client: mqtt.Client, pk: str, dn: str) -> None:
        self.client = client
        self.pk, self.dn = pk, dn
        self.replies: queue.Queue[bytes] = queue.Queue()
        self.next_id = 0
        subscribed = threading.Event()
        client.on_message = lambda _c, _u, msg: self.replies.put(bytes(msg.payload))
        client.on_subscribe = lambda *_: subscribed.set()
        client.subscribe(file_download_reply_topic(pk, dn), qos=0)
        assert subscribed.wait(10), "no SUBACK"

    def send(self, payload: bytes) -> None:
        info = self.client.publish(file_download_request_topic(self.pk, self.dn), payload, qos=0)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS

    def request(self, stream_id: int, file_id: int, size: int, offset: int) -> None:
        self.next_id += 1
        # What Link SDK for C sends, trailing comma in fileInfo included.
        self.send(
            (
                f'{{"id":"{self.next_id}","version":"1.0","params":{{"fileToken":"default",'
                f'"fileInfo":{{"streamId":{stream_id},"fileId":{file_id},}},'
                f'"fileBlock":{{"size":{size},"offset":{offset}}}}}}}'
            ).encode()
        )

    def reply(self, timeout: float = 10) -> DownloadReply:
        return parse_download_reply(self.replies.get(timeout=timeout))


def setup_package(
    settings: Settings, tmp_path: Path, pk: str, size: int = PACKAGE_BYTES
) -> tuple[PackageStore, bytes, str]:
    store = PackageStore(settings, root=tmp_path / "packages")
    content = os.urandom(size)
    firmware_id = f"fw-{uuid.uuid4().hex[:8]}"
    file_path = f"{pk}/{firmware_id}.bin"
    store.add_bytes(file_path, content)
    publish_batch(settings, pk, firmware_id, file_path, size)
    return store, content, firmware_id


def test_device_downloads_a_package_in_blocks_and_gets_error_replies(
    stack: devstack.DevStack, tmp_path: Path
) -> None:
    settings = make_settings(stack)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    store, content, firmware_id = setup_package(settings, tmp_path, pk)
    stream_id, file_id = mqtt_stream_ids(firmware_id)
    responder = FileDownloadResponder(settings, store, client_id=f"{settings.app_id}-fd")
    dead = TopicReader(settings, DEAD_LETTERS)
    try:
        with (
            running(responder.run) as thread,
            connected(device_client(pk, "dev-1"), settings.mqtt, "the device") as client,
        ):
            assert responder.ready.wait(30), "the responder never subscribed"
            device = Device(client, pk, "dev-1")
            received = bytearray()
            started = time.monotonic()
            while len(received) < PACKAGE_BYTES:
                device.request(stream_id, file_id, BLOCK, len(received))
                reply = device.reply()
                assert reply.code == 200, reply.header
                assert reply.header["id"] == str(device.next_id)
                assert reply.header["data"]["bOffset"] == len(received)
                assert reply.header["data"]["fileLength"] == PACKAGE_BYTES
                assert reply.header["data"]["fileToken"] == "default"
                received += reply.data
            elapsed = time.monotonic() - started
            blocks = device.next_id
            print(f"\nfile download: {PACKAGE_BYTES:,} bytes in {blocks} blocks, {elapsed:.2f}s")
            assert bytes(received) == content
            assert hashlib.sha256(received).digest() == hashlib.sha256(content).digest()
            assert device.next_id == -(-PACKAGE_BYTES // BLOCK)  # 13 blocks, the last short

            device.request(stream_id ^ 0x5A5A5A, file_id, BLOCK, 0)  # a stream nobody offered
            unknown = device.reply()
            assert unknown.code == DOWNLOAD_CODE_UNKNOWN_STREAM
            assert unknown.header["id"] == str(device.next_id)
            assert unknown.data == b""

            device.request(stream_id, file_id, BLOCK, PACKAGE_BYTES)  # past the end
            assert device.reply().code == DOWNLOAD_CODE_BAD_REQUEST

            device.send(b'{"id":"bad-1","params":{"fileInfo":"nope"}}')  # malformed
            malformed = device.reply()
            assert malformed.code == DOWNLOAD_CODE_BAD_REQUEST
            assert malformed.header["id"] == "bad-1"
            assert "fileInfo" in malformed.header["message"]

            device.request(stream_id, file_id, BLOCK, 0)  # and it keeps serving
            assert device.reply().data == content[:BLOCK]
            assert thread.is_alive()
            letters = dead.read(lambda ms: len(ms) >= 1, 30, "the dead letter")
    finally:
        dead.close()
    assert len(letters) == 1
    letter = codec().decode_as("DeadLetter", letters[0].value() or b"")
    assert letter["raw"] == b'{"id":"bad-1","params":{"fileInfo":"nope"}}'
    assert letter["source"] == file_download_request_topic(pk, "dev-1")
    assert "fileInfo" in letter["reason"]
    assert responder.errors_sent == 3
    assert responder.blocks_sent == device.next_id - 2


def test_two_responders_share_the_requests(stack: devstack.DevStack, tmp_path: Path) -> None:
    settings = make_settings(stack)
    pk = f"pk{uuid.uuid4().hex[:8]}"
    store, content, firmware_id = setup_package(settings, tmp_path, pk, size=40 * 1024)
    stream_id, file_id = mqtt_stream_ids(firmware_id)
    first = FileDownloadResponder(settings, store, client_id=f"{settings.app_id}-fd1")
    second = FileDownloadResponder(settings, store, client_id=f"{settings.app_id}-fd2")
    with (
        running(first.run),
        running(second.run),
        connected(device_client(pk, "dev-2"), settings.mqtt, "the device") as client,
    ):
        assert first.ready.wait(30) and second.ready.wait(30), "a responder never subscribed"
        device = Device(client, pk, "dev-2")
        for i in range(40):
            device.request(stream_id, file_id, 1024, i * 1024)
        replies: dict[int, Any] = {}
        for _ in range(40):
            reply = device.reply()
            assert reply.code == 200
            replies[reply.header["data"]["bOffset"]] = reply.data
        with pytest.raises(queue.Empty):  # each request answered once, not once per member
            device.replies.get(timeout=1)
    assert b"".join(replies[o] for o in sorted(replies)) == content
    assert first.blocks_sent + second.blocks_sent == 40
    assert first.blocks_sent > 0 and second.blocks_sent > 0
