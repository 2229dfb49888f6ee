"""Every process serves Prometheus metrics, /healthz and /readyz; during a rollout they
show the series an operator watches (reports applied, lag, tasks per status, pushes
against the configured rate, dead letters, MQTT connections, API requests)."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from otaflow import metrics, topics
from otaflow.api.client import ApiCallError, OpsClient
from otaflow.device_keys import device_key
from tests.integration.conftest import Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import MINUTE, dynamic_batch

pytestmark = pytest.mark.integration

COMPONENTS = ("worker", "batcher", "ingress", "egress", "file-download", "api")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _until(what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _value(text: str, series: str) -> float | None:
    """The value of one series (``name{labels}``, labels in any order) in a scrape."""
    wanted = _SERIES.match(series + " 0")
    assert wanted is not None, series
    name, labels = wanted.group(1), set(_LABEL.findall(wanted.group(2) or ""))
    for line in text.splitlines():
        found = _SERIES.match(line)
        if found and found.group(1) == name and set(_LABEL.findall(found.group(2) or "")) == labels:
            return float(found.group(3))
    return None


def test_every_process_serves_metrics_and_health_during_a_rollout(otaflow: Otaflow) -> None:
    otaflow.start_all()
    settings = otaflow.settings
    urls: dict[str, str] = {}

    def all_serving() -> bool:
        for component in COMPONENTS:
            url = metrics.metrics_url(settings, component)
            if url is None:
                return False
            urls[component] = url
        return True

    _until("every process's metrics address", all_serving)
    for component, url in urls.items():
        assert _get(url + "/healthz") == (200, "ok\n"), component
    _until(
        "every process ready",
        lambda: all(_get(u + "/readyz")[0] == 200 for u in urls.values()),
    )

    pk = "pkMetrics"
    job_id = dynamic_batch(otaflow, pk, MaximumPerMinute=100)
    for i in range(6):
        otaflow.report(pk, f"m{i}", "VERSION", T0 + 1000, version="1.0")
    otaflow.producer.produce(
        topics.DEVICE_REPORTS.full_name(settings),
        key=device_key(pk, "bad").encode(),
        value=b"not a report",
    )
    otaflow.flush()
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "QUEUED" for e in v) == 6, what="queued")
    otaflow.tick(T0 + MINUTE - 1)
    events.wait_for(lambda v: sum(e["status"] == "NOTIFIED" for e in v) == 6, what="notified")

    api = OpsClient(f"http://127.0.0.1:{settings.api_port}", "testAK", "testSecret")
    assert api.call("QueryOTAJob", {"JobId": job_id})["Success"] is True
    with pytest.raises(ApiCallError) as refused:
        api.call("QueryOTAFirmware", {"FirmwareId": "no-such-firmware"})
    code = refused.value.code

    def scrape(component: str) -> str:
        return _get(urls[component] + "/metrics")[1]

    batch = f'batch="{job_id}"'
    wanted: dict[str, list[str]] = {
        "worker": [
            "otaflow_reports_applied_total",
            "otaflow_envelopes_applied_total",
            f'otaflow_consumer_lag{{group="{settings.app_id}",'
            f'topic="{topics.DEVICE_EVENTS.full_name(settings)}",partition="0"}}',
            f'otaflow_consumer_lag{{group="{settings.app_id}-batcher",'
            f'topic="{topics.DEVICE_REPORTS.full_name(settings)}",partition="0"}}',
        ],
        "batcher": ['otaflow_batcher_forwarded_total{component="batcher"}'],
        "api": [
            f'otaflow_tasks{{{batch},status="NOTIFIED"}}',
            f"otaflow_pushes_total{{{batch}}}",
            f'otaflow_batch_rate_per_minute{{{batch},bound="max"}}',
            'otaflow_api_requests_total{operation="QueryOTAJob",code="Success"}',
            f'otaflow_api_requests_total{{operation="QueryOTAFirmware",code="{code}"}}',
            'otaflow_api_request_seconds_count{operation="QueryOTAJob"}',
        ],
        "ingress": ['otaflow_mqtt_connects_total{component="ingress"}'],
        "egress": [
            'otaflow_mqtt_connects_total{component="egress"}',
            'otaflow_mqtt_published_total{component="egress"}',
        ],
        "file-download": ['otaflow_mqtt_connects_total{component="file-download"}'],
    }

    missing: list[str] = []

    def shown(component: str) -> bool:
        text = scrape(component)
        missing[:] = [s for s in wanted[component] if _value(text, s) is None]
        if missing:
            missing.append(text[-3000:])
        return not missing

    for component in wanted:
        try:
            _until(f"{component}'s series", lambda c=component: shown(c))  # type: ignore[misc]
        except AssertionError as exc:
            raise AssertionError(f"{exc}: missing {missing}") from None

    worker, api_text = scrape("worker"), scrape("api")
    assert (_value(worker, "otaflow_reports_applied_total") or 0) >= 6
    assert _value(api_text, f'otaflow_tasks{{{batch},status="NOTIFIED"}}') == 6
    assert _value(api_text, f"otaflow_pushes_total{{{batch}}}") == 6
    assert _value(api_text, f'otaflow_batch_rate_per_minute{{{batch},bound="max"}}') == 100
    dead = re.compile(r'^otaflow_dead_letters_total\{[^}]*reason="[^"]+"[^}]*\} 1\.0$', re.M)
    _until("the dead letter counted", lambda: dead.search(scrape("api")) is not None)
    for component in ("ingress", "egress", "file-download"):
        assert _value(scrape(component), f'otaflow_mqtt_connected{{component="{component}"}}') == 1
    # One log line per request: operation, code, milliseconds.
    assert re.search(r"api QueryOTAJob Success \d+ ms", otaflow.log("api")), otaflow.log("api")
    assert re.search(rf"api QueryOTAFirmware {re.escape(code)} \d+ ms", otaflow.log("api"))
    worker_log = otaflow.log("worker")
    assert "worker: assigned" in worker_log
    assert f"worker: batch {job_id} START (DYNAMIC" in worker_log, worker_log
