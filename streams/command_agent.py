"""Command agent: the one place control-plane calls are applied, in order.

Consumes the single-partition command topic. For each command: if its request id
was already applied (a replay after a crash), answer the stored result again;
otherwise run ``ControlPlane`` (pure) and, if it passed, apply its outcome:

1. write its state changes to the changelogged control table;
2. publish batch definitions on the compacted batch topic (acknowledged before the
   answer, so the API's view can always find a batch its create answered);
3. send batch controls to the rate agent and to every device partition;
4. broadcast group changes to every device partition;
5. send device-scoped records (registrations, task commands) and ``BatchTarget``
   records to their devices' partitions, many per ``DeviceEventBatch`` envelope
   (one envelope per partition per command while it stays under ~700 KB);
6. answer on the result topic (and remember the answer under the request id).

Reads (Query*/List* of the control state) run here too, so a read answered after a
write's answer always sees that write; their answers are not remembered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from otaflow.codec import DecodeError, codec
from otaflow.control.common import Outcome, Record, schema_of_key
from otaflow.control.errors import ApiError
from otaflow.control.plane import ControlPlane
from otaflow.device_keys import device_key
from otaflow.kafka_partitions import partition_for
from otaflow.packages import PackageStore, file_path_of_url
from streams.app import (
    app,
    batches_topic,
    command_results,
    commands,
    control_state,
    device_events,
    rate_events,
    rollout_triggers,
    settings,
)
from streams.effects import send_dead_letter
from streams.table_scan import scan_table_partition

log = logging.getLogger("otaflow.worker")

CODEC = codec()
log = logging.getLogger("otaflow.command_agent")
# Kafka's default message limit is 1 MB; stay well below it with the envelope's overhead.
ENVELOPE_LIMIT = 700_000
_AVRO_MARKER = b"\xc3\x01"


def decode_control_value(key: str, raw: bytes) -> Record:
    if not raw.startswith(_AVRO_MARKER):  # index entries written as JSON by early versions
        value: Record = json.loads(raw)
        return value
    return CODEC.decode_as(schema_of_key(key), raw)


def encode_control_value(key: str, record: Record) -> bytes:
    return CODEC.encode(schema_of_key(key), record)


class TableControlStore:
    """ControlPlane's view of the control table (values are Avro records named by key)."""

    def get(self, key: str) -> Record | None:
        raw = control_state.get(key.encode())
        if raw is None:
            return None
        return decode_control_value(key, raw)

    def scan(self, prefix: str) -> Iterator[tuple[str, Record]]:
        for raw_key, raw in scan_table_partition(control_state, 0, prefix.encode()):
            key = raw_key.decode()
            yield key, decode_control_value(key, raw)

    def keys(self, prefix: str) -> Iterator[str]:
        for raw_key, _ in scan_table_partition(control_state, 0, prefix.encode()):
            yield raw_key.decode()

    def put(self, key: str, record: Record | None) -> None:
        if record is None:
            if key.encode() in control_state:
                del control_state[key.encode()]
        else:
            control_state[key.encode()] = encode_control_value(key, record)


_packages = PackageStore(settings)


def read_name_list(url: str) -> str:
    """A device-name list uploaded to the package store (GenerateDeviceNameListURL)."""
    path = _packages.path(file_path_of_url(url))
    if not path.is_file():
        raise FileNotFoundError(f"no uploaded file at {url}")
    return path.read_text(encoding="utf-8-sig", errors="replace")


store = TableControlStore()
# CreateOTAFirmware takes a package's size and digests from the stored file.
plane = ControlPlane(
    store,
    file_path_of_url,
    read_name_list,
    stored_file=_packages.facts,
    device_partitions=settings.partitions,
    device_key=settings.device_key,
)


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
_nonce_purged_at = 0


def nonce_key(nonce: str) -> str:
    """``nonce`` is ``{signed date, 13-digit ms}/{AccessKey}/{nonce}`` (the API's form):
    keys sort by date, so the expired ones are a prefix of the scan."""
    return NONCE_PREFIX + nonce


def purge_nonces(now: int) -> None:
    """Forget nonces signed more than ``NONCE_TTL_MS`` before ``now`` (at most once a minute)."""
    global _nonce_purged_at
    if now - _nonce_purged_at < 60_000:
        return
    _nonce_purged_at = now
    cutoff = f"{NONCE_PREFIX}{max(now - NONCE_TTL_MS, 0):013d}"
    stale: list[bytes] = []
    for raw_key, _ in scan_table_partition(control_state, 0, NONCE_PREFIX.encode()):
        if raw_key.decode() >= cutoff or len(stale) >= 100_000:
            break
        stale.append(raw_key)
    for raw_key in stale:
        del control_state[raw_key]


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


async def apply_command(command: dict[str, Any], raw: bytes = b"", offset: int = -1) -> None:
    """Apply one command and answer it. Never raises for a command's own content: a
    command that cannot be applied is answered with an error code, dead-lettered with
    its reason, and the agent goes on with the next one (issue 16)."""
    request_id = command["request_id"]
    now = command["event_time"]
    try:
        await _apply_command(command)
    except Exception as exc:
        log.exception("command %s (%s) could not be applied", request_id, command.get("action"))
        reason = f"{command.get('action')} could not be applied: {type(exc).__name__}: {exc}"
        await send_dead_letter(f"commands/{offset}", reason[:2000], raw, now)
        result = failure(
            request_id,
            now,
            "iot.system.SystemException",
            "The command could not be applied and was set aside (dead-letter topic).",
        )
        await command_results.send(
            key=request_id.encode(), value=CODEC.encode("CommandResult", result)
        )


async def _apply_command(command: dict[str, Any]) -> None:
    request_id = command["request_id"]
    done_key = f"request/{request_id}".encode()
    previous = control_state.get(done_key)
    if previous is not None:
        await command_results.send(key=request_id.encode(), value=previous)
        return
    now = command["event_time"]
    result: Record = {
        "request_id": request_id,
        "success": True,
        "code": None,
        "message": None,
        "data_json": "null",
        "event_time": now,
    }
    remember = True
    nonce = command.get("nonce")
    if nonce is not None:
        purge_nonces(now)
        key = nonce_key(nonce).encode()
        if key in control_state:
            # The same signed request again, through this or another API process.
            refused = failure(request_id, now, "SignatureNonceUsed", NONCE_USED_MESSAGE)
            await command_results.send(
                key=request_id.encode(), value=CODEC.encode("CommandResult", refused)
            )
            return
        control_state[key] = encode_control_value(nonce_key(nonce), {"items": [request_id]})
    if expired(command):
        await answer_expired(command)
        return
    try:
        # Off the event loop: a million-name list takes seconds to check, and the
        # worker's other agents (and its Kafka heartbeats) must keep running.
        outcome = await asyncio.to_thread(
            plane.handle, command["action"], command["params"], request_id, now
        )
    except ApiError as exc:
        result.update(success=False, code=exc.code, message=exc.message)
        prepared = None
    else:
        remember = not outcome.read_only
        result["data_json"] = result_json(outcome)
        # Every record is encoded before the first is written: a value the records
        # cannot hold fails here, with nothing half-applied.
        prepared = prepare_outcome(outcome)
    if expired(command):  # checking a large call may have taken a while
        await answer_expired(command)
        return
    encoded = CODEC.encode("CommandResult", result)
    if prepared is not None:
        await write_outcome(prepared)
    if remember:
        control_state[done_key] = encoded
    await command_results.send(key=request_id.encode(), value=encoded)


NONCE_USED_MESSAGE = "Specified signature nonce was used already."
EXPIRED_CODE = "ServiceUnavailable.Expired"


async def answer_expired(command: dict[str, Any]) -> None:
    request_id, now = command["request_id"], command["event_time"]
    result = failure(
        request_id,
        now,
        EXPIRED_CODE,
        "The command reached the command agent after its deadline and was not applied.",
    )
    encoded = CODEC.encode("CommandResult", result)
    # Remembered: a retry with the same request id gets the same answer, never a late write.
    control_state[f"request/{request_id}".encode()] = encoded
    await command_results.send(key=request_id.encode(), value=encoded)


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


def prepare_outcome(outcome: Outcome) -> PreparedOutcome:
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
        partition = partition_for(
            device_key(item.product_key, item.device_name).encode(), settings.partitions
        )
        per_partition[partition].append(CODEC.encode(item.schema, item.record))
    for targets in outcome.targets:
        for name in targets.device_names:
            partition = partition_for(
                device_key(targets.product_key, name).encode(), settings.partitions
            )
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


async def write_outcome(prepared: PreparedOutcome) -> None:
    for raw_key, value in prepared.table:
        if value is None:
            if raw_key in control_state:
                del control_state[raw_key]
        else:
            control_state[raw_key] = value
    delivered = [
        await batches_topic.send(key=batch_key, value=value)
        for batch_key, value in prepared.batches
    ]
    # Reads follow writes: the API's view finds a batch on this topic, so it is in
    # Kafka before the answer goes out (see otaflow.api.views).
    for pending in delivered:
        await pending
    for batch_key, rate_event, envelope in prepared.controls:
        # The rate agent first, so its meter knows the rate before tasks queue up;
        # then every device partition (each matches its own devices).
        await rate_events.send(key=batch_key, value=rate_event)
        await broadcast_envelope(envelope)
    for envelope in prepared.broadcasts:
        await broadcast_envelope(envelope)
    for partition, items in sorted(prepared.per_partition.items()):
        for envelope in envelopes(items):
            await device_events.send(key=None, partition=partition, value=envelope)
    for key, value in prepared.public:
        await rollout_triggers.send(key=key, value=value)
    for line in prepared.logged:
        log.info(line)


async def apply_outcome(outcome: Outcome) -> None:
    await write_outcome(prepare_outcome(outcome))


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


async def broadcast_envelope(envelope: bytes) -> None:
    for partition in range(settings.partitions):
        await device_events.send(key=None, partition=partition, value=envelope)


@app.agent(commands)
async def command_agent(stream: Any) -> None:
    async for event in stream.events():
        try:
            command = CODEC.decode_as("Command", event.value)
        except DecodeError as exc:
            await send_dead_letter(f"commands/{event.message.offset}", str(exc), event.value, 0)
            continue
        await apply_command(command, event.value, event.message.offset)
