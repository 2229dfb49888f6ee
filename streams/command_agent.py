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
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from otaflow.codec import DecodeError, codec
from otaflow.control.common import Outcome, Record, schema_of_key
from otaflow.control.errors import ApiError
from otaflow.control.plane import ControlPlane
from otaflow.packages import PackageStore, file_path_of_url
from otaflow.partitioning import device_key, partition_for
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
from streams.partition_scan import scan_partition

CODEC = codec()
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
        for raw_key, raw in scan_partition(control_state, 0, prefix.encode()):
            key = raw_key.decode()
            yield key, decode_control_value(key, raw)

    def keys(self, prefix: str) -> Iterator[str]:
        for raw_key, _ in scan_partition(control_state, 0, prefix.encode()):
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
)


def result_json(outcome: Outcome) -> str:
    """CommandResult.data_json: the answer's Data, or Data plus top-level fields."""
    if not outcome.top:
        return json.dumps(outcome.data)
    return json.dumps({"_otaflow_body": True, "Data": outcome.data, **outcome.top})


async def apply_command(command: dict[str, Any]) -> None:
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
    try:
        # Off the event loop: a million-name list takes seconds to check, and the
        # worker's other agents (and its Kafka heartbeats) must keep running.
        outcome = await asyncio.to_thread(
            plane.handle, command["action"], command["params"], request_id, now
        )
    except ApiError as exc:
        result.update(success=False, code=exc.code, message=exc.message)
    else:
        remember = not outcome.read_only
        await apply_outcome(outcome)
        result["data_json"] = result_json(outcome)
    encoded = CODEC.encode("CommandResult", result)
    if remember:
        control_state[done_key] = encoded
    await command_results.send(key=request_id.encode(), value=encoded)


async def apply_outcome(outcome: Outcome) -> None:
    for key, record in outcome.writes.items():
        store.put(key, record)
    delivered = [
        await batches_topic.send(key=batch["batch_id"].encode(), value=CODEC.encode("Batch", batch))
        for batch in outcome.batches
    ]
    # Reads follow writes: the API's view finds a batch on this topic, so it is in
    # Kafka before the answer goes out (see otaflow.api.views).
    for pending in delivered:
        await pending
    for control in outcome.controls:
        await broadcast_control(control)
    for _topic, key, schema, record in outcome.public_records:
        # One public topic so far (ota.rollout.triggers).
        await rollout_triggers.send(key=key.encode(), value=CODEC.encode(schema, record))
    for schema, record in outcome.broadcasts:
        await broadcast_items([CODEC.encode(schema, record)])
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
    for partition, items in sorted(per_partition.items()):
        for envelope in envelopes(items):
            await device_events.send(key=None, partition=partition, value=envelope)


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


async def broadcast_items(items: list[bytes]) -> None:
    envelope = CODEC.encode("DeviceEventBatch", {"items": items})
    for partition in range(settings.partitions):
        await device_events.send(key=None, partition=partition, value=envelope)


async def broadcast_control(control: Record) -> None:
    """Every device partition must see the batch (each matches its own devices)."""
    # The rate agent first, so its meter knows the rate before tasks queue up.
    await rate_events.send(
        key=control["batch"]["batch_id"].encode(),
        value=CODEC.encode("RateEvent", {"body": ("otaflow.BatchControl", control)}),
    )
    await broadcast_items([CODEC.encode("BatchControl", control)])


@app.agent(commands)
async def command_agent(stream: Any) -> None:
    async for event in stream.events():
        try:
            command = CODEC.decode_as("Command", event.value)
        except DecodeError as exc:
            await send_dead_letter(f"commands/{event.message.offset}", str(exc), event.value, 0)
            continue
        await apply_command(command)
