"""Every static scope on real Kafka, driven by the records the command agent sends."""

from __future__ import annotations

import pytest

from otaflow.domain.batches import BatchScope
from otaflow.domain.simulation import firmware, make_batch
from tests.integration.conftest import Otaflow
from tests.integration.engine_support import (
    FAST,
    T0,
    EngineDriver,
    check_task_view,
    devices_with,
    settle,
)

pytestmark = pytest.mark.integration


def test_every_static_scope(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    drive = EngineDriver(otaflow)
    # ALL: every device of the product that meets the criteria.
    for dn, version in {"a1": "1.0", "a2": "1.1", "a-dest": "2.0"}.items():
        drive.version("pkAll", dn, version, T0)
    drive.register("pkAll", "a-silent", T0)  # registered, never reported a version
    drive.version("pkElse", "a1", "1.0", T0)  # same name, other product
    # Source-version filter and a differential package.
    for dn, version in {"f1": "1.0", "f2": "1.1", "f3": "0.9"}.items():
        drive.version("pkFilter", dn, version, T0)
        drive.version("pkDiff", dn, version, T0)
    # REGIONAL: province and city from the registry.
    regions = {
        "hz": ("Zhejiang", "Hangzhou"),
        "nb": ("Zhejiang", "Ningbo"),
        "nj": ("Jiangsu", "Nanjing"),
    }
    for dn, (province, city) in regions.items():
        drive.register("pkReg", dn, T0, province=province, city=city)
        drive.version("pkReg", dn, "1.0", T0)
    # GROUP: a static tree root > child > grandchild, and a sibling.
    drive.group("root", T0)
    drive.group("child", T0, parent_id="root")
    drive.group("grandchild", T0, parent_id="child")
    drive.group("sibling", T0)
    groups = {
        "g-root": ["root"],
        "g-child": ["child"],
        "g-grand": ["sibling", "grandchild"],
        "g-sibling": ["sibling"],
        "g-none": [],
    }
    for dn, member_of in groups.items():
        drive.register("pkGrp", dn, T0, groups=member_of)
        drive.version("pkGrp", dn, "1.0", T0)
    # TARGETED and PHASED: devices named by BatchTarget records after the start.
    for i in range(10):
        drive.version("pkTgt", f"t{i}", "2.0" if i == 9 else "1.0", T0)
        drive.version("pkPh", f"p{i}", "1.0", T0)
    drive.send()

    at = T0 + 60_000
    batches = {
        "all": make_batch("all", at=at, product_key="pkAll", rate=FAST),
        "filter": make_batch(
            "filter", at=at, product_key="pkFilter", src_versions=("1.0", "0.9"), rate=FAST
        ),
        "diff": make_batch(
            "diff", at=at, product_key="pkDiff", fw=firmware(src_version="1.1"), rate=FAST
        ),
        "province": make_batch(
            "province", at=at, product_key="pkReg", scope=BatchScope.REGIONAL, region="Zhejiang"
        ),
        "group": make_batch(
            "group",
            at=at,
            product_key="pkGrp",
            scope=BatchScope.GROUP,
            group_id="root",
            group_type="STATIC",
        ),
        "targeted": make_batch("targeted", at=at, product_key="pkTgt", scope=BatchScope.TARGETED),
        "phased": make_batch(
            "phased",
            at=at,
            product_key="pkPh",
            scope=BatchScope.PHASED,
            phased_percent_thousandths=30_000,
        ),
    }
    for batch in batches.values():
        drive.start(batch)
    drive.target(batches["targeted"], ["t1", "t4", "t9", "nobody"], at + 1)
    drive.target(batches["phased"], ["p2", "p5", "p8"], at + 1)  # 30% of 10, picked upstream
    drive.send()
    # A second regional batch for one city, after the province one (override mode 2).
    by_city = make_batch(
        "city",
        at=at + 2,
        product_key="pkReg",
        scope=BatchScope.REGIONAL,
        region="Zhejiang",
        city="Ningbo",
        overwrite_mode=2,
        fw=firmware("3.0", firmware_id="f3"),
    )
    drive.start(by_city)

    expected = {
        "all": {"a1", "a2"},
        "filter": {"f1", "f3"},
        "diff": {"f2"},
        "province": {"hz", "nb"},
        "group": {"g-root", "g-child", "g-grand"},
        "targeted": {"t1", "t4"},
        "phased": {"p2", "p5", "p8"},
        "city": {"nb"},
    }
    reader = otaflow.task_events()
    total = sum(len(v) for v in expected.values()) + 1  # + nb's canceled province task
    reader.wait_for(lambda v: len(v) >= total, what="every scope's tasks")
    events = settle(reader)
    for batch_id, devices in expected.items():
        assert devices_with(events, batch_id) == devices, batch_id
    assert devices_with(events, "province", "CANCELED") == {"nb"}
    assert all(e["product_key"] != "pkElse" for e in events)
    # Tasks carry the version they update from.
    assert {e["src_version"] for e in events if e["batch_id"] == "filter"} == {"1.0", "0.9"}
    check_task_view(events)
