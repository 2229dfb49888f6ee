"""A static batch over 100,000 registered devices: every partition matches its own share."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from otaflow.device_keys import device_key
from otaflow.domain.simulation import make_batch
from otaflow.kafka_partitions import partition_for
from tests.integration.conftest import Otaflow
from tests.integration.engine_support import FAST, T0, EngineDriver

pytestmark = pytest.mark.integration

DEVICES = 100_000
PARTITIONS = 8


def test_static_batch_over_100k_devices_every_partition_does_its_share(
    make_otaflow: Callable[..., Otaflow],
) -> None:
    otaflow = make_otaflow(partitions=PARTITIONS)
    otaflow.start_worker()
    drive = EngineDriver(otaflow)
    pk = "pkFleet"
    names = [f"dev{i:06d}" for i in range(DEVICES)]
    expected: Counter[int] = Counter()
    began = time.monotonic()
    for i, dn in enumerate(names):
        drive.register(pk, dn, T0, province="Zhejiang")
        # One device in 20 is on the destination already, one in 50 never reported.
        if i % 50 == 49:
            continue
        drive.version(pk, dn, "2.0" if i % 20 == 0 else "1.0", T0 + 1)
        if i % 20 != 0:
            expected[partition_for(device_key(pk, dn).encode(), PARTITIONS)] += 1
    # Another product's devices are never read by this product's start.
    for i in range(1000):
        drive.version("pkOther", f"o{i}", "1.0", T0 + 1)
    drive.send()
    sent = time.monotonic() - began
    batch = make_batch("fleet-batch", at=T0 + 60_000, product_key=pk, rate=FAST)
    drive.start(batch)
    total = sum(expected.values())
    events = otaflow.task_events()

    def queued(values: list[dict[str, Any]]) -> int:
        return sum(e["status"] == "QUEUED" for e in values)

    events.wait_for(lambda v: queued(v) > 0, timeout=150, what="first task")
    first = time.monotonic() - began
    events.wait_for(lambda v: queued(v) >= total, timeout=150, what=f"{total} tasks")
    elapsed = time.monotonic() - began
    values = events.values()
    created = [e for e in values if e["status"] == "QUEUED"]
    # Nothing more: no task for pkOther, none on 2.0, none for the silent devices. (The
    # rate agent may already have pushed the first few: NOTIFIED.)
    assert len(created) == total
    assert len({e["task_id"] for e in created}) == total
    assert {e["status"] for e in values} <= {"QUEUED", "NOTIFIED"}
    assert {e["product_key"] for e in values} == {pk}
    per_partition = Counter(p for p, e in events.records if e["status"] == "QUEUED")
    # Each partition created exactly the tasks of its own devices (task events are keyed
    # by device, so they land on the device's partition) and every one took part.
    assert per_partition == expected
    assert set(per_partition) == set(range(PARTITIONS))
    assert min(per_partition.values()) > total / PARTITIONS * 0.8
    print(
        f"\n{DEVICES:,} devices registered and {total:,} tasks created in {elapsed:.1f}s "
        f"(registrations and reports encoded and written in {sent:.1f}s, "
        f"first task after {first:.1f}s)"
    )
