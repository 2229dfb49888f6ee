"""The version-report fast path reaches exactly the state and effects of the full path."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from otaflow.domain.devices import DeviceState
from otaflow.domain.engine import DeviceEngine, Effects
from otaflow.domain.simulation import PK, Partition, dynamic_batch, firmware, group_batch

T = 9_000_000


def engine_with(which: str) -> DeviceEngine:
    p = Partition()
    if which == "version-batch-on-module":
        p.start(dynamic_batch("V", ["1.0"], at=T - 10))
    elif which == "version-batch-other-module":
        p.start(dynamic_batch("M", ["1.0"], at=T - 10, fw=firmware(module="wifi")))
    elif which == "group-batch":
        # d1 is a member: a version report makes it join and match.
        p.group("dg1", T - 20, expression="name like 'd%'")
        p.start(group_batch("G", "dg1", at=T - 10))
    return DeviceEngine(p.batches, p.groups)


def effects(fx: Effects) -> tuple[Any, ...]:
    return (fx.task_events, dict(fx.queued), fx.notifications, fx.succeeded, fx.touched)


@given(
    which=st.sampled_from(
        ["none", "version-batch-on-module", "version-batch-other-module", "group-batch"]
    ),
    new_device=st.booleans(),
    online=st.booleans(),
    modules=st.dictionaries(st.sampled_from(["default", "wifi"]), st.sampled_from(["0.9", "1.0"])),
    last_seen=st.integers(0, T + 100),
    version=st.one_of(st.none(), st.sampled_from(["1.0", "1.1", "2.0"])),
    module=st.one_of(st.none(), st.just("default"), st.just("wifi")),
    dynamic_groups=st.sampled_from([[], ["dg1"]]),
)
def test_fast_and_full_paths_agree(
    which: str,
    new_device: bool,
    online: bool,
    modules: dict[str, str],
    last_seen: int,
    version: str | None,
    module: str | None,
    dynamic_groups: list[str],
) -> None:
    engine = engine_with(which)
    state = (
        None
        if new_device
        else DeviceState(
            PK,
            "d1",
            online=online,
            modules=modules,
            last_seen=last_seen,
            dynamic_groups=list(dynamic_groups),
        )
    )
    report = {
        "product_key": PK,
        "device_name": "d1",
        "kind": "VERSION",
        "module": module,
        "version": version,
        "step": None,
        "desc": None,
        "message_id": None,
        "event_time": T,
    }
    fast_fx, full_fx = Effects(), Effects()
    fast = engine.on_report(copy.deepcopy(state), report, fast_fx)
    full = engine._on_report(copy.deepcopy(state) or DeviceState(PK, "d1"), report, full_fx)
    assert fast == full
    assert effects(fast_fx) == effects(full_fx)


def test_the_fast_path_is_taken_only_when_nothing_can_match() -> None:
    quiet = engine_with("none")
    assert quiet._nothing_to_decide(DeviceState(PK, "d1"), {"module": None})
    busy = engine_with("version-batch-on-module")
    assert not busy._nothing_to_decide(DeviceState(PK, "d1"), {"module": None})
    assert not quiet._nothing_to_decide(DeviceState(PK, "d1", group_matches=["G"]), {})
