"""Abort-rule reaction: from the failure threshold being crossed to pushes stopping.

One dynamic batch at 10,000 pushes/min with an abort rule (FAILED >= 30 % after 100
finished, PAUSE the batch). Every pushed device fails at once (a progress step -1 at
the push's event time), so the rule's threshold is crossed at the 100th failure.
Event time advances one second per tick, paced at about one tick per wall second as a
worker's ticker would; the device agent counts outcomes, the command agent fires the
rule and the device agents stop pushing. Reported: event time from the crossing to the
last push, pushes after the crossing, and the wall time from the 100th failure report
to the trigger record on ``ota.rollout.triggers``.

    python -m benchmarks.run abort --devices 2000
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.deployment import T0, BenchDeployment, version_reports
from benchmarks.results import ScenarioResult
from benchmarks.scenarios import _tick, create_package, end_offsets, wait_progress, warm_up
from otaflow import topics
from otaflow.codec import codec
from otaflow.control.client import ControlClient
from otaflow.device_keys import device_key

CODEC = codec()
MIN_FINISHED = 100
RATE_PER_MINUTE = 10_000


def abort_rollout(n: int, max_seconds: int = 30) -> ScenarioResult:
    result = ScenarioResult(
        "abort", {"devices": n, "rate_per_min": RATE_PER_MINUTE, "min_finished": MIN_FINISHED}
    )
    d = BenchDeployment("abort")
    try:
        warm_up(d)
        _run(d, n, max_seconds, result)
    finally:
        d.close()
    return result


def _run(d: BenchDeployment, n: int, max_seconds: int, result: ScenarioResult) -> None:
    pk = "pkAbort"
    with ControlClient(d.settings) as control:
        firmware_id = create_package(d, control, pk)
        job = control.call(
            "CreateOTADynamicUpgradeJob",
            {
                "ProductKey": pk,
                "FirmwareId": firmware_id,
                "SrcVersion.1": "1.0",
                "MaximumPerMinute": str(RATE_PER_MINUTE),
                "AbortRule.1.FailureKind": "FAILED",
                "AbortRule.1.ThresholdPercent": "30",
                "AbortRule.1.MinFinished": str(MIN_FINISHED),
                "AbortRule.1.Action": "PAUSE",
                "AbortRule.1.CohortBy": "BATCH",
            },
            timeout=120,
            now_ms=T0,
        )
        assert job.success, job
    d.produce_reports(version_reports(pk, n, at=T0 + 10))
    wait_progress("tasks queued", n, lambda: end_offsets(d, topics.TASK_EVENTS), timeout=600)
    reader = Consumer(
        {
            "bootstrap.servers": d.settings.kafka_bootstrap,
            "group.id": f"abort-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    reader.assign(
        [
            TopicPartition(d.topic(spec), p, 0)
            for spec in (topics.TASK_EVENTS, topics.ROLLOUT_TRIGGERS)
            for p in range(spec.partition_count(d.settings))
        ]
    )
    ticks = Producer({"bootstrap.servers": d.settings.kafka_bootstrap, "linger.ms": 1})
    reports = d.topic(topics.DEVICE_REPORTS)
    pushes: list[int] = []  # event times of NOTIFIED
    failures: list[int] = []  # event times of the failure reports sent
    wall_of_crossing: float | None = None
    trigger_wall: float | None = None
    trigger_at: int | None = None
    quiet_after_trigger = 0
    for second in range(1, max_seconds + 1):
        _tick(d, ticks, T0 + second * 1000)
        ticks.flush(10)
        pushed_before = len(pushes)
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            for msg in reader.consume(10_000, 0.05):
                if msg.error() is not None or not msg.value():
                    continue
                name, record = CODEC.decode(msg.value())
                if name == "RolloutTrigger" and trigger_wall is None:
                    trigger_wall, trigger_at = time.monotonic(), record["event_time"]
                elif name == "TaskEvent" and record["status"] == "NOTIFIED":
                    pushes.append(record["event_time"])
                    failure = {
                        "product_key": pk,
                        "device_name": record["device_name"],
                        "kind": "PROGRESS",
                        "module": "default",
                        "version": None,
                        "step": -1,
                        "desc": "bench: bad package",
                        "message_id": None,
                        "event_time": record["event_time"],
                    }
                    key = device_key(pk, record["device_name"]).encode()
                    d.producer.produce(
                        reports, key=key, value=CODEC.encode("DeviceReport", failure)
                    )
                    failures.append(record["event_time"])
                    if len(failures) == MIN_FINISHED:
                        d.producer.flush(10)
                        wall_of_crossing = time.monotonic()
            d.producer.poll(0)
        d.producer.flush(10)
        if trigger_wall is not None:
            quiet_after_trigger = quiet_after_trigger + 1 if len(pushes) == pushed_before else 0
            if quiet_after_trigger >= 3:
                break
        if len(pushes) >= n:
            break
    reader.close()
    if len(failures) < MIN_FINISHED or trigger_wall is None or wall_of_crossing is None:
        result.add("rule fired", 0, "", "fires", False)
        result.notes.append(f"pushes {len(pushes)}, failures {len(failures)}, no trigger")
        return
    crossing = sorted(failures)[MIN_FINISHED - 1]
    stopped = max(pushes)
    after = sum(1 for at in pushes if at > crossing)
    delay = (stopped - crossing) / 1000
    result.add("event time from threshold crossed to last push", delay, "s", "≤ 1 s", delay <= 1.0)
    result.add("pushes after the threshold was crossed", after, "pushes")
    result.add("pushes in all", len(pushes), "pushes")
    result.add("wall time from 100th failure sent to trigger", trigger_wall - wall_of_crossing, "s")
    result.notes.append(
        f"crossed at event {crossing - T0} ms, last push at {stopped - T0} ms, "
        f"trigger stamped {trigger_at - T0 if trigger_at else None} ms (after T0)"
    )
