"""UpdateOTAJob cancels a dynamic batch's timeout, through the official API SDK (issue 12).

Reuses the OpenAPI module's deployment and helpers (real Kafka, the worker as a process).
"""

from __future__ import annotations

from alibabacloud_iot20180120 import models as m

from tests.integration.api_support import (
    Deployment,
    api,  # noqa: F401  (the module's deployment fixture)
    dynamic_job,
    eventually,
    new_product,
    ok,
    report_versions,
    tasks_of,
    upload_firmware,
)


def test_update_otajob_cancels_the_timeout_for_new_tasks(api: Deployment) -> None:  # noqa: F811
    c = api.client
    pk = new_product(api)
    firmware_id = upload_firmware(api, pk)
    job = ok(dynamic_job(api, pk, firmware_id, timeout_in_minutes=60)).data
    report_versions(api, pk, "1.0", "before")
    eventually(lambda: tasks_of(api, job.job_id), lambda b: b.total == 1)

    # The SDK omits a None field, so "no timeout" is sent as 0 (docs/openapi-ota.md).
    ok(
        c.update_otajob(
            m.UpdateOTAJobRequest(
                job_id=job.job_id,
                upgrade_type="DYNAMIC",
                target_selection="ALL",
                maximum_per_minute=100,
                timeout_in_minutes=0,
            )
        ).body
    )
    detail = api.call_raw("QueryOTAJob", {"JobId": job.job_id})["Data"]
    assert detail.get("TimeoutInMinutes") is None
    report_versions(api, pk, "1.0", "after")
    tasks = eventually(lambda: tasks_of(api, job.job_id), lambda b: b.total == 2)
    timeouts = {t.device_name: t.timeout for t in tasks.data.simple_otatask_info}
    # A device matched after the change runs without a timeout. (That the earlier task
    # keeps its 60 minutes, as the console doc says -- the change "affects only new
    # dynamic OTA updates" -- is the device engine's rule, tested in
    # tests/unit/test_engine_dynamic.py; this read shows the batch's current setting.)
    assert timeouts["after"] is None
