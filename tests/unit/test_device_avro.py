"""The hand-written encoders write exactly what cavro writes from the schemas."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from otaflow.codec import DecodeError, codec, definition
from otaflow.device_avro import (
    STATUS_SYMBOLS,
    TASK_EVENT_FIELDS,
    TASK_FIELDS,
    _decode_plain,
    _long,
    _varint_slow,
    decode_device_state,
    encode_device_state,
    encode_task_event,
    encode_tasks_queued,
)
from otaflow.domain.devices import DeviceState
from otaflow.domain.tasks import Task, TaskStatus

# Every range the encoder's varint tables treat apart (2**14, 2**28, 2**42), and beyond.
LONGS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    *(st.integers(min_value=-(2**bits), max_value=2**bits) for bits in (13, 14, 27, 28, 41, 42)),
)
INTS = st.integers(min_value=-(2**31), max_value=2**31 - 1)
# Short and long texts: lengths cross the encoder's small-number table (2**14 bytes),
# with multi-byte characters so bytes and characters differ.
LONG_TEXT = st.builds(lambda n, c: c * n, st.integers(6000, 20000), st.sampled_from("aé€"))
TEXT = st.one_of(st.text(max_size=12), LONG_TEXT)
NAMES = st.lists(st.text(max_size=10), max_size=4)

tasks = st.builds(
    Task,
    task_id=st.text(max_size=20),
    batch_id=st.text(max_size=12),
    module=st.text(max_size=8),
    dest_version=st.text(max_size=8),
    status=st.sampled_from(list(TaskStatus)),
    created_at=LONGS,
    updated_at=LONGS,
    src_version=st.none() | st.text(max_size=8),
    progress=INTS,
    desc=st.text(max_size=20),
    first_progress_at=st.none() | LONGS,
    timeout_minutes=st.none() | INTS,
    retries_left=INTS,
    retry_at=st.none() | LONGS,
    in_push_queue=st.booleans(),
)

states = st.builds(
    DeviceState,
    product_key=TEXT,
    device_name=TEXT,
    online=st.booleans(),
    modules=st.dictionaries(st.text(max_size=8), TEXT, max_size=4),
    tasks=st.lists(tasks, max_size=3),
    match_counts=st.dictionaries(st.text(max_size=8), INTS, max_size=4),
    last_seen=LONGS,
    registered=st.booleans(),
    province=st.none() | TEXT,
    city=st.none() | st.text(max_size=8),
    groups=NAMES,
    dynamic_groups=NAMES,
    group_matches=NAMES,
)


@settings(max_examples=300, deadline=None)
@given(states)
def test_the_encoding_is_cavros_byte_for_byte(state: DeviceState) -> None:
    expected = codec().encode("DeviceState", state.to_record())
    assert encode_device_state(state) == expected
    assert DeviceState.from_record(codec().decode_as("DeviceState", expected)) == state


# The shape most of a fleet has (tasks or not), which the encoder writes by a shorter path.
plain_states = st.builds(
    DeviceState,
    product_key=TEXT,
    device_name=TEXT,
    online=st.booleans(),
    modules=st.dictionaries(st.text(max_size=8), TEXT, min_size=1, max_size=1),
    tasks=st.lists(tasks, max_size=2),
    last_seen=LONGS,
    registered=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(plain_states)
def test_a_plain_device_is_encoded_as_cavro_does(state: DeviceState) -> None:
    assert encode_device_state(state) == codec().encode("DeviceState", state.to_record())


@given(LONGS)
def test_longs_are_zigzag_varints(n: int) -> None:
    assert _long(n) == _varint_slow((n << 1) ^ (n >> 63))


def test_a_typical_device_in_bytes() -> None:
    state = DeviceState("pk", "dev-1", online=True, modules={"default": "1.0"}, last_seen=1)
    body = encode_device_state(state)[len(codec().schema("DeviceState").header) :]
    assert body == (
        b"\x04pk\x0adev-1\x01"  # names, online
        b"\x02\x0edefault\x061.0\x00"  # modules: one entry, then the end block
        b"\x00\x00"  # no tasks, no match counts
        b"\x02\x00"  # last_seen 1, not registered
        b"\x00\x00"  # province, city: null
        b"\x00\x00\x00"  # groups, dynamic groups, group matches
    )


def test_the_task_encoder_follows_the_task_schema() -> None:
    task = definition(codec().schema("Task").parsed)
    assert tuple(field["name"] for field in task["fields"]) == TASK_FIELDS
    status = next(f["type"] for f in task["fields"] if f["name"] == "status")
    assert tuple(status["symbols"]) == STATUS_SYMBOLS == tuple(s.value for s in TaskStatus)


task_events = st.fixed_dictionaries(
    {
        "task_id": st.text(max_size=20),
        "batch_id": st.text(max_size=12),
        "product_key": TEXT,
        "device_name": TEXT,
        "module": st.text(max_size=8),
        "src_version": st.none() | st.text(max_size=8),
        "dest_version": st.text(max_size=8),
        "status": st.sampled_from([s.value for s in TaskStatus]),
        "previous_status": st.none() | st.sampled_from([s.value for s in TaskStatus]),
        "progress": INTS,
        "desc": st.text(max_size=20) | LONG_TEXT,
        "event_time": LONGS,
        "timeout_minutes": st.integers(-1, 1440),
    }
)


@settings(max_examples=200, deadline=None)
@given(task_events)
def test_a_task_event_is_encoded_as_cavro_does(event: dict[str, object]) -> None:
    assert encode_task_event(event) == codec().encode("TaskEvent", event)


def test_the_task_event_encoder_follows_the_schema() -> None:
    fields = codec().schema("TaskEvent").parsed["fields"]
    assert tuple(field["name"] for field in fields) == TASK_EVENT_FIELDS


@settings(max_examples=200, deadline=None)
@given(states | plain_states)
def test_a_state_reads_back_as_written(state: DeviceState) -> None:
    assert decode_device_state(encode_device_state(state)) == state


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        DeviceState,
        product_key=st.text(max_size=20),
        device_name=st.text(max_size=20),
        online=st.booleans(),
        modules=st.dictionaries(st.text(max_size=8), st.text(max_size=8), min_size=1, max_size=1),
        last_seen=LONGS,
        registered=st.booleans(),
    )
)
def test_a_plain_state_is_read_by_the_short_path(state: DeviceState) -> None:
    assert _decode_plain(encode_device_state(state)) == state


def cavro_reading(raw: bytes) -> DeviceState | str:
    try:
        return DeviceState.from_record(codec().decode_as("DeviceState", raw))
    except (DecodeError, KeyError, TypeError, ValueError):
        return "error"


@settings(max_examples=500, deadline=None)
@given(plain_states, st.data())
def test_damaged_bytes_read_as_cavro_reads_them(state: DeviceState, data: st.DataObject) -> None:
    raw = bytearray(encode_device_state(state))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(raw) // 2, len(raw)))
    damaged = bytes(raw[:cut])
    try:
        ours: DeviceState | str = decode_device_state(damaged)
    except DecodeError:
        ours = "error"
    assert ours == cavro_reading(damaged)


@settings(max_examples=100, deadline=None)
@given(
    st.text(max_size=12),
    st.lists(
        st.fixed_dictionaries(
            {"task_id": st.text(max_size=20), "product_key": TEXT, "device_name": TEXT}
        ),
        max_size=5,
    ),
    LONGS,
)
def test_queued_tasks_are_encoded_as_cavro_does(
    batch_id: str, tasks: list[dict[str, str]], now: int
) -> None:
    body = {"batch_id": batch_id, "tasks": tasks, "event_time": now}
    expected = codec().encode("RateEvent", {"body": ("otaflow.TasksQueued", body)})
    assert encode_tasks_queued(batch_id, tasks, now) == expected
