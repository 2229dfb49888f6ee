"""otaflow's web console: packages, batches with live counts and push rate, devices.

A thin client of otaflow's own OpenAPI: every page and every action is one or a few
signed calls with the signed-in operator's access key (``otaflow.api.client.OpsClient``),
so the console shows exactly what the API answers and refuses with the API's own codes
and messages; it holds no state of its own besides sessions and the push-rate samples
of the batches someone is watching.

Signing in: an AccessKey ID and secret of the deployment, checked by calling the API
with them. The session lives in this process (a random token in an HttpOnly,
SameSite=Strict cookie); nothing is readable without one. A batch page is kept live by
server-sent events (``/batches/{id}/events``): counts per status, the batch's status,
and pushes per minute achieved against the plan (``otaflow.domain.rate.plan``, what
``otaflow plan`` prints) for the batch's rate and size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from otaflow import config
from otaflow.api.client import ApiCallError, OpsClient
from otaflow.config import Settings
from otaflow.domain.rate import RateConfig, plan
from otaflow.web.pages import environment

log = logging.getLogger("otaflow.console")

DEFAULT_CONSOLE_PORT = 8082
COOKIE = "otaflow_session"
SESSION_IDLE_S = 8 * 3600
STATUSES = ("Confirm", "Queued", "Notified", "InProgress", "Succeeded", "Failed", "Canceled")
TASK_STATUSES = ("CONFIRM", "QUEUED", "NOTIFIED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "CANCELED")
PUSHED = ("Notified", "InProgress", "Succeeded", "Failed")
CANCEL_FLAGS = (
    "CancelQueuedTask",
    "CancelNotifiedTask",
    "CancelInProgressTask",
    "CancelUnconfirmedTask",
    "CancelScheduledTask",
)
EVENT_INTERVAL_S = 1.0
# A source-version filter reads this many tasks at most (the API filters the rest).
SRC_FILTER_SCAN = 2000


@dataclass
class Session:
    key_id: str
    client: OpsClient
    seen: float = field(default_factory=time.monotonic)


@dataclass
class PushSamples:
    """(seconds since the first sample, pushed so far) of one batch while watched."""

    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, int]] = field(default_factory=list)

    def add(self, pushed: int) -> None:
        self.samples.append((time.monotonic() - self.started, pushed))
        if len(self.samples) > 20_000:
            del self.samples[: len(self.samples) // 2]

    def per_minute(self) -> list[tuple[int, int]]:
        """Pushes in each whole minute since watching began (the current one so far)."""
        if not self.samples:
            return []
        out: list[tuple[int, int]] = []
        base = self.samples[0][1]
        minute, start_of_minute = 0, base
        last = base
        for at, pushed in self.samples:
            while at >= (minute + 1) * 60:
                out.append((minute, last - start_of_minute))
                minute, start_of_minute = minute + 1, last
            last = pushed
        out.append((minute, last - start_of_minute))
        return out

    def last_minute(self) -> int:
        if len(self.samples) < 2:
            return 0
        now, pushed = self.samples[-1]
        # Pushed as of a minute ago: the latest sample then (the first, if watched less).
        earlier = self.samples[0][1]
        for at, count in self.samples:
            if at > now - 60:
                break
            earlier = count
        return pushed - earlier


def planned_per_minute(job: dict[str, Any], devices: int) -> list[tuple[int, int]]:
    """What ``otaflow plan`` predicts for the batch's rate, as pushes per minute."""
    rate = job.get("MaximumPerMinute")
    if not rate or devices <= 0:
        return []
    try:
        if job.get("RateType") == "variable":
            rate_config = RateConfig.variable(
                int(job["BaseRatePerMinute"]),
                str(job["IncrementalFactor"]),
                int(rate),
                int(job["RateIncreaseThreshold"]),
                str(job.get("RateIncreaseCondition") or "pushed"),
            )
        else:
            rate_config = RateConfig.constant(int(rate))
        minutes = plan(rate_config, devices).minutes
    except (KeyError, ValueError, TypeError):
        return []
    out, before = [], 0
    for m in minutes[:600]:
        out.append((m.minute, m.pushed - before))
        before = m.pushed
    return out


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console:
    def __init__(self, settings: Settings, api_url: str) -> None:
        self.settings = settings
        self.api_url = api_url
        self.sessions: dict[str, Session] = {}
        self.samples: dict[str, PushSamples] = {}

    # -- sessions ---------------------------------------------------------------------------

    def session(self, request: web.Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        found = self.sessions.get(token or "")
        if found is None or time.monotonic() - found.seen > SESSION_IDLE_S:
            return None
        found.seen = time.monotonic()
        return found

    def page(
        self, request: web.Request, template: str, status: int = 200, **context: Any
    ) -> web.Response:
        session = self.session(request)
        html = environment.get_template(template).render(
            who=session.key_id if session else None, **context
        )
        return web.Response(text=html, content_type="text/html", status=status)

    async def call(self, session: Session, action: str, params: dict[str, Any]) -> Any:
        return await asyncio.to_thread(session.client.call, action, params)

    @web.middleware
    async def signed_in(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/login", "/healthz"):
            return await handler(request)
        if self.session(request) is None:
            if request.method == "GET" and not request.path.endswith("/events"):
                raise web.HTTPFound("/login")
            raise web.HTTPUnauthorized(text="sign in first")
        return await handler(request)

    async def login_form(self, request: web.Request) -> web.Response:
        return self.page(request, "login.html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key_id, secret = str(form.get("key_id", "")), str(form.get("secret", ""))
        client = OpsClient(self.api_url, key_id, secret)
        try:
            await asyncio.to_thread(client.call, "ListOTAFirmware", {"PageSize": 1})
        except ApiCallError as exc:
            return self.page(request, "login.html", status=401, error=exc)
        token = secrets.token_urlsafe(32)
        self.sessions[token] = Session(key_id, client)
        log.info("console: %s signed in", key_id)
        response = web.HTTPFound("/")
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = web.HTTPFound("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # -- pages ------------------------------------------------------------------------------

    async def packages(self, request: web.Request) -> web.Response:
        session = self.session(request)
        assert session is not None
        try:
            body = await self.call(session, "ListOTAFirmware", {"PageSize": 100})
        except ApiCallError as exc:
            return self.page(request, "packages.html", packages=[], total=0, error=exc)
        rows = body["FirmwareInfo"]["SimpleFirmwareInfo"]
        return self.page(request, "packages.html", packages=rows, total=body["Total"])

    async def package(self, request: web.Request, **extra: Any) -> web.Response:
        session = self.session(request)
        assert session is not None
        firmware_id = request.match_info["firmware_id"]
        try:
            fw = (await self.call(session, "QueryOTAFirmware", {"FirmwareId": firmware_id}))[
                "FirmwareInfo"
            ]
            jobs = await self.call(
                session, "ListOTAJobByFirmware", {"FirmwareId": firmware_id, "PageSize": 200}
            )
        except ApiCallError as exc:
            return self.page(request, "packages.html", packages=[], total=0, error=exc, status=404)
        rows = jobs["Data"]["SimpleOTAJobInfo"]
        return self.page(request, "package.html", fw=fw, batches=rows, **extra)

    async def create_batch(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request)
        assert session is not None
        firmware_id = request.match_info["firmware_id"]
        form = await request.post()
        fw = (await self.call(session, "QueryOTAFirmware", {"FirmwareId": firmware_id}))[
            "FirmwareInfo"
        ]
        params: dict[str, Any] = {
            "FirmwareId": firmware_id,
            "ProductKey": fw["ProductKey"],
            "TargetSelection": str(form.get("TargetSelection") or "ALL"),
        }
        if form.get("MaximumPerMinute"):
            params["MaximumPerMinute"] = str(form["MaximumPerMinute"])
        if form.get("NeedConfirm"):
            params["NeedConfirm"] = "true"
        for i, version in enumerate(_split(str(form.get("src_versions", ""))), start=1):
            params[f"SrcVersion.{i}"] = version
        for i, name in enumerate(_split(str(form.get("devices", ""))), start=1):
            params[f"TargetDeviceName.{i}"] = name
        dynamic = form.get("kind") == "dynamic"
        action = "CreateOTADynamicUpgradeJob" if dynamic else "CreateOTAStaticUpgradeJob"
        if dynamic:
            params.pop("TargetSelection")
        try:
            data = (await self.call(session, action, params))["Data"]
        except ApiCallError as exc:
            return await self.package(request, error=exc)
        raise web.HTTPFound(f"/batches/{data['JobId']}")

    async def batch(self, request: web.Request, **extra: Any) -> web.Response:
        session = self.session(request)
        assert session is not None
        job_id = request.match_info["job_id"]
        filters = {k: request.query.get(k, "") for k in ("status", "src", "name")}
        try:
            job = (await self.call(session, "QueryOTAJob", {"JobId": job_id}))["Data"]
            tasks, total = await self.tasks(session, job_id, filters)
        except ApiCallError as exc:
            return self.page(request, "packages.html", packages=[], total=0, error=exc, status=404)
        return self.page(
            request,
            "batch.html",
            job=job,
            stats=job.get("Statistics", {}),
            statuses=STATUSES,
            task_statuses=TASK_STATUSES,
            cancel_flags=CANCEL_FLAGS,
            tasks=tasks,
            tasks_total=total,
            filters=filters,
            **extra,
        )

    async def tasks(
        self, session: Session, job_id: str, filters: dict[str, str]
    ) -> tuple[list[dict[str, Any]], int]:
        params: dict[str, Any] = {"JobId": job_id, "PageSize": 100}
        if filters["status"]:
            params["TaskStatus"] = filters["status"]
        if filters["name"]:
            params["DeviceNames.1"] = filters["name"]
        if not filters["src"]:
            body = await self.call(session, "ListOTATaskByJob", params)
            return body["Data"]["SimpleOTATaskInfo"], int(body["Total"])
        found: list[dict[str, Any]] = []
        for page_no in range(1, SRC_FILTER_SCAN // 100 + 1):
            body = await self.call(session, "ListOTATaskByJob", {**params, "CurrentPage": page_no})
            rows = body["Data"]["SimpleOTATaskInfo"]
            found += [r for r in rows if r.get("SrcVersion") == filters["src"]]
            if len(rows) < 100:
                break
        return found[:100], len(found)

    async def edit(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request)
        assert session is not None
        job_id = request.match_info["job_id"]
        form = await request.post()
        try:
            job = (await self.call(session, "QueryOTAJob", {"JobId": job_id}))["Data"]
            params: dict[str, Any] = {
                "JobId": job_id,
                "UpgradeType": job["SelectionType"],
                "TargetSelection": job["TargetSelection"],
                "MaximumPerMinute": str(form.get("rate") or job.get("MaximumPerMinute", "")),
            }
            tags = job.get("Tags", {}).get("OtaTagDTO", [])
            for i, tag in enumerate(tags, start=1):  # UpdateOTAJob replaces the tags
                params[f"Tags.{i}.Key"], params[f"Tags.{i}.Value"] = tag["Key"], tag["Value"]
            await self.call(session, "UpdateOTAJob", params)
        except ApiCallError as exc:
            return await self.batch(request, error=exc)
        return await self.batch(request, notice="batch updated")

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request)
        assert session is not None
        job_id = request.match_info["job_id"]
        form = await request.post()
        flags = {flag: "true" for flag in CANCEL_FLAGS if form.get(flag)}
        try:
            await self.call(session, "CancelOTATaskByJob", {"JobId": job_id, **flags})
        except ApiCallError as exc:
            return await self.batch(request, error=exc)
        return await self.batch(request, notice="tasks canceled")

    async def confirm(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request)
        assert session is not None
        form = await request.post()
        try:
            await self.call(session, "ConfirmOTATask", {"TaskId.1": str(form.get("task_id"))})
        except ApiCallError as exc:
            return await self.batch(request, error=exc)
        return await self.batch(request, notice="task confirmed")

    async def device(self, request: web.Request) -> web.Response:
        session = self.session(request)
        assert session is not None
        pk, dn = request.match_info["product_key"], request.match_info["device_name"]
        try:
            versions = await self.call(
                session, "ListOTAModuleVersionsByDevice", {"ProductKey": pk, "DeviceName": dn}
            )
            packages = await self.call(
                session, "ListOTAFirmware", {"ProductKey": pk, "PageSize": 100}
            )
            history: list[dict[str, Any]] = []
            for fw in packages["FirmwareInfo"]["SimpleFirmwareInfo"]:
                jobs = await self.call(
                    session,
                    "ListOTAJobByDevice",
                    {"FirmwareId": fw["FirmwareId"], "ProductKey": pk, "DeviceName": dn},
                )
                for job in jobs["Data"]["SimpleOTAJobInfo"]:
                    tasks = await self.call(
                        session,
                        "ListOTATaskByJob",
                        {"JobId": job["JobId"], "DeviceNames.1": dn, "PageSize": 10},
                    )
                    for task in tasks["Data"]["SimpleOTATaskInfo"]:
                        history.append({**task, "JobId": job["JobId"]})
        except ApiCallError as exc:
            return self.page(request, "packages.html", packages=[], total=0, error=exc, status=404)
        history.sort(key=lambda t: str(t.get("UtcModified", "")), reverse=True)
        return self.page(
            request,
            "device.html",
            product_key=pk,
            device_name=dn,
            versions=versions["Data"]["SimpleOTAModuleInfo"],
            history=history,
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the batch's counts, status and push rate, every second."""
        session = self.session(request)
        assert session is not None
        job_id = request.match_info["job_id"]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        samples = self.samples.setdefault(job_id, PushSamples())
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while True:
                payload: dict[str, Any]
                try:
                    job = (await self.call(session, "QueryOTAJob", {"JobId": job_id}))["Data"]
                except ApiCallError as exc:
                    payload = {"error": f"{exc.code}: {exc.message}"}
                else:
                    stats = job.get("Statistics", {})
                    samples.add(sum(int(stats.get(s, 0)) for s in PUSHED))
                    payload = {
                        "stats": stats,
                        "status": job.get("JobStatus"),
                        "achieved": samples.per_minute(),
                        "achieved_now": samples.last_minute(),
                        "planned": planned_per_minute(job, int(stats.get("Total", 0))),
                    }
                await response.write(f"data: {json.dumps(payload)}\n\n".encode())
                await asyncio.sleep(EVENT_INTERVAL_S)
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.signed_in])
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/", self.packages)
        app.router.add_get("/packages/{firmware_id}", self.package)
        app.router.add_post("/packages/{firmware_id}/batches", self.create_batch)
        app.router.add_get("/batches/{job_id}", self.batch)
        app.router.add_post("/batches/{job_id}/edit", self.edit)
        app.router.add_post("/batches/{job_id}/cancel", self.cancel)
        app.router.add_post("/batches/{job_id}/confirm", self.confirm)
        app.router.add_get("/batches/{job_id}/events", self.events)
        app.router.add_get("/devices/{product_key}/{device_name}", self.device)
        return app


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def console_port() -> int:
    import os

    return int(os.environ.get("OTAFLOW_CONSOLE_PORT", DEFAULT_CONSOLE_PORT))


def main() -> None:
    import os

    from otaflow import logs, metrics

    logs.setup("console")
    settings = config.load()
    api_url = os.environ.get("OTAFLOW_API_URL") or f"http://127.0.0.1:{settings.api_port}"
    port = console_port()
    metrics.ready_when(lambda: True)
    metrics.serve(settings, "console")
    log.info("console on http://127.0.0.1:%d (API %s)", port, api_url)
    web.run_app(Console(settings, api_url).app(), port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
