"""Metrics endpoint, API request accounting and log formats (no broker)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from otaflow import logs, metrics
from otaflow.api import observe
from otaflow.api.views import TaskView
from otaflow.config import Settings, deployment_settings


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_is_the_process_and_readiness_waits_for_every_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTAFLOW_CACHE", str(tmp_path))
    monkeypatch.setenv("OTAFLOW_METRICS_PORT", "0")
    monkeypatch.setattr(metrics, "_server", None)
    monkeypatch.setattr(metrics, "_ready", [])
    settings = deployment_settings(Settings(), "unit")
    port = metrics.serve(settings, "ingress")
    url = f"http://127.0.0.1:{port}"
    assert metrics.metrics_url(settings, "ingress") == url
    subscribed = False
    metrics.ready_when(lambda: subscribed)
    assert _get(url + "/healthz") == (200, "ok\n")
    assert _get(url + "/readyz")[0] == 503
    subscribed = True
    assert _get(url + "/readyz") == (200, "ready\n")
    status, text = _get(url + "/metrics")
    assert status == 200 and "# TYPE otaflow_reports_applied_total counter" in text
    assert _get(url + "/nope")[0] == 404


def test_the_task_view_shows_tasks_per_status_pushes_and_rate_per_batch() -> None:
    view = TaskView()
    view.apply_batch({"batch_id": "b1", "rate": {"kind": "constant", "max_rate": 500}})
    for task, status in (("t1", "QUEUED"), ("t2", "QUEUED"), ("t1", "NOTIFIED")):
        view.apply_task_event(
            {
                "batch_id": "b1",
                "task_id": task,
                "status": status,
                "src_version": "1.0",
                "event_time": 1,
                "product_key": "pk",
                "device_name": task,
            }
        )
    families = {f.name: f for f in metrics.TaskViewCollector(view).collect()}
    tasks = {tuple(s.labels.values()): s.value for s in families["otaflow_tasks"].samples}
    assert tasks == {("b1", "QUEUED"): 1, ("b1", "NOTIFIED"): 1}
    (pushes,) = families["otaflow_pushes"].samples
    assert pushes.value == 1
    (rate,) = families["otaflow_batch_rate_per_minute"].samples
    assert (rate.labels, rate.value) == ({"batch": "b1", "bound": "max"}, 500)


def test_dead_letter_reasons_lose_their_particulars() -> None:
    assert metrics.reason_class("corrupt DeviceReport body: bad varint at 17") == (
        "corrupt DeviceReport body"
    )
    assert metrics.reason_class("unexpected record type Tick") == "unexpected record type Tick"
    assert metrics.reason_class("") == "unknown"


def test_api_requests_are_counted_by_operation_and_code_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    async def handle(request: web.Request) -> web.Response:
        if request.headers["x-acs-action"] == "QueryOTAJob":
            return web.json_response({"RequestId": "R1", "Success": True})
        return web.json_response({"RequestId": "R2", "Code": "InvalidApi.NotFound"}, status=404)

    app = web.Application(middlewares=[observe.request_metrics(lambda a: a == "QueryOTAJob")])
    app.router.add_route("POST", "/", handle)

    def count(operation: str, code: str) -> float:
        return metrics.API_REQUESTS.labels(operation, code)._value.get()

    before = count("QueryOTAJob", "Success"), count("unknown", "InvalidApi.NotFound")

    async def calls() -> None:
        async with TestClient(TestServer(app)) as client:
            await client.post("/", headers={"x-acs-action": "QueryOTAJob"})
            # An action the API does not serve is counted as "unknown": callers do not
            # get to mint label values.
            await client.post("/", headers={"x-acs-action": "Made.Up.Name"})

    with caplog.at_level(logging.INFO, logger="otaflow.api"):
        asyncio.run(calls())
    assert count("QueryOTAJob", "Success") == before[0] + 1
    assert count("unknown", "InvalidApi.NotFound") == before[1] + 1
    lines = [r.getMessage() for r in caplog.records if r.name == "otaflow.api"]
    assert any(re.fullmatch(r"api QueryOTAJob Success \d+ ms R1", line) for line in lines)


def test_answer_codes_come_from_the_platform_body() -> None:
    ok = web.json_response({"RequestId": "R1", "Success": True})
    business = web.json_response({"RequestId": "R2", "Success": False, "Code": "iot.x.NotFound"})
    gateway = web.json_response({"RequestId": "R3", "Code": "InvalidApi.NotFound"}, status=404)
    assert observe.answer_code(ok) == ("Success", "R1")
    assert observe.answer_code(business) == ("iot.x.NotFound", "R2")
    assert observe.answer_code(gateway) == ("InvalidApi.NotFound", "R3")
    assert observe.answer_code(web.Response(text="x", status=502)) == ("502", "-")


def test_json_logs_are_one_object_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTAFLOW_LOG_FORMAT", "json")
    record = logging.LogRecord("otaflow.api", logging.INFO, __file__, 1, "api %s", ("X",), None)
    entry = json.loads(logs.formatter("api").format(record))
    assert entry["msg"] == "api X" and entry["level"] == "info" and entry["component"] == "api"
    assert entry["ts"].endswith("Z")


def test_the_log_level_quiets_libraries_unless_debugging(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        monkeypatch.setenv("OTAFLOW_LOG_LEVEL", "info")
        assert logs.setup("worker") == logging.INFO
        assert logging.getLogger("faust").level == logging.WARNING
        monkeypatch.setenv("OTAFLOW_LOG_LEVEL", "debug")
        assert logs.setup("worker") == logging.DEBUG
        assert logging.getLogger("faust").level == logging.DEBUG
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name in logs.LIBRARIES:
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_the_dashboard_charts_only_series_otaflow_exports() -> None:
    repo = Path(__file__).resolve().parents[2]
    dashboard = json.loads((repo / "dashboards" / "otaflow.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    charted = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for expr in exprs
        for name in re.findall(r"\b(otaflow_[a-z_]+)", expr)
    }
    sources = "".join(
        path.read_text()
        for d in ("otaflow", "streams", "connectors")
        for path in (repo / d).rglob("*.py")
    )
    exported = set(re.findall(r'"(otaflow_[a-z_]+)"', sources))
    assert charted and charted <= exported, charted - exported
