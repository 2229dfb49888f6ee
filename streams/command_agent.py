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
import logging
from typing import Any

from otaflow.codec import DecodeError
from otaflow.control.common import Outcome, Record
from otaflow.control.errors import ApiError
from otaflow.control.plane import ControlPlane
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
from streams.command_records import (
    CODEC,
    NonceExpiry,
    PreparedOutcome,
    TableControlStore,
    encode_control_value,
    envelopes,
    expired,
    failure,
    nonce_key,
    prepare_outcome,
    result_json,
)
from streams.effects import send_dead_letter
from streams.table_scan import scan_table_partition

log = logging.getLogger("otaflow.command_agent")


def _scan_control(prefix: bytes) -> Any:
    return scan_table_partition(control_state, 0, prefix)


def _partition_of(key: str) -> int:
    return partition_for(key.encode(), settings.partitions)


_packages = PackageStore(settings)


def read_name_list(url: str) -> str:
    """A device-name list uploaded to the package store (GenerateDeviceNameListURL)."""
    path = _packages.path(file_path_of_url(url))
    if not path.is_file():
        raise FileNotFoundError(f"no uploaded file at {url}")
    return path.read_text(encoding="utf-8-sig", errors="replace")


store = TableControlStore(control_state, _scan_control)
nonces = NonceExpiry(control_state, _scan_control)
# CreateOTAFirmware takes a package's size and digests from the stored file.
plane = ControlPlane(
    store,
    file_path_of_url,
    read_name_list,
    stored_file=_packages.facts,
    device_partitions=settings.partitions,
    device_key=settings.device_key,
)


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
        nonces.purge(now)
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
        prepared = prepare_outcome(outcome, _partition_of)
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
    await write_outcome(prepare_outcome(outcome, _partition_of))


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
