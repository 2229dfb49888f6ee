"""The publish-only QoS 1 MQTT client: packet bytes, and its behaviour against a scripted
peer on a real localhost TCP socket (the real-broker behaviour, reconnects included, is
covered by tests/integration/test_connectors.py's egress tests)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from connectors.mqtt_publisher import (
    QoS1Publisher,
    check_topic,
    connect_packet,
    encode_length,
    publish_packet,
)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_encoding(n: int, encoded: bytes) -> None:
    assert encode_length(n) == encoded


def test_remaining_length_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_length(268_435_456)


def test_publish_packet_bytes() -> None:
    assert publish_packet(b"a/b", b"hi", 0x0102) == b"\x32\x09\x00\x03a/b\x01\x02hi"
    assert publish_packet(b"a/b", b"hi", 1, dup=True)[0] == 0x3A  # QoS 1 + DUP


def test_connect_packet_bytes() -> None:
    assert connect_packet("c1", 30) == b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x1e\x00\x02c1"
    with_auth = connect_packet("c", 60, "u", "p")
    assert with_auth[9] == 0xC2  # user name, password, clean session
    assert with_auth.endswith(b"\x00\x01c\x00\x01u\x00\x01p")


@pytest.mark.parametrize("topic", ["", "a/+/b", "a/#", "a\x00b"])
def test_check_topic_refuses_what_cannot_be_published(topic: str) -> None:
    with pytest.raises(ValueError):
        check_topic(topic)


def test_check_topic_is_utf8() -> None:
    assert check_topic("/ota/dévice") == "/ota/dévice".encode()


# --------------------------------------------------------------------------- scripted peer


class Peer:
    """The broker's end of one connection, driven by the test."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        conn.settimeout(5)
        self.buf = bytearray()

    def packet(self) -> tuple[int, bytes]:
        """The next packet from the client: (first byte, body)."""
        while True:
            if len(self.buf) >= 2:
                length, shift, i = 0, 0, 1
                while i < len(self.buf):
                    byte = self.buf[i]
                    length |= (byte & 0x7F) << shift
                    i += 1
                    if not byte & 0x80:
                        break
                    shift += 7
                else:
                    i = -1
                if i > 0 and len(self.buf) >= i + length:
                    header, body = self.buf[0], bytes(self.buf[i : i + length])
                    del self.buf[: i + length]
                    return header, body
            chunk = self.conn.recv(65536)
            assert chunk, "the client closed the connection"
            self.buf += chunk

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(5)
    yield server
    server.close()


def pump(client: QoS1Publisher, until: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not until():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        client.service(0.01)


def connected_pair(listener: socket.socket, **kwargs: object) -> tuple[QoS1Publisher, Peer]:
    port = listener.getsockname()[1]
    client = QoS1Publisher("pub-1", "127.0.0.1", port, **kwargs)  # type: ignore[arg-type]
    client.connect()
    peer = Peer(listener.accept()[0])
    header, body = peer.packet()
    assert header == 0x10
    assert body == connect_packet("pub-1", client.keepalive)[2:]
    peer.send(b"\x20\x02\x00\x00")
    pump(client, lambda: client.connected, "the CONNACK")
    return client, peer


def test_publishes_and_reports_each_puback_once(listener: socket.socket) -> None:
    client, peer = connected_pair(listener)
    acked: list[int] = []
    client.on_ack = acked.append
    mids = [client.publish(check_topic(f"t/{i}"), f"m{i}".encode()) for i in range(3)]
    assert mids == [1, 2, 3]
    client.flush()
    for i, mid in enumerate(mids):
        assert peer.packet() == (0x32, f"\x00\x03t/{i}".encode() + bytes((0, mid)) + b"m%d" % i)
    # PUBACKs split across writes, one byte at a time, plus one for an unknown id.
    for byte in b"\x40\x02\x00\x02" + b"\x40\x02\x00\x01" + b"\x40\x02\x00\x09\x40\x02\x00\x03":
        peer.send(bytes((byte,)))
        client.service(0.01)
    pump(client, lambda: len(acked) == 3, "three PUBACKs")
    assert acked == [2, 1, 3]
    assert client.unacked == 0
    peer.send(b"\x40\x02\x00\x02")  # a repeated PUBACK is ignored
    client.service(0.05)
    assert acked == [2, 1, 3]
    client.disconnect()
    assert peer.packet() == (0xE0, b"")


def test_unacknowledged_messages_go_again_with_dup_after_a_reconnect(
    listener: socket.socket,
) -> None:
    client, peer = connected_pair(listener)
    reasons: list[str] = []
    client.on_disconnect = reasons.append
    first = client.publish(b"a", b"1")
    second = client.publish(b"b", b"2")
    client.flush()
    assert peer.packet()[0] == 0x32
    assert peer.packet()[0] == 0x32
    peer.send(b"\x40\x02" + first.to_bytes(2, "big"))
    pump(client, lambda: client.unacked == 1, "the first PUBACK")
    peer.close()
    pump(client, lambda: bool(reasons), "the lost connection")
    assert client.socket() is None
    assert "closed by the broker" in reasons[0]
    third = client.publish(b"c", b"3")  # while disconnected: kept for later
    client.connect()
    peer = Peer(listener.accept()[0])
    assert peer.packet()[0] == 0x10
    peer.send(b"\x20\x02\x00\x00")
    pump(client, lambda: client.connected, "the second CONNACK")
    assert peer.packet() == (0x3A, b"\x00\x01b" + second.to_bytes(2, "big") + b"2")
    assert peer.packet() == (0x3A, b"\x00\x01c" + third.to_bytes(2, "big") + b"3")
    assert client.unacked == 2


def test_a_refused_connack_closes_with_the_reason(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    client = QoS1Publisher("pub-1", "127.0.0.1", port)
    reasons: list[str] = []
    client.on_disconnect = reasons.append
    client.connect()
    peer = Peer(listener.accept()[0])
    peer.packet()
    peer.send(b"\x20\x02\x00\x05")
    pump(client, lambda: client.socket() is None, "the refusal")
    assert not client.connected
    assert "not authorized" in reasons[0]


def test_an_unexpected_packet_is_a_protocol_error(listener: socket.socket) -> None:
    client, peer = connected_pair(listener)
    reasons: list[str] = []
    client.on_disconnect = reasons.append
    peer.send(b"\x30\x05\x00\x01ahi")  # a PUBLISH to a client that never subscribed
    pump(client, lambda: client.socket() is None, "the protocol error")
    assert "unexpected packet type 3" in reasons[0]


def test_keepalive_pings_and_gives_up_without_pingresp(listener: socket.socket) -> None:
    client, peer = connected_pair(listener, keepalive=1)
    reasons: list[str] = []
    client.on_disconnect = reasons.append
    pump(client, lambda: client._ping_sent_at is not None, "a PINGREQ")
    assert peer.packet() == (0xC0, b"")
    peer.send(b"\xd0\x00")
    pump(client, lambda: client._ping_sent_at is None, "the PINGRESP")
    pump(client, lambda: client._ping_sent_at is not None, "the next PINGREQ")
    pump(client, lambda: client.socket() is None, "the keepalive to expire")
    assert "no PINGRESP" in reasons[0]


def test_connect_to_nothing_raises(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(OSError):
        QoS1Publisher("pub-1", "127.0.0.1", port).connect()
