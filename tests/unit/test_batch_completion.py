"""A static batch becomes COMPLETED when every task is final (issue 12), on the pure
device partition (its open-task counts) and the pure control plane (the decision)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from otaflow.codec import codec
from otaflow.device_avro import decode_device_state
from otaflow.domain.open_tasks import REPORT_EVERY_MS, OpenTaskWatch, count_tasks
from otaflow.domain.simulation import (
    MINUTE,
    PK,
    Partition,
    command_record,
    control_record,
    make_batch,
    registration_record,
    report_record,
)
from streams.device_envelopes import DevicePartition, EnvelopeRun
from streams.envelope_store import EnvelopeStore
from tests.unit.test_console_rules import package, static
from tests.unit.test_control_plane import MIN, NOW, World

T = 1_000_000
CODEC = codec()


def counts(p: Partition) -> list[tuple[int, int]]:
    """(open, probe) of every OpenTaskCount the partition sent, in order."""
    return [(r["open"], r["probe"]) for s, r in p.control_reports if s == "OpenTaskCount"]


def test_a_partition_counts_open_tasks_and_a_pending_retry_is_open() -> None:
    p = Partition()
    for name in ("d1", "d2", "d3"):
        p.version(name, "1.0", T)
    p.start(make_batch("S", at=T, retry_interval_minutes=10, retry_count=1))
    assert counts(p) == []  # nothing before the probe: targets may still be on the way
    p.apply("OpenTaskProbe", {"batch_id": "S", "event_time": T})
    assert counts(p) == [(3, 1)]
    p.version("d1", "2.0", T + 1)  # succeeded
    p.progress("d2", -2, T + 2)  # failed, a retry pending in 10 minutes
    p.command("CANCEL", "d3", T + 3, batch_id="S")  # canceled
    assert counts(p) == [(3, 1)]  # within REPORT_EVERY_MS of the last count: later
    p.tick(T + REPORT_EVERY_MS)
    assert counts(p)[-1] == (1, 0)  # d2 is open: its retry will queue it again
    p.tick(T + 2 + 10 * MINUTE)
    assert p.tasks("d2") == [("S", "QUEUED")]
    p.progress("d2", -2, T + 11 * MINUTE)  # fails again, no retry left
    assert p.tasks("d2") == [("S", "FAILED")]
    assert counts(p)[-1] == (0, 0)
    p.tick(T + 12 * MINUTE)
    assert counts(p)[-1] == (0, 0) and len(counts(p)) == 3  # nothing new: no count


def test_a_count_lost_with_the_process_is_sent_again_after_a_restart() -> None:
    p = Partition()
    p.version("d1", "1.0", T)
    p.start(make_batch("S", at=T))
    p.apply("OpenTaskProbe", {"batch_id": "S", "event_time": T})
    p.tick(T + 1)
    p.version("d1", "2.0", T + 2)  # dirty, not counted yet (throttled)
    assert counts(p) == [(1, 1)]
    p.open_tasks = OpenTaskWatch()  # a new process: the in-memory watch is gone
    p.tick(T + 3)
    assert counts(p)[-1] == (0, 0)


def world_with_partitions(n: int) -> World:
    w = World()
    w.plane.device_partitions = n
    w.pk = w.call("CreateProduct", ProductName="prod_done", NodeType=0).top["ProductKey"]
    for i in range(4):
        w.call("RegisterDevice", ProductKey=w.pk, DeviceName=f"dev{i:04d}")
    w.fw = package(w, "fw_done", "2.0")
    return w


def report(
    w: World, job: str, partition: int, open_: int, probe: bool, at: int, tasks: int = 1
) -> Any:
    params = {
        "batch_id": job,
        "partition": str(partition),
        "open": str(open_),
        "tasks": str(tasks),
        "probe": str(int(probe)),
        "event_time": str(at),
    }
    outcome = w.plane.handle("otaflow.OpenTaskCount", params, f"r-{partition}-{at}", at)
    w.store.apply(outcome.writes)
    return outcome


def test_the_plane_completes_a_batch_when_every_partition_reports_none_open() -> None:
    w = world_with_partitions(2)
    job = w.call(
        "CreateOTAStaticUpgradeJob",
        **static(w, TargetSelection="SPECIFIC"),
        TargetDeviceName__1="dev0001",
    )
    job_id = job.data["JobId"]
    # Each partition is asked after the START and its targets.
    assert [(p, s) for p, s, _ in job.partition_items] == [
        (0, "OpenTaskProbe"),
        (1, "OpenTaskProbe"),
    ]
    refused = w.refused("DeleteOTAFirmware", FirmwareId=w.fw)
    assert refused.code == "iot.ota.FirmwareHasRunningJob"
    assert report(w, job_id, 0, 0, True, NOW + 1, tasks=0).batches == []
    # Partition 1 said "none open" before its probe: its targets may still be coming.
    assert report(w, job_id, 1, 0, False, NOW + 2).batches == []
    assert report(w, job_id, 1, 1, True, NOW + 3).batches == []
    assert w.call("QueryOTAJob", JobId=job_id).data["JobStatus"] == "IN_PROGRESS"
    # An older count arriving late changes nothing.
    assert report(w, job_id, 1, 0, False, NOW + 2).read_only
    done = report(w, job_id, 1, 0, False, NOW + 4)
    assert [b["status"] for b in done.batches] == ["COMPLETED"]
    assert [c["action"] for c in done.controls] == ["UPDATE"]
    data = w.call("QueryOTAJob", JobId=job_id).data
    assert data["JobStatus"] == "COMPLETED" and "UtcEndTime" in data
    # A count after completion changes nothing; the package can now be deleted.
    assert report(w, job_id, 0, 1, False, NOW + 5).read_only
    w.call("DeleteOTAFirmware", FirmwareId=w.fw)
    assert w.store.get(f"firmware/{w.fw}") is None


def test_a_scheduled_batch_past_its_finish_time_lets_its_package_be_deleted() -> None:
    w = world_with_partitions(1)
    start, end = NOW + 10 * MIN, NOW + 10 * MIN + 60 * MIN
    w.call(
        "CreateOTAStaticUpgradeJob",
        **static(w, TargetSelection="ALL"),
        ScheduleTime=start,
        ScheduleFinishTime=end,
    )
    refused = w.refused("DeleteOTAFirmware", FirmwareId=w.fw)
    assert refused.code == "iot.ota.FirmwareHasRunningJob"
    outcome = w.plane.handle("DeleteOTAFirmware", {"FirmwareId": w.fw}, "late", end)
    assert outcome.writes == {f"firmware/{w.fw}": None}


def test_a_dynamic_batch_is_never_completed_by_counts() -> None:
    w = world_with_partitions(1)
    job = w.call("CreateOTADynamicUpgradeJob", **static(w), SrcVersion__1="1.0").data["JobId"]
    assert report(w, job, 0, 0, True, NOW + 1).read_only
    assert w.call("QueryOTAJob", JobId=job).data["JobStatus"] == "IN_PROGRESS"


def test_a_static_batch_that_gave_no_device_a_task_is_not_completed() -> None:
    w = world_with_partitions(2)
    job = w.call("CreateOTAStaticUpgradeJob", **static(w, TargetSelection="ALL")).data["JobId"]
    assert report(w, job, 0, 0, True, NOW + 1, tasks=0).batches == []
    assert report(w, job, 1, 0, True, NOW + 2, tasks=0).batches == []
    assert w.call("QueryOTAJob", JobId=job).data["JobStatus"] == "IN_PROGRESS"
    # Nor is a planned batch before its schedule starts (its tasks would be open anyway).
    planned = w.call(
        "CreateOTAStaticUpgradeJob", **static(w, TargetSelection="ALL"), ScheduleTime=NOW + 10 * MIN
    ).data["JobId"]
    assert report(w, planned, 0, 0, True, NOW + 3).batches == []
    assert report(w, planned, 1, 0, True, NOW + 4).batches == []
    assert w.call("QueryOTAJob", JobId=planned).data["JobStatus"] == "PLANNED"


def test_a_large_batch_is_counted_less_often() -> None:
    watch = OpenTaskWatch()
    watch.dirty.update({"small", "large"})
    watch.reported("small", T, tasks=10)
    watch.reported("large", T, tasks=60_000)  # 1 ms of event time per task: a minute
    watch.dirty.update({"small", "large"})
    assert watch.due(T + REPORT_EVERY_MS - 1) == []
    assert watch.due(T + REPORT_EVERY_MS) == ["small"]
    assert watch.due(T + 60_000) == ["large", "small"]


# -- a START's own count: its probe needs no scan -------------------------------------------


class EnvelopePartition:
    """A partition as the device agent runs it: one ``EnvelopeRun`` per record over an
    ``EnvelopeStore`` of encoded states (so a START over plain devices takes the byte
    path), the partition's in-memory watch kept between envelopes. Counts prefix scans."""

    def __init__(self) -> None:
        self.table: dict[bytes, bytes] = {}
        self.view = DevicePartition.rebuild(0, [])
        self.scans = 0
        self.counts: list[tuple[int, int, int]] = []  # (open, tasks, probe) reported

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        self.scans += 1
        return iter([(k, v) for k, v in sorted(self.table.items()) if k.startswith(prefix)])

    def apply(self, name: str, record: dict[str, Any]) -> None:
        run = EnvelopeRun(self.view, EnvelopeStore(self.table.get, self._scan), lambda k, v: None)
        run.apply(CODEC.encode(name, record), -1, -1)
        assert not run.dead
        for key, raw in run.store.writes():
            if raw is None:
                self.table.pop(key, None)
            else:
                self.table[key] = raw
        for schema, report in run.fx.control_reports:
            if schema == "OpenTaskCount":
                self.counts.append((report["open"], report["tasks"], report["probe"]))

    def probe(self, batch_id: str, at: int) -> tuple[int, int]:
        self.apply("OpenTaskProbe", {"batch_id": batch_id, "event_time": at})
        open_, tasks, probe = self.counts[-1]
        assert probe == 1
        return open_, tasks

    def truth(self, batch_id: str) -> tuple[int, int]:
        """What a scan of every device counts."""
        return count_tasks((decode_device_state(raw) for raw in self.table.values()), batch_id)


STEPS = st.lists(
    st.tuples(
        st.sampled_from(["version", "progress", "fail", "cancel", "tick", "delete", "register"]),
        st.integers(0, 5),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(["1.0", "2.0", None]), min_size=1, max_size=6),
    st.booleans(),
    STEPS,
)
def test_a_probe_after_the_start_answers_what_a_scan_of_every_device_counts(
    versions: list[str | None], regional: bool, steps: list[tuple[str, int]]
) -> None:
    p = EnvelopePartition()
    for i, version in enumerate(versions):
        # Regional devices take the engine's path; the others the START's byte path.
        if regional and i % 2:
            p.apply("DeviceRegistration", registration_record(PK, f"d{i}", T, province="Zhejiang"))
        if version is not None:
            p.apply("DeviceReport", report_record(PK, f"d{i}", "VERSION", T, version=version))
    batch = make_batch("S", at=T + 1, retry_interval_minutes=10, retry_count=1)
    p.apply("BatchControl", control_record("START", batch, T + 1))
    scans = p.scans
    assert p.probe("S", T + 1) == p.truth("S")
    assert p.scans == scans  # counted by the START: no scan
    at = T + 2
    for action, i in steps:
        dn, at = f"d{i % len(versions)}", at + 1
        if action == "version":
            p.apply("DeviceReport", report_record(PK, dn, "VERSION", at, version="2.0"))
        elif action in ("progress", "fail"):
            step = 50 if action == "progress" else -2
            p.apply("DeviceReport", report_record(PK, dn, "PROGRESS", at, step=step, desc=""))
        elif action == "cancel":
            p.apply("TaskCommand", command_record("CANCEL", PK, dn, at, batch_id="S"))
        elif action == "tick":
            at += 11 * MINUTE
            p.apply("Tick", {"event_time": at})
        else:
            act = "DELETE" if action == "delete" else "REGISTER"
            p.apply("DeviceRegistration", registration_record(PK, dn, at, action=act))
        assert p.probe("S", at) == p.truth("S"), (action, dn)
