"""A rollout on a running otaflow, through its control commands (``Otaflow.call``): a
package in the deployment's package store with its firmware, and a dynamic batch."""

from __future__ import annotations

import hashlib

from otaflow.packages import PackageStore
from tests.integration.conftest import Otaflow
from tests.integration.engine_support import T0

MINUTE = 60_000


def create_package(
    otaflow: Otaflow,
    pk: str,
    version: str = "2.0",
    *,
    at: int = T0,
    payload: bytes | None = None,
    **extra: str,
) -> str:
    """Store ``payload`` (a small made-up package by default) and create its firmware,
    verified already unless ``extra`` says otherwise; the firmware id.

    ``at``: the command's event time; a deployment ticking on the wall clock passes now.
    """
    if payload is None:
        payload = f"firmware {version}".encode() * 100
    store = PackageStore(otaflow.settings, root=otaflow.tmp / "packages")
    stored = store.add_bytes(f"{pk}/fw-{version}.bin", payload)
    data = otaflow.call(
        "CreateOTAFirmware",
        at,
        ProductKey=pk,
        FirmwareName=f"fw {version}",
        DestVersion=version,
        FirmwareUrl=store.url(stored.file_path),
        FirmwareSign=hashlib.sha256(payload).hexdigest(),
        SignMethod="SHA256",
        FirmwareSize=len(payload),
        **{"NeedToVerify": "false", **extra},
    )
    return str(data["FirmwareId"])


def dynamic_batch(otaflow: Otaflow, pk: str, **rate: object) -> str:
    """A package 2.0 and a dynamic batch from source version 1.0 at ``rate``; its job id."""
    firmware_id = create_package(otaflow, pk)
    job = otaflow.call(
        "CreateOTADynamicUpgradeJob",
        T0,
        FirmwareId=firmware_id,
        ProductKey=pk,
        **{"SrcVersion.1": "1.0"},
        **rate,
    )
    return str(job["JobId"])


# The rollout start_rollout begins: DEVICES devices on 1.0, a dynamic batch at RATE a minute.
RATE = 300
DEVICES = 900


def start_rollout(otaflow: Otaflow, pk: str) -> None:
    otaflow.start_worker()
    firmware_id = create_package(otaflow, pk)
    otaflow.call(
        "CreateOTADynamicUpgradeJob",
        T0,
        FirmwareId=firmware_id,
        ProductKey=pk,
        **{"SrcVersion.1": "1.0"},
        MaximumPerMinute=RATE,
    )
    for i in range(DEVICES):
        otaflow.report(pk, f"d{i}", "VERSION", T0 + 100, version="1.0")
    otaflow.flush()
    otaflow.task_events().wait_for(
        lambda v: sum(e["status"] == "QUEUED" for e in v) == DEVICES, what="queued"
    )


def tick_minute(otaflow: Otaflow, minute: int) -> None:
    tick_minutes(otaflow, minute, minute)


def tick_minutes(otaflow: Otaflow, first: int, last: int) -> None:
    """A tick every second of minutes ``first`` to ``last`` after T0 (event time)."""
    for minute in range(first, last + 1):
        for second in range(1, 61):
            otaflow.tick(T0 + minute * MINUTE + second * 1000 - 1)
