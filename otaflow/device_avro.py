"""The device agent's hottest records written as Avro by hand: ``DeviceState`` (with its
tasks), ``TaskEvent`` and the rate agent's ``TasksQueued``; and the plain device state
read back by hand.

Every report ends in one state encode. Through cavro it costs a ``to_record`` dict
plus cavro's walk over thirteen fields (~5 us here, a quarter of the worker's time
per report); this writes the same bytes straight from the dataclass: ~1.3 us for the
plain device most of a fleet is (one module, no task, group or region), ~2 us for
others (``python -m benchmarks.codec_bench``). Tasks, task events and queued tasks are
written the same way: a batch start over a fleet writes one of each per device.

The output is byte for byte what cavro writes from the schema (``codec().encode``;
``tests/unit/test_device_avro.py`` checks it on generated records). Reading: a batch
start reads every device of the fleet and a returning device is read on each report;
the plain state is parsed here (~3 vs ~5 us through cavro and ``from_record``), any
other shape or anything unexpected goes through cavro, which also gives the errors.
A state an earlier release wrote carries that release's fingerprint, which is never
this header: it is read by the codec's resolving path (``otaflow.codec``, today's
fields with their defaults), as are the byte paths' (``plain_layout`` declines it), and
the device's next write is in today's schema, on the fast path again.
The field orders below are the schemas'; ``_check_schemas`` refuses to import against a
schema that has changed, so the two cannot drift apart silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from otaflow.codec import HEADER_LEN, DecodeError, codec, definition
from otaflow.domain.devices import DeviceState, plain_but_tasks
from otaflow.domain.tasks import Task, TaskStatus

DEVICE_STATE_FIELDS = (
    "product_key",
    "device_name",
    "online",
    "modules",
    "tasks",
    "match_counts",
    "last_seen",
    "registered",
    "province",
    "city",
    "groups",
    "dynamic_groups",
    "group_matches",
)

TASK_FIELDS = (
    "task_id",
    "batch_id",
    "module",
    "src_version",
    "dest_version",
    "status",
    "progress",
    "desc",
    "created_at",
    "updated_at",
    "first_progress_at",
    "timeout_minutes",
    "retries_left",
    "retry_at",
    "in_push_queue",
)

TASK_EVENT_FIELDS = (
    "task_id",
    "batch_id",
    "product_key",
    "device_name",
    "module",
    "src_version",
    "dest_version",
    "status",
    "previous_status",
    "progress",
    "desc",
    "event_time",
    "timeout_minutes",
)

QUEUED_TASK_FIELDS = ("task_id", "product_key", "device_name")
TASKS_QUEUED_FIELDS = ("batch_id", "tasks", "event_time")

_SCHEMA = codec().schema("DeviceState")
_RATE_EVENT_SCHEMA = codec().schema("RateEvent")
_TASK_EVENT_SCHEMA = codec().schema("TaskEvent")
_HEADER = _SCHEMA.header
_TASK_SCHEMA = definition(codec().schema("Task").parsed)
# The enum's symbols in schema order: a status is written as its index.
STATUS_SYMBOLS = tuple(
    next(f["type"]["symbols"] for f in _TASK_SCHEMA["fields"] if f["name"] == "status")
)


def _check_schemas() -> None:
    body = definition(_RATE_EVENT_SCHEMA.parsed)["fields"][0]["type"]
    if body[0]["name"] != "otaflow.TasksQueued":
        raise RuntimeError("RateEvent.body's first branch is no longer TasksQueued")
    written: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        (_SCHEMA.parsed, DEVICE_STATE_FIELDS),
        (_TASK_SCHEMA, TASK_FIELDS),
        (_TASK_EVENT_SCHEMA.parsed, TASK_EVENT_FIELDS),
        (body[0], TASKS_QUEUED_FIELDS),
        (body[0]["fields"][1]["type"]["items"], QUEUED_TASK_FIELDS),
    ]
    for schema, fields in written:
        names = tuple(field["name"] for field in schema["fields"])
        if names != fields:
            raise RuntimeError(
                f"schema {schema['name']} has fields {names}; "
                f"otaflow/device_avro.py writes {fields}: update the encoder (and "
                "keep the change compatible: docs/schema-evolution.md)"
            )
    if set(STATUS_SYMBOLS) != {status.value for status in TaskStatus}:
        raise RuntimeError(f"TaskStatus symbols {STATUS_SYMBOLS} differ from the domain's")


_check_schemas()


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Avro ints and longs are zig-zag varints. Two tables make them cheap in Python:
# whole varints below 2**14 (lengths, counts, small values), and two-byte middle
# chunks (both continuation bits set) for larger ones such as millisecond times.
_SMALL = 1 << 14
_WHOLE = tuple(_varint_slow(n) for n in range(_SMALL))
_CHUNK = tuple(bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80)) for n in range(_SMALL))
_TRUE, _FALSE, _ZERO, _SOME = b"\x01", b"\x00", b"\x00", b"\x02"
# Keyed by TaskStatus, a str enum: looking a status's plain string up finds it too.
_STATUS = {TaskStatus(symbol): _WHOLE[i << 1] for i, symbol in enumerate(STATUS_SYMBOLS)}
# The parts of a plain device state (``_encode_plain``) that are the same for every device.
NO_TASKS_OR_COUNTS = b"\x00\x00\x00"  # end of modules; empty tasks; empty match counts
NO_REGION_OR_GROUPS = b"\x00\x00\x00\x00\x00"  # province, city null; three empty lists


def _unsigned(n: int) -> bytes:
    """The varint of a non-negative (already zig-zagged) number."""
    if n < _SMALL:
        return _WHOLE[n]
    if n < 1 << 42:  # unrolled: millisecond times (zig-zagged: until 2039) and less
        if n < 1 << 28:
            return _CHUNK[n & 0x3FFF] + _WHOLE[n >> 14]
        return _CHUNK[n & 0x3FFF] + _CHUNK[(n >> 14) & 0x3FFF] + _WHOLE[n >> 28]
    out = b""
    while n >= _SMALL:
        out += _CHUNK[n & (_SMALL - 1)]
        n >>= 14
    return out + _WHOLE[n]


def _long(n: int) -> bytes:
    return _unsigned((n << 1) ^ (n >> 63))


# For otaflow.plain_reports and otaflow.start_splicer, which splice plain device states
# and task events from bytes.
STATE_HEADER = _HEADER
TASK_EVENT_HEADER = _TASK_EVENT_SCHEMA.header


# Product keys, module names and versions repeat across a fleet: their encodings
# (length prefix and bytes) are kept, up to a bound so arbitrary strings cannot grow it.
_REPEATED_MAX = 4096
_repeated: dict[str, bytes] = {}


def _string(text: str) -> bytes:
    raw = text.encode()
    return _unsigned(len(raw) << 1) + raw


encode_string = _string
encode_long = _long


def _repeated_string(text: str) -> bytes:
    encoded = _repeated.get(text)
    if encoded is None:
        encoded = _string(text)
        if len(_repeated) < _REPEATED_MAX:
            _repeated[text] = encoded
    return encoded


def encode_device_state(state: DeviceState) -> bytes:
    """The single-object Avro encoding of ``state`` (header included)."""
    if state.modules and plain_but_tasks(state):  # plain, with its module
        return _encode_plain(state)
    return _encode_any(state)


def _encode_plain(state: DeviceState) -> bytes:
    """A plain device of one module (``otaflow.domain.devices.plain_but_tasks``), tasks or not."""
    repeated = _repeated.get
    ((module, version),) = state.modules.items()
    tasks = state.tasks
    if not tasks:
        return b"".join(
            (
                _HEADER,
                repeated(state.product_key) or _repeated_string(state.product_key),
                _string(state.device_name),
                _TRUE if state.online else _FALSE,
                b"\x02",  # modules: one entry
                repeated(module) or _repeated_string(module),
                repeated(version) or _repeated_string(version),
                NO_TASKS_OR_COUNTS,
                _long(state.last_seen),
                _TRUE if state.registered else _FALSE,
                NO_REGION_OR_GROUPS,
            )
        )
    parts = [
        _HEADER,
        repeated(state.product_key) or _repeated_string(state.product_key),
        _string(state.device_name),
        _TRUE if state.online else _FALSE,
        b"\x02",
        repeated(module) or _repeated_string(module),
        repeated(version) or _repeated_string(version),
        b"\x00",  # end of modules
        _unsigned(len(tasks) << 1),
    ]
    for task in tasks:
        _add_task(task, parts)
    parts += (
        b"\x00\x00",  # end of tasks; no match counts
        _long(state.last_seen),
        _TRUE if state.registered else _FALSE,
        NO_REGION_OR_GROUPS,
    )
    return b"".join(parts)


def _encode_any(state: DeviceState) -> bytes:
    repeated = _repeated.get
    parts = [
        _HEADER,
        repeated(state.product_key) or _repeated_string(state.product_key),
        _string(state.device_name),
        _TRUE if state.online else _FALSE,
    ]
    add = parts.append
    # Maps and arrays: one block (count, items) then the zero count that ends them.
    if state.modules:
        add(_unsigned(len(state.modules) << 1))
        for module, version in state.modules.items():
            add(repeated(module) or _repeated_string(module))
            add(repeated(version) or _repeated_string(version))
    add(_ZERO)
    if state.tasks:
        add(_unsigned(len(state.tasks) << 1))
        for task in state.tasks:
            _add_task(task, parts)
    add(_ZERO)
    if state.match_counts:
        add(_unsigned(len(state.match_counts) << 1))
        for batch_id, count in state.match_counts.items():
            add(_string(batch_id))
            add(_long(count))
    add(_ZERO)
    add(_long(state.last_seen))
    add(_TRUE if state.registered else _FALSE)
    for optional in (state.province, state.city):
        if optional is None:
            add(_ZERO)  # union branch 0: null
        else:
            add(_SOME)
            add(repeated(optional) or _repeated_string(optional))
    for names in (state.groups, state.dynamic_groups, state.group_matches):
        if names:
            add(_unsigned(len(names) << 1))
            for name in names:
                add(_string(name))
        add(_ZERO)
    return b"".join(parts)


def _add_task(task: Task, parts: list[bytes]) -> None:
    repeated = _repeated.get
    # Union branches: null is index 0 (byte 0), the value index 1 (byte 2) then the value.
    parts += (
        _string(task.task_id),
        repeated(task.batch_id) or _repeated_string(task.batch_id),
        repeated(task.module) or _repeated_string(task.module),
        _ZERO
        if task.src_version is None
        else _SOME + (repeated(task.src_version) or _repeated_string(task.src_version)),
        repeated(task.dest_version) or _repeated_string(task.dest_version),
        _STATUS[task.status],
        _long(task.progress),
        _string(task.desc) if task.desc else _ZERO,
        _long(task.created_at),
        _long(task.updated_at),
        _ZERO if task.first_progress_at is None else _SOME + _long(task.first_progress_at),
        _ZERO if task.timeout_minutes is None else _SOME + _long(task.timeout_minutes),
        _long(task.retries_left),
        _ZERO if task.retry_at is None else _SOME + _long(task.retry_at),
        _TRUE if task.in_push_queue else _FALSE,
    )


def encode_task_tail(task: Task) -> bytes:
    """A task's encoding after its id (its first field)."""
    parts: list[bytes] = []
    _add_task(task, parts)
    return b"".join(parts[1:])


def encode_task_event(event: Mapping[str, Any]) -> bytes:
    """The single-object Avro encoding of a ``TaskEvent`` record (every field present)."""
    repeated = _repeated.get
    src, previous, desc = event["src_version"], event["previous_status"], event["desc"]
    return b"".join(
        (
            _TASK_EVENT_SCHEMA.header,
            _string(event["task_id"]),
            repeated(event["batch_id"]) or _repeated_string(event["batch_id"]),
            repeated(event["product_key"]) or _repeated_string(event["product_key"]),
            _string(event["device_name"]),
            repeated(event["module"]) or _repeated_string(event["module"]),
            _ZERO if src is None else _SOME + (repeated(src) or _repeated_string(src)),
            repeated(event["dest_version"]) or _repeated_string(event["dest_version"]),
            _STATUS[event["status"]],
            _ZERO if previous is None else _SOME + _STATUS[previous],
            _long(event["progress"]),
            _string(desc) if desc else _ZERO,
            _long(event["event_time"]),
            _long(event.get("timeout_minutes", -1)),
        )
    )


def decode_device_state(raw: bytes) -> DeviceState:
    """A ``DeviceState`` from its single-object encoding; ``DecodeError`` if it is not one."""
    state = _decode_plain(raw)
    if state is not None:
        return state
    # Not today's plain layout, or written by an earlier release: the codec resolves it.
    record = codec().decode_as("DeviceState", raw)
    try:
        return DeviceState.from_record(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"not a device state: {exc}") from exc


def read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` (IndexError past the end) and the position after;
    -1 for one wider than 64 bits (cavro reads those as something else: leave them to it)."""
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        if shift == 63 and byte > 1:
            return -1, pos
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


# (end of the product key, of the device name, of the module, of the version; the
# last_seen varint as read, unsigned; the position of ``registered``)
PlainLayout = tuple[int, int, int, int, int, int]


def plain_layout(raw: bytes) -> PlainLayout | None:
    """Where the parts of a plain device state are (``otaflow.domain.devices.is_plain``,
    one module), with every string under 64 bytes (a one-byte length); None for any
    other bytes. UTF-8 is not checked.

    The one reader of that layout: the state decoder below, and the byte paths that
    splice new states from stored ones (``otaflow.plain_reports``, ``start_splicer``).
    """
    try:
        if raw[:HEADER_LEN] != _HEADER:
            return None
        n = raw[HEADER_LEN]
        if n & 0x81:  # a zig-zag length is even; one byte means under 64
            return None
        product_end = HEADER_LEN + 1 + (n >> 1)
        n = raw[product_end]
        if n & 0x81:
            return None
        names_end = product_end + 1 + (n >> 1)
        if raw[names_end] > 1 or raw[names_end + 1] != 2:  # online; modules: one entry
            return None
        n = raw[names_end + 2]
        if n & 0x81:
            return None
        module_end = names_end + 3 + (n >> 1)
        n = raw[module_end]
        if n & 0x81:
            return None
        version_end = module_end + 1 + (n >> 1)
        if raw[version_end : version_end + 3] != NO_TASKS_OR_COUNTS:
            return None
        last_seen, registered = read_varint(raw, version_end + 3)
        if last_seen < 0 or raw[registered] > 1 or raw[registered + 1 :] != NO_REGION_OR_GROUPS:
            return None
    except IndexError:
        return None
    return product_end, names_end, module_end, version_end, last_seen, registered


def _decode_plain(raw: bytes) -> DeviceState | None:
    """The plain device without tasks, with short strings, else None."""
    layout = plain_layout(raw)
    if layout is None:
        return None
    product_end, names_end, module_end, version_end, last_seen, registered = layout
    try:
        product_key = raw[HEADER_LEN + 1 : product_end].decode()
        device_name = raw[product_end + 1 : names_end].decode()
        module = raw[names_end + 3 : module_end].decode()
        version = raw[module_end + 1 : version_end].decode()
    except UnicodeDecodeError:
        return None
    return DeviceState(
        product_key,
        device_name,
        online=raw[names_end] == 1,
        modules={module: version},
        last_seen=(last_seen >> 1) ^ -(last_seen & 1),
        registered=raw[registered] == 1,
    )


def encode_queued_task(task: Mapping[str, Any]) -> bytes:
    """One ``QueuedTask`` (a dict), as ``encode_tasks_queued_from`` takes it: its fields'
    encodings one after the other (``otaflow.start_splicer`` writes them from bytes)."""
    product_key = task["product_key"]
    return b"".join(
        (
            _string(task["task_id"]),
            _repeated.get(product_key) or _repeated_string(product_key),
            _string(task["device_name"]),
        )
    )


def encode_tasks_queued(batch_id: str, tasks: Sequence[Mapping[str, Any]], now: int) -> bytes:
    """A ``RateEvent`` whose body is ``TasksQueued`` (``QueuedTask`` records as dicts)."""
    return encode_tasks_queued_from(batch_id, [encode_queued_task(t) for t in tasks], now)


def encode_tasks_queued_from(batch_id: str, encoded: Sequence[bytes], now: int) -> bytes:
    """A ``RateEvent`` whose body is ``TasksQueued``, from encoded ``QueuedTask`` records."""
    parts = [
        _RATE_EVENT_SCHEMA.header,
        _ZERO,  # union branch 0: TasksQueued
        _string(batch_id),
    ]
    if encoded:
        parts.append(_unsigned(len(encoded) << 1))
        parts += encoded
    parts += (_ZERO, _long(now))
    return b"".join(parts)
