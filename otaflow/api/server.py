"""otaflow's HTTP endpoint: the platform's OTA OpenAPI (2018-01-20, RPC style).

``POST /`` (``GET /`` for ListOTAModuleByProduct) with ``x-acs-action`` and
``x-acs-version: 2018-01-20`` headers and parameters in the query (and, for
BatchCheckDeviceNames, a form body), exactly as the official SDK
``alibabacloud-iot20180120`` sends them. Every request must carry a valid
ACS3-HMAC-SHA256 signature by one of ``OTAFLOW_ACCESS_KEYS``, a date within 15
minutes and a nonce not seen before (nonces are remembered in this process).

Answers: ``{RequestId, Success, Code, ErrorMessage, Data, ...}`` with HTTP 200, also
for business errors (``Success: false``); gateway errors (signature, unknown action,
malformed request) use HTTP 4xx/5xx and ``{RequestId, HostId, Code, Message}``.

Where an answer comes from:

* state-changing calls and reads of the control state: a Command through the
  single command agent (the answer waits for its outcome; reads see every write
  answered before them);
* task reads (ListOTATaskByJob, ListOTAUnfinishedTaskByDevice, ListOTAJobByDevice,
  ListOTAModuleVersionsByDevice, the ``Statistics`` of QueryOTAJob): the task view
  (``otaflow.api.views``), eventually consistent;
* GenerateOTAUploadURL / GenerateDeviceNameListURL: signed here (no state). The
  SDK's OSS fields carry a signed PUT of the package server: upload with
  ``PUT {Host}/packages/{Key}?Expires={Policy}&Signature={Signature}`` (also given
  whole as the extra field ``UploadUrl``), then pass ``FirmwareUrl``/``FileUrl`` on.

``main()`` serves this API on ``settings.api_port`` and the package server on
``settings.package_port`` in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from otaflow import config, logs
from otaflow.api import observe
from otaflow.api.params import ParamError, parse_rpc_request
from otaflow.api.signature import SignatureError, SignatureVerifier
from otaflow.api.views import VIEW_ACTIONS, TaskView, TaskViewConsumer
from otaflow.config import Settings
from otaflow.control.client import CommandResult, CommandTimeout
from otaflow.control.common import utc
from otaflow.control.errors import ApiError, invalid
from otaflow.control.plane import ControlPlane
from otaflow.packages import PackageStore

log = logging.getLogger("otaflow.api")

HOST_ID = "otaflow"
FILE_SUFFIXES = ("bin", "dav", "apk", "tar", "gz", "tar.gz", "zip", "gzip")
LOCAL_ACTIONS = frozenset({"GenerateOTAUploadURL", "GenerateDeviceNameListURL"})
#: Actions whose command needs task ids resolved to their devices first.
TASK_ID_ACTIONS = frozenset({"ConfirmOTATask", "ReupgradeOTATask"})


class Commands(Protocol):
    def call(
        self,
        action: str,
        params: Mapping[str, str],
        *,
        request_id: str | None = None,
        timeout: float = ...,
        now_ms: int | None = None,
    ) -> CommandResult: ...


def _gateway_error(request_id: str, code: str, message: str, status: int) -> web.Response:
    body = {
        "RequestId": request_id,
        "HostId": HOST_ID,
        "Code": code,
        "Message": message,
        "Recommend": "",
    }
    return web.json_response(body, status=status)


def _business_error(request_id: str, code: str, message: str) -> web.Response:
    return web.json_response(
        {"RequestId": request_id, "Success": False, "Code": code, "ErrorMessage": message}
    )


def _success(request_id: str, data: Any, top: Mapping[str, Any]) -> web.Response:
    body: dict[str, Any] = {"RequestId": request_id, "Success": True, "Code": "", **top}
    if data is not None:
        body["Data"] = data
    return web.json_response(body)


def split_result(data: Any) -> tuple[Any, dict[str, Any]]:
    """Undo ``command_agent.result_json``: (Data, other top-level fields)."""
    if isinstance(data, dict) and data.get("_otaflow_body") is True:
        rest = {k: v for k, v in data.items() if k not in ("_otaflow_body", "Data")}
        return data.get("Data"), rest
    return data, {}


class Api:
    def __init__(
        self,
        settings: Settings,
        control_client: Commands,
        views: TaskView,
        *,
        packages: PackageStore | None = None,
        verifier: SignatureVerifier | None = None,
        command_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.commands = control_client
        self.views = views
        self.packages = packages or PackageStore(settings)
        self.verifier = verifier or SignatureVerifier(settings.access_keys)
        self.command_timeout = command_timeout

    async def handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4()).upper()
        body = await request.read()
        query = {k: v for k, v in request.query.items()}
        try:
            self.verifier.verify(request.method, request.path, query, request.headers, body)
        except SignatureError as exc:
            return web.json_response(exc.to_body(request_id, HOST_ID), status=exc.http_status)
        try:
            rpc = parse_rpc_request(request.method, query, request.headers, body)
        except ParamError as exc:
            return _gateway_error(request_id, exc.code, exc.message, exc.http_status)
        action = rpc.action
        # Parameters starting with '_' are otaflow's internal ones; callers never set them.
        params = {k: v for k, v in rpc.params.items() if not k.startswith("_")}
        data: Any
        top: dict[str, Any] = {}
        try:
            if action in LOCAL_ACTIONS:
                data = self.local(action, params)
            elif action in VIEW_ACTIONS:
                data, top = self.views.answer(action, rpc.structured())
            elif ControlPlane.supports(action):
                data, top = await self.command(action, params, request_id)
            else:
                return _gateway_error(
                    request_id,
                    "InvalidApi.NotFound",
                    "Specified api is not found, please check your url and method.",
                    404,
                )
        except ApiError as exc:
            if exc.http_status != 200:
                return _gateway_error(request_id, exc.code, exc.message, exc.http_status)
            return _business_error(request_id, exc.code, exc.message)
        except ParamError as exc:
            return _gateway_error(request_id, exc.code, exc.message, exc.http_status)
        except CommandTimeout:
            return _gateway_error(
                request_id,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.",
                503,
            )
        return _success(request_id, data, top)

    async def command(
        self, action: str, params: dict[str, str], request_id: str
    ) -> tuple[Any, dict[str, Any]]:
        if action in TASK_ID_ACTIONS:
            index = 1
            while f"TaskId.{index}" in params:
                params[f"_TaskDevice.{index}"] = self.views.task_ref(params[f"TaskId.{index}"])
                index += 1
        result = await asyncio.to_thread(
            self.commands.call,
            action,
            params,
            request_id=request_id,
            timeout=self.command_timeout,
        )
        if not result.success:
            raise ApiError(result.code or "iot.system.SystemException", result.message or "")
        data, top = split_result(result.data)
        if action == "QueryOTAJob" and isinstance(data, dict):
            data["Statistics"] = self.views.statistics(data["JobId"])
        if action == "QueryDeviceDetail" and isinstance(data, dict):
            versions = self.views.module_versions(data["ProductKey"], data["DeviceName"])
            if "default" in versions:
                data["FirmwareVersion"] = versions["default"]
        return data, top

    def local(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        now = time.time()
        if action == "GenerateOTAUploadURL":
            suffix = (params.get("FileSuffix") or "bin").lower()
            if suffix not in FILE_SUFFIXES:
                raise invalid("FileSuffix", ", ".join(FILE_SUFFIXES))
            key = f"ota/{uuid.uuid4().hex}.{suffix}"
            return {**self._upload_fields(key, now), "FirmwareUrl": self.packages.url(key)}
        key = f"dnlist/{uuid.uuid4().hex}.csv"
        fields = self._upload_fields(key, now)
        fields["AccessKeyId"] = fields.pop("OSSAccessKeyId")
        return {**fields, "FileUrl": self.packages.url(key)}

    def _upload_fields(self, key: str, now: float) -> dict[str, Any]:
        upload_url = self.packages.signed_url(key, now=now, method="PUT")
        expires = upload_url.split("Expires=", 1)[1].split("&", 1)[0]
        return {
            "Host": self.settings.package_base_url,
            "Key": key,
            "ObjectStorage": "OTAFLOW",
            "OSSAccessKeyId": "otaflow",
            "Policy": expires,
            "Signature": self.packages.signature(key, int(expires), "PUT"),
            "UploadUrl": upload_url,
            "UtcCreate": utc(int(now * 1000)),
        }


API_KEY = web.AppKey("api", Api)


def create_app(
    settings: Settings,
    control_client: Commands,
    views: TaskView,
    *,
    packages: PackageStore | None = None,
    verifier: SignatureVerifier | None = None,
) -> web.Application:
    api = Api(settings, control_client, views, packages=packages, verifier=verifier)
    known = lambda a: a in LOCAL_ACTIONS or a in VIEW_ACTIONS or ControlPlane.supports(a)  # noqa: E731
    app = web.Application(
        client_max_size=64 * 1024 * 1024, middlewares=[observe.request_metrics(known)]
    )
    app[API_KEY] = api
    app.router.add_route("POST", "/", api.handle)
    app.router.add_route("GET", "/", api.handle)
    return app


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the API and the package server until ``stop`` is set (or forever)."""
    from otaflow import topics
    from otaflow.control.client import ControlClient
    from otaflow.package_server import make_app

    if not settings.access_keys:
        log.warning("OTAFLOW_ACCESS_KEYS is empty: every API request will be refused")
    topics.ensure_topics(settings.kafka_bootstrap, settings)
    control = await asyncio.to_thread(ControlClient, settings)
    feed = await asyncio.to_thread(TaskViewConsumer, settings)
    packages = PackageStore(settings)
    runners = []
    try:
        for app, port in (
            (create_app(settings, control, feed.view, packages=packages), settings.api_port),
            (make_app(packages), settings.package_port),
        ):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "0.0.0.0", port).start()
            runners.append(runner)
        log.info("API on :%d, packages on :%d", settings.api_port, settings.package_port)
        observe.serve_metrics(settings, feed.view)
        await (stop or asyncio.Event()).wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        feed.close()
        control.close()


def main() -> None:
    logs.setup("api")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config.load()))


if __name__ == "__main__":
    main()


__all__ = ["Api", "create_app", "main", "serve", "split_result"]
