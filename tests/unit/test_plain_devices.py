"""One definition of a plain device (``otaflow.domain.devices.is_plain``): the byte
paths' reader of the stored layout, the encoder's compact layout and the engine's
version-report shortcut all agree with it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from otaflow.codec import codec
from otaflow.device_avro import decode_device_state, encode_device_state, plain_layout
from otaflow.domain.devices import DeviceState, is_plain, plain_but_tasks
from otaflow.domain.engine import DeviceEngine
from otaflow.domain.simulation import Partition
from otaflow.domain.tasks import Task, TaskStatus

NAMES = st.sampled_from(["pk", "d1", "default", "mcu", "1.0", "x" * 70])


def task() -> Task:
    return Task("t1", "b1", "default", "2.0", TaskStatus.QUEUED, created_at=1, updated_at=1)


STATES = st.builds(
    DeviceState,
    product_key=st.sampled_from(["pk", "p" * 70]),
    device_name=NAMES,
    online=st.booleans(),
    modules=st.dictionaries(NAMES, NAMES, max_size=2),
    tasks=st.sampled_from([[], [task()]]),
    match_counts=st.sampled_from([{}, {"b1": 1}]),
    last_seen=st.integers(0, 2**41),
    registered=st.booleans(),
    province=st.sampled_from([None, "zj"]),
    city=st.sampled_from([None, "hz"]),
    groups=st.sampled_from([[], ["g"]]),
    dynamic_groups=st.sampled_from([[], ["dg"]]),
    group_matches=st.sampled_from([[], ["b2"]]),
)


def short(state: DeviceState) -> bool:
    texts = [state.product_key, state.device_name, *state.modules, *state.modules.values()]
    return all(len(text.encode()) < 64 for text in texts)


@given(STATES)
def test_the_byte_paths_read_exactly_the_plain_devices_of_one_module(state: DeviceState) -> None:
    raw = encode_device_state(state)
    expected = is_plain(state) and len(state.modules) == 1 and short(state)
    assert (plain_layout(raw) is not None) == expected
    assert decode_device_state(raw) == state
    # The compact encoder writes the same bytes as cavro for any state (plain or not).
    assert raw == codec().encode("DeviceState", state.to_record())


@given(STATES)
def test_the_engines_shortcut_is_taken_for_plain_devices_only(state: DeviceState) -> None:
    engine = DeviceEngine(Partition().batches, Partition().groups)
    assert engine._nothing_to_decide(state, {"module": None}) == is_plain(state)
    assert is_plain(state) == (plain_but_tasks(state) and not state.tasks)
