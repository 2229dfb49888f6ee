"""A static START's outcome for plain devices (``otaflow.domain.start_by_kind``) applied to
their stored Avro bytes, with the task event written from a template.

Through objects each device of a fleet-wide START costs a state decode, the engine's
checks, a task, a task event record and a state encode (~30 us here with the writes);
here the engine's answer for the device's kind is encoded once, and each device's new
state and task event are spliced from its stored bytes and that template: the task
goes into the empty task list, the task id and the device name into the event.

It must reach exactly the bytes the object path writes: ``tests/unit/test_start_by_kind.py``
compares the two. A device not in the plain layout, or of a kind the domain leaves to
the engine, returns None and goes through the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from otaflow.codec import HEADER_LEN
from otaflow.device_avro import (
    TASK_EVENT_HEADER,
    encode_string,
    encode_task_event,
    encode_task_tail,
    plain_layout,
)
from otaflow.domain.start_by_kind import PROTOTYPE_NAME, PlainOutcome, PlainStart

_ONE_TASK = b"\x00\x02"  # end of modules; a task block of one entry
_TASK_ID = encode_string("0" * 20)[:1]  # a task id's length prefix (make_task_id: 20 digits)
_END_TASKS_NO_COUNTS = b"\x00\x00"


@dataclass(frozen=True, slots=True)
class _Template:
    outcome: PlainOutcome
    task_tail: bytes  # the task's encoding after its id
    event_middle: bytes  # batch id and product key, between the task id and the device name
    event_tail: bytes  # the event after the device name


class StartSplicer:
    """One START's plain devices, in bytes. ``task_events``: the events written so far,
    as records for ``produce_batch`` (``key`` and ``value``); ``queued``: their push-queue
    entries, encoded ``QueuedTask`` records of ``start.batch`` (``encode_queued_task``)."""

    def __init__(self, start: PlainStart) -> None:
        self.start = start
        self._product = encode_string(start.batch.product_key)
        self.task_events: list[dict[str, bytes]] = []
        self.queued: list[bytes] = []
        # The bytes a kind is told by (online, module, version, registered) -> its template.
        self._templates: dict[bytes, _Template | None] = {}

    def apply(self, key: str, raw: bytes, key_bytes: bytes | None = None) -> bytes | None:
        """The device's new state (``raw`` itself when START leaves it as it is), or None:
        the engine must see this device. ``key_bytes``: ``key`` in UTF-8, when known."""
        layout = plain_layout(raw)
        if layout is None:
            return None
        product_end, names_end, module_end, version_end, _, registered = layout
        if raw[HEADER_LEN:product_end] != self._product:
            return None  # the scan's prefix says the product; the state must agree
        kind = raw[names_end:version_end] + raw[registered : registered + 1]
        if kind in self._templates:
            template = self._templates[kind]
        else:
            template = self._templates[kind] = self._template(
                raw, names_end, module_end, version_end, registered
            )
        if template is None:
            return None
        outcome = template.outcome
        if outcome.task is None:
            return raw
        # The id's 20 hex digits, as an Avro string (its length is the one byte _TASK_ID).
        if key_bytes is None:
            key_bytes = key.encode()
        task_id_bytes = _TASK_ID + self.start.task_id_ascii(key_bytes)
        device_name = raw[product_end:names_end]  # as an Avro string: length and UTF-8
        if not device_name.isascii():  # platform names are; anything else must be UTF-8
            try:
                device_name[1:].decode()
            except UnicodeDecodeError:
                return None
        self.task_events.append(
            {
                "key": key_bytes,
                "value": b"".join(
                    (
                        TASK_EVENT_HEADER,
                        task_id_bytes,
                        template.event_middle,
                        device_name,
                        template.event_tail,
                    )
                ),
            }
        )
        if outcome.queued:
            self.queued.append(task_id_bytes + self._product + device_name)
        self.start.started(key, outcome)
        return b"".join(
            (
                raw[:version_end],
                _ONE_TASK,
                task_id_bytes,
                template.task_tail,
                _END_TASKS_NO_COUNTS,
                raw[version_end + 3 :],
            )
        )

    def _template(
        self, raw: bytes, names_end: int, module_end: int, version_end: int, registered: int
    ) -> _Template | None:
        try:
            module = raw[names_end + 3 : module_end].decode()
            version = raw[module_end + 1 : version_end].decode()
        except UnicodeDecodeError:
            return None
        outcome = self.start.outcome(raw[names_end] == 1, module, version, raw[registered] == 1)
        if outcome is None:
            return None
        if outcome.task is None or outcome.event is None:
            return _Template(outcome, b"", b"", b"")
        event = outcome.event
        prototype = encode_task_event(event)
        head = TASK_EVENT_HEADER + encode_string(event["task_id"])
        middle = encode_string(event["batch_id"]) + encode_string(event["product_key"])
        name = encode_string(PROTOTYPE_NAME)
        if not prototype.startswith(head + middle + name):
            return None  # the event's field order changed: device_avro refuses to import first
        return _Template(
            outcome,
            encode_task_tail(outcome.task),
            middle,
            prototype[len(head) + len(middle) + len(name) :],
        )
