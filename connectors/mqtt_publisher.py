"""A publish-only MQTT 3.1.1 client for QoS 1, for the egress connector's hot path.

Why not paho (or another library): measured on the 2-core benchmark machine with
``python -m benchmarks.egress_bench --publish-only paho|qos1`` (QoS 1 publish +
PUBACK and nothing else), paho-mqtt 2.2 spends 45-47 µs of CPU per message (a
``Properties`` and a ``ReasonCode`` object per PUBACK, three ``recv`` calls per 4-byte
packet, one ``send`` per packet; with its default in-flight limit also a scan of every
in-flight message per PUBACK), ~16k messages/s for a whole core; this client spends
5-8 µs (46-73k/s, the broker's limit). That was more than the rest of the egress
connector together. pymosquitto (libmosquitto through ctypes) measured 40-55 µs;
gmqtt has no per-message PUBACK callback, which the "commit only after PUBACK" rule
needs. Here PUBLISH packets are built with one ``bytes.join`` and written in large
batches, and PUBACKs are parsed from one ``recv`` of up to 256 KiB.

Scope, deliberately small: CONNECT (clean session, no will, optional username and
password), CONNACK, PUBLISH at QoS 1, PUBACK, PINGREQ/PINGRESP, DISCONNECT. No
subscriptions, no QoS 0/2, no MQTT 5 (use paho where any of those is needed). TLS
with an ``ssl_context``: the handshake is blocking, in :meth:`connect`. Like paho, it keeps every
unacknowledged message and publishes it again (DUP set) after a reconnect, so
delivery is at least once.

Single-threaded and non-blocking after connect: the owner calls :meth:`flush`,
:meth:`read` and :meth:`tick` (or :meth:`service`, which waits on the socket) from
its own loop; ``on_ack``, ``on_connect`` and ``on_disconnect`` run inside them.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
PINGREQ, PINGRESP, DISCONNECT = 0xC0, 0xD0, 0xE0
_PUBLISH_QOS1 = PUBLISH | 0x02
_PUBLISH_QOS1_DUP = _PUBLISH_QOS1 | 0x08
_PINGREQ_PACKET = bytes((PINGREQ, 0))
_DISCONNECT_PACKET = bytes((DISCONNECT, 0))
MAX_PACKET_ID = 0xFFFF
RECV_BYTES = 256 * 1024
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class ProtocolError(Exception):
    """The broker sent something a publish-only QoS 1 client never expects."""


def encode_length(n: int) -> bytes:
    """MQTT's variable-length "remaining length" (1-4 bytes)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8_field(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(
    client_id: str,
    keepalive: int,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = 0x02  # clean session
    payload = _utf8_field(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8_field(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8_field(password)
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + keepalive.to_bytes(2, "big") + payload
    return bytes((CONNECT,)) + encode_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, mid: int, dup: bool = False) -> bytes:
    """A QoS 1 PUBLISH (topic already UTF-8)."""
    remaining = 2 + len(topic) + 2 + len(payload)
    return b"".join(
        (
            bytes((_PUBLISH_QOS1_DUP if dup else _PUBLISH_QOS1,)),
            encode_length(remaining),
            len(topic).to_bytes(2, "big"),
            topic,
            mid.to_bytes(2, "big"),
            payload,
        )
    )


def check_topic(topic: str) -> bytes:
    """UTF-8 bytes of a topic name one may publish to (no wildcards, no NUL, not empty)."""
    raw = topic.encode("utf-8")
    if not raw or len(raw) > 0xFFFF or b"+" in raw or b"#" in raw or b"\x00" in raw:
        raise ValueError(f"invalid MQTT topic name {topic!r}")
    return raw


class QoS1Publisher:
    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        *,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.client_id = client_id
        self.host, self.port = host, port
        self.keepalive = keepalive
        self.username, self.password = username, password
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.on_ack: Callable[[int], Any] | None = None
        self.on_connect: Callable[[], Any] | None = None
        self.on_disconnect: Callable[[str], Any] | None = None
        self.connected = False  # CONNACK accepted on the current socket
        self._sock: socket.socket | None = None
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        # Unacknowledged messages in publish order: packet id -> (topic, payload).
        self._unacked: dict[int, tuple[bytes, bytes]] = {}
        self._next_mid = 1
        self._last_sent = 0.0
        self._ping_sent_at: float | None = None

    # ------------------------------------------------------------------ state

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def socket(self) -> socket.socket | None:
        return self._sock

    def want_write(self) -> bool:
        return bool(self._wbuf)

    # ------------------------------------------------------------------ connection

    def connect(self) -> None:
        """Open the TCP connection and send CONNECT (blocking up to ``connect_timeout``);
        the CONNACK is read by :meth:`read`. Raises ``OSError`` if the broker is away."""
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
            except OSError:
                sock.close()
                raise
        sock.setblocking(False)
        self._sock = sock
        self._rbuf.clear()
        self._wbuf.clear()
        self._ping_sent_at = None
        self._wbuf += connect_packet(self.client_id, self.keepalive, self.username, self.password)
        self.flush()

    def disconnect(self) -> None:
        """Send DISCONNECT (best effort) and close; unacknowledged messages are kept."""
        if self._sock is not None and self.connected:
            self._wbuf += _DISCONNECT_PACKET
            self.flush()  # never raises: a write error just closes
        self.close()

    def close(self, reason: str | None = None) -> None:
        sock, self._sock = self._sock, None
        was_connected, self.connected = self.connected, False
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            if reason is not None and self.on_disconnect is not None:
                self.on_disconnect(reason if was_connected else f"{reason} (before CONNACK)")

    # ------------------------------------------------------------------ publishing

    def publish(self, topic: bytes, payload: bytes) -> int:
        """Queue a QoS 1 PUBLISH of ``topic`` (from :func:`check_topic`); returns its
        packet id. Sent by the next :meth:`flush`; kept until PUBACKed (across
        reconnects). The caller bounds how many are unacknowledged (< 65535)."""
        if len(self._unacked) >= MAX_PACKET_ID:
            raise RuntimeError("65535 messages unacknowledged: no packet id left")
        mid = self._next_mid
        while mid in self._unacked:
            mid = mid % MAX_PACKET_ID + 1
        self._next_mid = mid % MAX_PACKET_ID + 1
        self._unacked[mid] = (topic, payload)
        if self.connected:
            self._wbuf += publish_packet(topic, payload, mid)
        return mid

    def flush(self) -> None:
        """Write what is queued, as far as the socket takes it (the rest stays queued)."""
        sock = self._sock
        if sock is None or not self._wbuf:
            return
        try:
            sent = sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self.close(f"write failed: {exc}")
            return
        del self._wbuf[:sent]
        self._last_sent = time.monotonic()

    # ------------------------------------------------------------------ reading

    def read(self) -> None:
        """Take every packet that has arrived (CONNACK, PUBACKs, PINGRESP)."""
        sock = self._sock
        while sock is not None:
            try:
                chunk = sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError as exc:
                self.close(f"read failed: {exc}")
                return
            if not chunk:
                self.close("connection closed by the broker")
                return
            self._rbuf += chunk
            try:
                self._parse()
            except ProtocolError as exc:
                self.close(f"protocol error: {exc}")
                return
            # TLS hands out one record per recv: decrypted bytes may wait in the
            # SSL object with nothing left on the socket for select to see.
            if len(chunk) < RECV_BYTES and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return
            sock = self._sock

    def _parse(self) -> None:
        buf = self._rbuf
        pos, end = 0, len(buf)
        on_ack = self.on_ack
        unacked = self._unacked
        while end - pos >= 2:
            header = buf[pos]
            length = buf[pos + 1]
            if length < 0x80:  # PUBACK, CONNACK, PINGRESP: always a 1-byte length
                start = pos + 2
            else:
                length, start = self._long_length(buf, pos)
                if start < 0:
                    break
            if end < start + length:
                break
            kind = header & 0xF0
            if kind == PUBACK:
                if length != 2:
                    raise ProtocolError(f"PUBACK of length {length}")
                mid = (buf[start] << 8) | buf[start + 1]
                if unacked.pop(mid, None) is not None and on_ack is not None:
                    on_ack(mid)
            elif kind == CONNACK:
                if length != 2:
                    raise ProtocolError(f"CONNACK of length {length}")
                self._connack(buf[start + 1])
            elif kind == PINGRESP:
                self._ping_sent_at = None
            else:
                raise ProtocolError(f"unexpected packet type {header >> 4}")
            pos = start + length
            if self._sock is None:  # refused or closed while handling
                return
        del buf[:pos]

    @staticmethod
    def _long_length(buf: bytearray, pos: int) -> tuple[int, int]:
        """``(remaining length, start of body)``; start -1 while incomplete."""
        value, shift, i = 0, 0, pos + 1
        while True:
            if i >= len(buf):
                return 0, -1
            byte = buf[i]
            value |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                return value, i
            shift += 7
            if shift > 21:
                raise ProtocolError("remaining length longer than 4 bytes")

    def _connack(self, code: int) -> None:
        if code != 0:
            reason = CONNACK_REASONS.get(code, f"code {code}")
            self.close(f"broker refused the connection: {reason}")
            return
        self.connected = True
        # Everything not acknowledged goes again, in order, marked as a duplicate.
        for mid, (topic, payload) in self._unacked.items():
            self._wbuf += publish_packet(topic, payload, mid, dup=True)
        if self.on_connect is not None:
            self.on_connect()
        self.flush()

    # ------------------------------------------------------------------ keepalive

    def tick(self) -> None:
        """Keepalive: PINGREQ after ``keepalive`` s without sending; a PINGRESP missing
        for another ``keepalive`` s (or a CONNACK for that long) means the link is dead."""
        if self._sock is None or not self.keepalive:
            return
        now = time.monotonic()
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at > self.keepalive:
                self.close("no PINGRESP within the keepalive")
            return
        if now - self._last_sent >= self.keepalive:
            if not self.connected:
                self.close("no CONNACK within the keepalive")
                return
            self._wbuf += _PINGREQ_PACKET
            self._ping_sent_at = now
            self.flush()

    def service(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the socket, then read, write and keep alive."""
        sock = self._sock
        if sock is None:
            return
        if timeout > 0:
            writers = [sock] if self._wbuf else []
            try:
                select.select([sock], writers, [], timeout)
            except (OSError, ValueError) as exc:
                self.close(f"select failed: {exc}")
                return
        self.read()
        self.flush()
        self.tick()
