"""The command agent's records, without Faust (``streams.command_agent`` wires them).

The control table's values (Avro records named by key, or early versions' JSON), the
``ControlPlane``'s view of that table, used signature nonces and their expiry, the
answers, and an outcome encoded into the records it becomes (table writes, batch
definitions, controls, device envelopes) before any is written, so a value the records
cannot hold fails with nothing half-applied. Nothing here imports Faust or aiokafka
(``tests/unit/test_command_records.py`` checks it).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from otaflow.codec import codec
from otaflow.control.common import Outcome, Record, schema_of_key
from otaflow.device_keys import device_key

CODEC = codec()
# Kafka's default message limit is 1 MB; stay well below it with the envelope's overhead.
ENVELOPE_LIMIT = 700_000
_AVRO_MARKER = b"\xc3\x01"

Table = MutableMapping[bytes, bytes]
# The control table's entries under a key prefix, in key order.
PrefixScan = Callable[[bytes], Iterable[tuple[bytes, bytes]]]
# The device-events partition of a device key.
PartitionOf = Callable[[str], int]


def decode_control_value(key: str, raw: bytes) -> Record:
    if not raw.startswith(_AVRO_MARKER):  # index entries written as JSON by early versions
        value: Record = json.loads(raw)
        return value
    return CODEC.decode_as(schema_of_key(key), raw)


def encode_control_value(key: str, record: Record) -> bytes:
    return CODEC.encode(schema_of_key(key), record)


class TableControlStore:
    """ControlPlane's view of the control table (values are Avro records named by key)."""

    def __init__(self, table: Table, scan: PrefixScan) -> None:
        self.table = table
        self._scan = scan

    def get(self, key: str) -> Record | None:
        raw = self.table.get(key.encode())
        if raw is None:
            return None
        return decode_control_value(key, raw)

    def scan(self, prefix: str) -> Iterator[tuple[str, Record]]:
        for raw_key, raw in self._scan(prefix.encode()):
            key = raw_key.decode()
            yield key, decode_control_value(key, raw)

    def keys(self, prefix: str) -> Iterator[str]:
        for raw_key, _ in self._scan(prefix.encode()):
            yield raw_key.decode()

    def put(self, key: str, record: Record | None) -> None:
        if record is None:
            if key.encode() in self.table:
                del self.table[key.encode()]
        else:
            self.table[key.encode()] = encode_control_value(key, record)


def result_json(outcome: Outcome) -> str:
    """CommandResult.data_json: the answer's Data, or Data plus top-level fields."""
    if not outcome.top:
        return json.dumps(outcome.data)
    return json.dumps({"_otaflow_body": True, "Data": outcome.data, **outcome.top})


#: How long a used signature nonce is remembered, by the commands' event time: the API
#: accepts a request only within 15 minutes of its signed date, so after 30 minutes
#: a replay fails the date check anyway.
NONCE_TTL_MS = 30 * 60 * 1000
NONCE_PREFIX = "nonce/"


def nonce_key(nonce: str) -> str:
    """``nonce`` is ``{signed date, 13-digit ms}/{AccessKey}/{nonce}`` (the API's form):
    keys sort by date, so the expired ones are a prefix of the scan."""
    return NONCE_PREFIX + nonce


class NonceExpiry:
    """Forgets used nonces once they are too old to be replayed (see ``NONCE_TTL_MS``)."""

    def __init__(self, table: Table, scan: PrefixScan) -> None:
        self.table = table
        self._scan = scan
        self.purged_at = 0

    def purge(self, now: int) -> None:
        """Forget nonces signed more than ``NONCE_TTL_MS`` before ``now`` (at most once a
        minute)."""
        if now - self.purged_at < 60_000:
            return
        self.purged_at = now
        cutoff = f"{NONCE_PREFIX}{max(now - NONCE_TTL_MS, 0):013d}"
        stale: list[bytes] = []
        for raw_key, _ in self._scan(NONCE_PREFIX.encode()):
            if raw_key.decode() >= cutoff or len(stale) >= 100_000:
                break
            stale.append(raw_key)
        for raw_key in stale:
            del self.table[raw_key]


def failure(request_id: str, now: int, code: str, message: str) -> Record:
    return {
        "request_id": request_id,
        "success": False,
        "code": code,
        "message": message,
        "data_json": "null",
        "event_time": now,
    }


def expired(command: dict[str, Any]) -> bool:
    """The API told its caller the call failed (503) once ``deadline`` passed; a command
    applied after that would be a write nobody was told about (and a retry would make
    it twice). Wall clock on purpose: the deadline is the caller's, not the stream's."""
    deadline = command.get("deadline")
    return deadline is not None and time.time() * 1000 > deadline


@dataclass
class PreparedOutcome:
    """An outcome's records, all encoded (see ``prepare_outcome``)."""

    table: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    batches: list[tuple[bytes, bytes]] = field(default_factory=list)
    # (batch id, RateEvent for the rate agent, envelope for every device partition)
    controls: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    broadcasts: list[bytes] = field(default_factory=list)
    per_partition: dict[int, list[bytes]] = field(default_factory=dict)
    # INFO lines for the operator, written once the outcome is applied.
    logged: list[str] = field(default_factory=list)
    # (key, record) for the public rollout-trigger topic.
    public: list[tuple[bytes, bytes]] = field(default_factory=list)


def prepare_outcome(outcome: Outcome, partition_of: PartitionOf) -> PreparedOutcome:
    out = PreparedOutcome()
    for key, record in outcome.writes.items():
        value = None if record is None else encode_control_value(key, record)
        out.table.append((key.encode(), value))
    for batch in outcome.batches:
        out.batches.append((batch["batch_id"].encode(), CODEC.encode("Batch", batch)))
    for control in outcome.controls:
        batch = control["batch"]
        rate_event = CODEC.encode("RateEvent", {"body": ("otaflow.BatchControl", control)})
        envelope = CODEC.encode(
            "DeviceEventBatch", {"items": [CODEC.encode("BatchControl", control)]}
        )
        out.controls.append((batch["batch_id"].encode(), rate_event, envelope))
        out.logged.append(
            f"worker: batch {batch['batch_id']} {control['action']} "
            f"({batch['kind']}, status {batch['status']})"
        )
    for _topic, key, schema, record in outcome.public_records:
        # One public topic so far (ota.rollout.triggers).
        out.public.append((key.encode(), CODEC.encode(schema, record)))
    for schema, record in outcome.broadcasts:
        out.broadcasts.append(
            CODEC.encode("DeviceEventBatch", {"items": [CODEC.encode(schema, record)]})
        )
    per_partition: dict[int, list[bytes]] = defaultdict(list)
    for item in outcome.device_items:
        partition = partition_of(device_key(item.product_key, item.device_name))
        per_partition[partition].append(CODEC.encode(item.schema, item.record))
    for targets in outcome.targets:
        for name in targets.device_names:
            partition = partition_of(device_key(targets.product_key, name))
            target = {
                "batch_id": targets.batch_id,
                "product_key": targets.product_key,
                "device_name": name,
                "event_time": targets.event_time,
            }
            per_partition[partition].append(CODEC.encode("BatchTarget", target))
    for partition, schema, record in outcome.partition_items:
        per_partition[partition].append(CODEC.encode(schema, record))
    out.per_partition = dict(per_partition)
    return out


def envelopes(items: list[bytes], limit: int = ENVELOPE_LIMIT) -> Iterator[bytes]:
    """Pack items into as few DeviceEventBatch records as stay under ``limit`` bytes."""
    chunk: list[bytes] = []
    size = 0
    for item in items:
        if chunk and size + len(item) + 8 > limit:
            yield CODEC.encode("DeviceEventBatch", {"items": chunk})
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 8  # Avro's length prefix per item, generously
    if chunk:
        yield CODEC.encode("DeviceEventBatch", {"items": chunk})
