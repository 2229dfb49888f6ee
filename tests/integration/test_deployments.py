"""Two deployments side by side on one Kafka, one Mosquitto and one host, each named by
OTAFLOW_DEPLOYMENT alone: neither sees the other's records, groups or state, both roll
out, and `otaflow devstack prune --deployment` removes one and leaves the other."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from otaflow import topics
from tests.integration.conftest import REPO, Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import create_package, dynamic_batch
from tests.mqtt_logins import service_client

pytestmark = pytest.mark.integration


def _name() -> str:
    # "t" and 8 hex digits: a name `otaflow devstack prune` also takes for a test's.
    return f"t{uuid.uuid4().hex[:8]}"


def _wait(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _topics(otaflow: Otaflow) -> set[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": otaflow.settings.kafka_bootstrap})
    return {n for n in admin.list_topics(timeout=30).topics if topics.owner_of(otaflow.settings)(n)}


def _groups(otaflow: Otaflow) -> list[str]:
    return topics.consumer_groups_where(
        otaflow.settings.kafka_bootstrap, topics.group_owner_of(otaflow.settings)
    )


def _connected_ids(otaflow: Otaflow, name: str) -> list[str]:
    return re.findall(r"ingress (\S+): connected", otaflow.log(name))


def test_two_deployments_on_one_broker_and_host_do_not_see_each_other(
    make_otaflow: Callable[..., Otaflow],
) -> None:
    blue = make_otaflow(deployment=_name())
    green = make_otaflow(deployment=_name())
    # One host: the same state root and the same instance locks for both.
    green.env["OTAFLOW_DATA"] = blue.env["OTAFLOW_DATA"]
    for deployment in (blue, green):
        deployment.start_worker()
    # Two copies of blue's ingress on this host, one of green's.
    blue.start("ingress-1", "-m", "connectors.ingress", "--leave")
    blue.start("ingress-2", "-m", "connectors.ingress", "--leave")
    green.start("ingress-1", "-m", "connectors.ingress", "--leave")

    pk = "pkSide"
    jobs = {
        "blue": dynamic_batch(blue, pk, MaximumPerMinute=100),
        "green": dynamic_batch(green, pk, MaximumPerMinute=100),
    }
    devices = {"blue": [f"blue{i}" for i in range(5)], "green": [f"green{i}" for i in range(7)]}
    for label, deployment in (("blue", blue), ("green", green)):
        for dn in devices[label]:
            deployment.report(pk, dn, "VERSION", T0 + 1000, version="1.0")
        deployment.flush()

    # Both workers work (a deployment once sat idle for minutes: its worker had joined the
    # other's consumer group), each on its own devices and its own batch only.
    for label, deployment in (("blue", blue), ("green", green)):
        wanted = len(devices[label])

        def all_queued(values: list[dict[str, Any]], wanted: int = wanted) -> bool:
            return sum(e["status"] == "QUEUED" for e in values) == wanted

        queued = deployment.task_events().wait_for(all_queued, what=f"{label}'s tasks")
        assert {e["device_name"] for e in queued} == set(devices[label])
        assert {e["batch_id"] for e in queued} == {jobs[label]}

    # MQTT: each deployment's ingress copies hold distinct client ids and share the work.
    _wait(
        "three ingresses connected",
        lambda: (
            all(_connected_ids(d, n) for d, n in ((blue, "ingress-1"), (blue, "ingress-2")))
            and bool(_connected_ids(green, "ingress-1"))
        ),
    )
    probe = service_client(blue.settings.mqtt, f"probe-{uuid.uuid4().hex}")
    probe.connect(blue.settings.mqtt.host, blue.settings.mqtt.port)
    probe.loop_start()
    blue_reports, green_reports = (
        blue.reader(topics.DEVICE_REPORTS),
        green.reader(topics.DEVICE_REPORTS),
    )

    def probe_arrived(values: list[dict[str, Any]]) -> bool:
        return any(r["device_name"] == "probe" for r in values)

    try:
        # The subscriptions are confirmed a moment after the connection: publish until
        # the probe arrives (each publish is a new report; we only count deployments).
        deadline = time.monotonic() + 60
        while not (probe_arrived(blue_reports.values()) and probe_arrived(green_reports.values())):
            assert time.monotonic() < deadline, "the probe report reached no ingress"
            probe.publish(
                f"/ota/device/inform/{pk}/probe",
                json.dumps({"id": "1", "params": {"version": "0.1"}}),
                qos=1,
            ).wait_for_publish(10)
    finally:
        probe.loop_stop()
        probe.disconnect()
    ids = _connected_ids(blue, "ingress-1") + _connected_ids(blue, "ingress-2")
    assert len(set(ids)) == 2, ids  # a client id taken twice: the broker kicks one, and on
    for name in ("ingress-1", "ingress-2"):
        assert "disconnected" not in blue.log(name), blue.log(name)
    assert all(i.startswith(f"{blue.settings.deployment}-ingress-") for i in ids)
    assert _connected_ids(green, "ingress-1")[0].startswith(f"{green.settings.deployment}-")

    # Kafka names: every topic and group of one is named after it, none after the other.
    blue_topics, green_topics = _topics(blue), _topics(green)
    assert f"{blue.settings.deployment}-devices-changelog" in blue_topics
    assert not blue_topics & green_topics
    blue_groups, green_groups = _groups(blue), _groups(green)
    assert blue.settings.deployment in blue_groups
    assert f"{blue.settings.deployment}-batcher" in blue_groups
    assert green.settings.deployment in green_groups
    assert not set(blue_groups) & set(green_groups)
    # State: one directory per deployment (and per worker copy) under the shared root.
    data = blue.tmp / "data"
    assert (data / blue.settings.deployment / "worker-0").is_dir()
    assert (data / green.settings.deployment / "worker-0").is_dir()

    # Prune blue (stopped first: a group with members stays) and nothing of green's.
    for name in list(blue.procs):
        blue.stop(name)
    pruned = subprocess.run(
        [
            sys.executable,
            "-m",
            "otaflow.cli",
            "devstack",
            "prune",
            "--deployment",
            blue.settings.deployment,
            "--json",
        ],
        env=blue.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pruned.returncode == 0, pruned.stderr + pruned.stdout
    result = json.loads(pruned.stdout.strip().splitlines()[-1])
    assert result["deleted_topics"] == len(blue_topics)
    assert set(result["deleted_groups"]) >= set(blue_groups)
    assert _topics(blue) == set()
    assert _groups(blue) == []
    assert _topics(green) == green_topics
    assert set(_groups(green)) >= {green.settings.deployment}
    # ... and green still works.
    green.report(pk, "green-late", "VERSION", T0 + 2000, version="1.0")
    green.flush()
    green.task_events().wait_for(
        lambda v: any(e["device_name"] == "green-late" for e in v), what="green's late task"
    )


# Known defect, not a flaky test: after a SIGKILL some envelopes can still be skipped and
# their tasks stay unfinished with every group caught up (about 1 run in 8 under load;
# two causes were found and fixed in streams/stream_positions.py and the rate agent, a
# third is open). Delivery is at-least-once with no transaction tying a round's state,
# effects and input offsets together: that is issue 15 item 3. Strict=False keeps the
# test running and reporting (XPASS) until then. Since streams/checkpoint.py (one commit
# owner) it passed 3 of 3 runs (XPASS), too few against 1 in 8, and the third cause was
# not found, so the mark stays.
@pytest.mark.soak
@pytest.mark.xfail(
    strict=False,
    reason="after a SIGKILL an envelope can still be skipped (issue 15 item 3: one commit owner)",
)
def test_the_scaled_shape_rolls_out_with_a_worker_killed_midway(
    make_otaflow: Callable[..., Otaflow],
) -> None:
    """3 workers, 2 ingresses, 2 egresses and one API as processes on this host (each
    copy in its own slot: client ids, state directories), simulated devices over MQTT,
    and a worker killed while pushes go out: every device still ends SUCCEEDED."""
    from benchmarks.fleet import SimulatedFleet

    deployment = make_otaflow(deployment=_name(), partitions=6, tick_interval_s=1.0)
    for i in (1, 2, 3):
        deployment.start(f"worker-{i}", "-m", "streams.worker")
    for name in ("ingress-1", "ingress-2"):
        deployment.start(name, "-m", "connectors.ingress", "--leave")
    for name in ("egress-1", "egress-2"):
        deployment.start(name, "-m", "connectors.egress")
    deployment.start("api", "-m", "otaflow.api_main")
    pk = "pkScaled"
    firmware_id = create_package(deployment, pk)
    job_id = str(
        deployment.call(
            "CreateOTADynamicUpgradeJob",
            int(time.time() * 1000),
            FirmwareId=firmware_id,
            ProductKey=pk,
            MaximumPerMinute=600,
            **{"SrcVersion.1": "1.0"},
        )["JobId"]
    )
    names = [f"s{i:03d}" for i in range(150)]
    settings = deployment.settings
    fleet = SimulatedFleet(
        settings.mqtt.host, settings.mqtt.port, pk, names, device_key=settings.device_key
    )
    fleet.start()
    events = deployment.task_events()
    try:
        # Every copy of the ingress must hold its share before the devices speak.
        _wait(
            "both ingresses connected",
            lambda: (
                bool(_connected_ids(deployment, "ingress-1"))
                and bool(_connected_ids(deployment, "ingress-2"))
            ),
        )
        fleet.report_versions()
        events.wait_for(
            lambda v: sum(e["status"] == "NOTIFIED" for e in v) >= 30,
            timeout=180,
            what="pushes under way",
        )
        deployment.stop("worker-2", kill=True)
        final = events.wait_for(
            lambda v: (
                len({e["device_name"] for e in v if e["status"] == "SUCCEEDED"}) == len(names)
            ),
            timeout=300,
            what="every device succeeded",
        )
    finally:
        fleet.stop()
    assert {e["batch_id"] for e in final} == {job_id}
    tasks_per_device: dict[str, set[str]] = {}
    for e in final:
        tasks_per_device.setdefault(e["device_name"], set()).add(e["task_id"])
    assert all(len(t) == 1 for t in tasks_per_device.values())  # none doubled by the move
    ids = _connected_ids(deployment, "ingress-1") + _connected_ids(deployment, "ingress-2")
    assert len(set(ids)) == 2, ids
    data = deployment.tmp / "data" / settings.deployment
    assert {p.name for p in data.iterdir()} >= {"worker-0", "worker-1", "worker-2"}
