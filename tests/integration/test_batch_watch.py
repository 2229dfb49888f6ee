"""``otaflow batch watch`` against a real deployment: it follows a static batch through
its rollout and ends, with status 0, once every task is finished."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.conftest import REPO, Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import MINUTE, create_package

pytestmark = pytest.mark.integration


def test_watch_follows_a_static_batch_until_every_task_is_finished(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    otaflow.start("api", "-m", "otaflow.api_main")
    pk = "pkWatch"
    devices = [f"w{i}" for i in range(4)]
    for dn in devices:
        otaflow.report(pk, dn, "VERSION", T0 + 1000, version="1.0")
    otaflow.flush()
    events = otaflow.task_events()
    firmware_id = create_package(otaflow, pk)
    # The devices are known to the engine before the batch fans out over them.
    otaflow.tick(T0 + 2000)
    job = otaflow.call(
        "CreateOTAStaticUpgradeJob",
        T0 + 3000,
        ProductKey=pk,
        FirmwareId=firmware_id,
        TargetSelection="ALL",
        MaximumPerMinute=100,
        **{"SrcVersion.1": "1.0"},
    )
    job_id = str(job["JobId"])
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otaflow.cli",
            "batch",
            "watch",
            job_id,
            "--endpoint",
            f"http://127.0.0.1:{otaflow.settings.api_port}",
            "--interval",
            "0.5",
            "--timeout",
            "240",
        ],
        env=otaflow.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        events.wait_for(lambda v: sum(e["status"] == "QUEUED" for e in v) == 4, what="queued")
        otaflow.tick(T0 + 5 * MINUTE)
        events.wait_for(lambda v: sum(e["status"] == "NOTIFIED" for e in v) == 4, what="pushed")
        assert watch.poll() is None, "the watch ended while tasks were unfinished"
        for dn in devices[:3]:
            otaflow.report(pk, dn, "VERSION", T0 + 6 * MINUTE, version="2.0")
        otaflow.report(pk, devices[3], "PROGRESS", T0 + 6 * MINUTE, step=-2, desc="http 500")
        otaflow.flush()
        output, _ = watch.communicate(timeout=240)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, output
    first = output.splitlines()[0]
    assert first.startswith(f"{job_id} IN_PROGRESS"), output
    assert "Succeeded=3 Failed=1" in output
    assert "4/4 finished" in output, output
