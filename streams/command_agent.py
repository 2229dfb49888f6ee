"""Command agent: the one place control-plane calls are applied, in order.

Consumes the single-partition command topic. For each command: if its request id
was already applied (a replay after a crash), answer the stored result again;
otherwise run ``ControlPlane`` (pure), write its state changes to the changelogged
control table, publish batch definitions, broadcast batch controls to every device
partition and to the rate agent, and answer on the result topic.
"""

from __future__ import annotations

import json
from typing import Any

from otaflow.codec import DecodeError, codec
from otaflow.control.errors import ApiError
from otaflow.control.plane import ControlPlane, Record
from otaflow.packages import file_path_of_url
from streams.app import (
    app,
    batches_topic,
    command_results,
    commands,
    control_state,
    device_events,
    rate_events,
    settings,
)
from streams.effects import send_dead_letter

CODEC = codec()


class TableControlStore:
    """ControlPlane's view of the control table (values are Avro records named by key)."""

    SCHEMAS = {"firmware": "Firmware", "batch": "Batch"}

    def get(self, key: str) -> Record | None:
        raw = control_state.get(key.encode())
        if raw is None:
            return None
        return decode_control_value(key, raw)

    def put(self, key: str, record: Record) -> None:
        control_state[key.encode()] = encode_control_value(key, record)


def decode_control_value(key: str, raw: bytes) -> Record:
    schema = TableControlStore.SCHEMAS.get(key.split("/", 1)[0])
    if schema is None:
        value: Record = json.loads(raw)
        return value
    return CODEC.decode_as(schema, raw)


def encode_control_value(key: str, record: Record) -> bytes:
    schema = TableControlStore.SCHEMAS.get(key.split("/", 1)[0])
    if schema is None:
        # Small index entries (e.g. dynamic-by-firmware) are JSON documents.
        return json.dumps(record, sort_keys=True).encode()
    return CODEC.encode(schema, record)


store = TableControlStore()
plane = ControlPlane(store, file_path_of_url)


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
    try:
        outcome = plane.handle(command["action"], command["params"], request_id, now)
    except ApiError as exc:
        result.update(success=False, code=exc.code, message=exc.message)
    else:
        for key, record in outcome.writes.items():
            store.put(key, record)
        for batch in outcome.batches:
            await batches_topic.send(
                key=batch["batch_id"].encode(), value=CODEC.encode("Batch", batch)
            )
        for control in outcome.controls:
            await broadcast_control(control)
        result["data_json"] = json.dumps(outcome.data)
    encoded = CODEC.encode("CommandResult", result)
    control_state[done_key] = encoded
    await command_results.send(key=request_id.encode(), value=encoded)


async def broadcast_control(control: Record) -> None:
    """Every device partition must see the batch (each matches its own devices)."""
    item = CODEC.encode("BatchControl", control)
    envelope = CODEC.encode("DeviceEventBatch", {"items": [item]})
    # The rate agent first, so its meter knows the rate before tasks queue up.
    await rate_events.send(
        key=control["batch"]["batch_id"].encode(),
        value=CODEC.encode("RateEvent", {"body": ("otaflow.BatchControl", control)}),
    )
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
        await apply_command(command)
