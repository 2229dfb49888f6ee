"""A static batch becomes COMPLETED when every task is final (issue 12), through the
official API SDK against a running otaflow (the deployment of ``api_support``, its
own instance for this module): then its package can be deleted, and every read says so.
"""

from __future__ import annotations

import pytest
from alibabacloud_iot20180120 import models as m

from otaflow import topics
from otaflow.domain.open_tasks import REPORT_EVERY_MS
from tests.integration.api_support import (
    Deployment,
    api,
    eventually,
    jobs_of_device,
    new_product,
    now_ms,
    ok,
    refused,
    register,
    report_versions,
    static_job,
    task_statuses,
    upload_firmware,
)

pytestmark = pytest.mark.integration
__all__ = ["api"]  # the module-scoped deployment fixture


def job_status(api: Deployment, job_id: str) -> str:
    body = ok(api.client.query_otajob(m.QueryOTAJobRequest(job_id=job_id)).body)
    return str(body.data.job_status)


def test_a_static_batch_completes_when_every_task_is_final(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    register(api, pk, "cp000001", "cp000002", "cp000003")
    report_versions(api, pk, "1.0", "cp000001", "cp000002")  # cp000003 reports nothing
    firmware_id = upload_firmware(api, pk)
    job_id = ok(static_job(api, pk, firmware_id)).data.job_id
    eventually(
        lambda: task_statuses(api, job_id),
        lambda s: set(s) == {"cp000001", "cp000002"},
    )
    assert job_status(api, job_id) == "IN_PROGRESS"
    delete = m.DeleteOTAFirmwareRequest(firmware_id=firmware_id)
    refused(c.delete_otafirmware(delete).body, "iot.ota.FirmwareHasRunningJob")

    at = now_ms()
    api.otaflow.report(pk, "cp000001", "VERSION", at, version="2.0")  # succeeded
    api.otaflow.report(pk, "cp000002", "PROGRESS", at, step=-2, desc="no space")  # failed
    api.otaflow.flush()
    eventually(
        lambda: task_statuses(api, job_id),
        lambda s: s == {"cp000001": "SUCCEEDED", "cp000002": "FAILED"},
    )
    # Event time moves on past the partitions' count throttle (no ticker in tests).
    api.otaflow.tick(at + REPORT_EVERY_MS)
    eventually(lambda: job_status(api, job_id), lambda s: s == "COMPLETED")

    def device_jobs() -> list[tuple[str, str, str, str]]:
        rows = jobs_of_device(api, pk, "cp000001", firmware_id)
        return [(r.job_id, r.job_type, r.selection_type, r.job_status) for r in rows]

    # The view follows the batch topic: the completion is a Batch record like any change,
    # which the view may read a moment after the plane answered COMPLETED (CI met it once).
    eventually(
        device_jobs, lambda rows: rows == [(job_id, "UPGRADE_FIRMWARE", "STATIC", "COMPLETED")]
    )
    listed = ok(
        c.list_otajob_by_firmware(
            m.ListOTAJobByFirmwareRequest(firmware_id=firmware_id, current_page=1, page_size=10)
        ).body
    ).data.simple_otajob_info
    assert [(r.job_id, r.job_status) for r in listed] == [(job_id, "COMPLETED")]
    assert listed[0].utc_end_time
    ok(c.delete_otafirmware(delete).body)
    refused(
        c.query_otafirmware(m.QueryOTAFirmwareRequest(firmware_id=firmware_id)).body,
        "iot.ota.FirmwareNotFound",
    )


def open_counts(api: Deployment, job_id: str) -> list[tuple[str, str]]:
    """(open, probe) of every count the device partitions sent the plane for the batch."""
    commands = api.otaflow.reader(topics.COMMANDS).values()
    return [
        (c["params"]["open"], c["params"]["probe"])
        for c in commands
        if c["action"] == "otaflow.OpenTaskCount" and c["params"]["batch_id"] == job_id
    ]


def test_a_failed_task_with_a_retry_pending_keeps_the_batch_running(api: Deployment) -> None:
    pk = new_product(api)
    register(api, pk, "rp000001")
    report_versions(api, pk, "1.0", "rp000001")
    firmware_id = upload_firmware(api, pk)
    job_id = ok(static_job(api, pk, firmware_id, retry_interval=10, retry_count=1)).data.job_id
    eventually(lambda: task_statuses(api, job_id), lambda s: "rp000001" in s)
    at = now_ms()
    api.otaflow.report(pk, "rp000001", "PROGRESS", at, step=-2, desc="flaky link")
    api.otaflow.flush()
    eventually(lambda: task_statuses(api, job_id), lambda s: s == {"rp000001": "FAILED"})
    api.otaflow.tick(at + REPORT_EVERY_MS)
    # The partition counted again after the failure, and the task was open: its retry
    # (in 10 minutes) will queue it again.
    counts = eventually(lambda: open_counts(api, job_id), lambda v: ("1", "0") in v)
    assert ("0", "0") not in counts and job_status(api, job_id) == "IN_PROGRESS"
    api.otaflow.tick(at + 10 * 60_000 + 1)  # the retry: queued (and pushed) again
    eventually(
        lambda: task_statuses(api, job_id),
        lambda s: s.get("rp000001") in ("QUEUED", "NOTIFIED"),
    )
    api.otaflow.report(pk, "rp000001", "PROGRESS", at + 10 * 60_000 + 2, step=-2)
    api.otaflow.flush()
    eventually(lambda: job_status(api, job_id), lambda s: s == "COMPLETED")
