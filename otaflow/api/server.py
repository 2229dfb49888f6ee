"""otaflow's HTTP endpoint: the platform's OTA OpenAPI (2018-01-20, RPC style).

``POST /`` (``GET /`` for ListOTAModuleByProduct) with ``x-acs-action`` and
``x-acs-version: 2018-01-20`` headers and parameters in the query (and, for
BatchCheckDeviceNames, a form body), exactly as the official SDK
``alibabacloud-iot20180120`` sends them. Every request must carry a valid
ACS3-HMAC-SHA256 signature by one of ``OTAFLOW_ACCESS_KEYS``, a date within 15
minutes and a nonce not seen before (remembered in this process, and for every call
that becomes a command also by the command agent, so a replay to another API process
or after a restart is refused too). Limits, timeouts and error codes:
docs/openapi-ota.md section 12.

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
  fields drive the object store's PostObject form upload to the package server
  (multipart POST to ``Host`` with ``key``, ``policy``, ``OSSAccessKeyId``,
  ``Signature``, then ``file``; see ``otaflow.packages``); then pass
  ``FirmwareUrl``/``FileUrl`` on.

``main()`` serves this API on ``settings.api_port`` and the package server on
``settings.package_port`` in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from otaflow import config, logs
from otaflow.api import observe
from otaflow.api.limits import check_params
from otaflow.api.params import ParamError, parse_rpc_request
from otaflow.api.signature import SignatureError, SignatureVerifier
from otaflow.api.views import VIEW_ACTIONS, TaskView, TaskViewConsumer
from otaflow.config import Settings
from otaflow.control.client import CommandResult, CommandTimeout
from otaflow.control.common import utc
from otaflow.control.errors import ApiError, invalid
from otaflow.control.plane import ControlPlane
from otaflow.packages import UPLOAD_ACCESS_KEY_ID, PackageStore, UnsafeSettings, bind_address

log = logging.getLogger("otaflow.api")

HOST_ID = "otaflow"
# Every format the console lists for a package file.
FILE_SUFFIXES = ("bin", "dav", "apk", "tar", "gz", "tar.gz", "zip", "gzip", "tar.xz", "pack")
LOCAL_ACTIONS = frozenset({"GenerateOTAUploadURL", "GenerateDeviceNameListURL"})
#: Actions whose command needs task ids resolved to their devices first.
TASK_ID_ACTIONS = frozenset({"ConfirmOTATask", "ReupgradeOTATask"})
#: Answers from the command agent completed from the task view.
VIEW_ENRICHED = frozenset({"QueryOTAJob", "QueryDeviceDetail"})
#: Command results that are gateway errors, with their HTTP status.
GATEWAY_RESULT_CODES = {"SignatureNonceUsed": 400, "ServiceUnavailable.Expired": 503}

# -- limits (docs/openapi-ota.md, "Limits and faults") ---------------------------------
#: The request line: the longest call the SDK makes within the API's own limits (200
#: target names of 32 characters, percent-encoded, with tags and versions) is ~40 KB.
MAX_REQUEST_LINE = 256 * 1024
MAX_HEADER_FIELD = 16 * 1024
#: A form body: BatchCheckDeviceNames with 10,000 names and nicknames.
MAX_BODY_BYTES = 8 * 1024 * 1024
BODY_TIMEOUT_S = 10.0
KEEPALIVE_TIMEOUT_S = 75.0
LINGERING_S = 2.0


class Commands(Protocol):
    def call(
        self,
        action: str,
        params: Mapping[str, str],
        *,
        request_id: str | None = None,
        timeout: float = ...,
        now_ms: int | None = None,
        nonce: str | None = None,
    ) -> CommandResult: ...


def _gateway_body(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {
        "RequestId": request_id,
        "HostId": HOST_ID,
        "Code": code,
        "Message": message,
        "Recommend": "",
    }


def json_response(body: Mapping[str, Any], status: int = 200) -> web.Response:
    """A JSON answer encoded with orjson: a page of 100 tasks takes about a tenth of the
    standard library's time, which is most of a list call's cost on the event loop.
    A value orjson refuses (an integer over 64 bits) falls back to the standard encoder."""
    try:
        encoded = orjson.dumps(body)
    except TypeError:
        encoded = json.dumps(body).encode()
    response = web.Response(
        body=encoded, status=status, content_type="application/json", charset="utf-8"
    )
    observe.label_answer(response, body)
    return response


def _gateway_error(request_id: str, code: str, message: str, status: int) -> web.Response:
    return json_response(_gateway_body(request_id, code, message), status=status)


#: View reads served at once: one, on the event loop, while no other call is in
#: progress (``Api.handle``). Measured (benchmarks/api_view_bench.py, 20 listers of a
#: 100,000-task batch, one unrelated caller, 2-core machine): reads in a worker thread
#: (one lane) gave lists p99 59-71 ms and the unrelated call 7.8-8.4 ms; on the loop
#: with no priority, lists 32-35 ms but the unrelated call 83-110 ms; on the loop after
#: the other calls, lists 37-48 ms and the unrelated call 9.4-12.9 ms; the other calls
#: counted from their parse (``CallPriority``), lists 40-43 ms and the unrelated call
#: 5.7-7.1 ms (docs/openapi-ota.md section 12 has the medians). Two lanes in threads:
#: 59.1 and 11.7 ms.
VIEW_LANE_SIZE = 1
#: How long a view read waits for other calls in flight to finish before it starts
#: anyway: other calls go first, but a steady stream of them (each in flight while
#: its command travels through Kafka) must not starve the reads. 3 ms measured no better.
OTHERS_FIRST_S = 0.01


def _new_request_id() -> str:
    return str(uuid.uuid4()).upper()


#: The gateway code for an HTTP status the server itself answers (not an operation).
STATUS_CODES: dict[int, tuple[str, str]] = {
    400: ("InvalidRequest.Malformed", "The request is not a well-formed HTTP request."),
    404: ("InvalidApi.NotFound", "Specified api is not found, please check your url and method."),
    405: ("UnsupportedHTTPMethod", "This http method not supported."),
    408: ("RequestTimeout", "The request was not received in time."),
    413: ("RequestEntityTooLarge", "The request body is too large."),
    431: ("InvalidRequest.HeaderTooLarge", "The request line or a header is too large."),
    500: (
        "InternalError",
        "The request processing has failed due to some unknown error, exception or failure.",
    ),
    503: ("ServiceUnavailable", "The request has failed due to a temporary failure of the server."),
    504: ("ServiceTimeout", "The request processing took too long."),
}


def status_error(status: int, detail: str = "") -> web.Response:
    code, message = STATUS_CODES.get(status, STATUS_CODES[500])
    if detail:
        message = f"{message} {detail}"
    return _gateway_error(_new_request_id(), code, message, status if status >= 400 else 500)


@web.middleware
async def platform_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Whatever goes wrong inside a request is answered in the gateway's JSON shape: the
    SDK cannot parse aiohttp's plain-text pages (it raises a JSON error instead of a
    ClientException/ServerException with a code)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return status_error(exc.status, exc.reason if exc.status != 500 else "")
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return status_error(500)


#: Set on a request that ``ApiRequestHandler`` counts in flight from its parse.
COUNTED_IN_FLIGHT = web.RequestKey("otaflow.counted_in_flight", bool)


def is_view_read(headers: Mapping[str, str]) -> bool:
    """Does this call read the task view (its own lane, after the other calls)? Chosen by
    the ``x-acs-action`` header every ACS3 call is signed with. One rule for the count
    at parse, its hand-over to the handler and the lane: were they to disagree, a call
    would stay counted in flight for good."""
    return headers.get("x-acs-action", "") in VIEW_ACTIONS


class CallPriority:
    """Calls other than view reads in flight; a view read waits for none to be left
    (``Api.handle``), at most ``Api.others_first_s``.

    A call counts from the moment its request line and headers are parsed
    (``ApiRequestHandler.data_received``), not from its handler's start: on a loop busy
    with pages that start is two loop turns later, each turn with a page in it
    (instrumented: arrival to handler p50 2.0 ms, against 0.4 ms for a page). It counts
    until it is answered, its wait on the control plane included: the command runs in a
    worker thread, which needs the GIL; with pages read meanwhile it waited for the
    loop's switch interval at each step (the unrelated call's p99 in the server went from
    2-3 ms to 27-36 ms; with a 1 ms switch interval, 24 ms)."""

    def __init__(self) -> None:
        self._in_flight = 0
        self._none_left = asyncio.Event()
        self._none_left.set()

    @contextlib.contextmanager
    def counting(self, begun: bool = False) -> Iterator[None]:
        """Count a call until the block ends (``begun``: its count began at its parse)."""
        if not begun:
            self.begin()
        try:
            yield
        finally:
            self.end()

    def begin(self) -> None:
        self._in_flight += 1
        self._none_left.clear()

    def end(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._none_left.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def none_left(self, within: float) -> None:
        """Return when no other call is in flight, or after ``within`` seconds."""
        if not self._none_left.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_left.wait(), within)


class ApiRequestHandler(RequestHandler):
    """aiohttp's connection handler with the platform's error shape and a read timeout.

    * Errors found before a request reaches the application (a request line or header
      over the limit, a malformed request) are answered in JSON, not aiohttp's text.
    * A request whose line and headers are not complete ``header_timeout_s`` after its
      first byte arrived is answered 408 and the connection closed (a half-sent request
      is never held open); the body has its own timeout in ``Api.handle``.
    """

    header_timeout_s: float = 10.0

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 500:
            log.error("error handling a request", exc_info=exc)
        detail = ""
        if exc is not None and status != 500:
            detail = str(getattr(exc, "message", "") or exc)[:200]
        if isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage)
            and any(w in detail for w in ("too long", "too large", "when reading"))
        ):
            status = 431
        response = status_error(status, detail)
        response.force_close()
        return response

    #: Set by ``ApiRunner`` (the Api's): the calls this connection has parsed and not
    #: yet handled count as in flight from here.
    priority: CallPriority | None = None
    #: Parsed calls other than view reads, counted in ``priority``, not yet handled.
    _early_calls = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._partial_since: float | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        # Parsed calls that will never be handled are no longer in flight.
        if self.priority is not None:
            for _ in range(self._early_calls):
                self.priority.end()
        self._early_calls = 0
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parsed = len(self._messages)
        super().data_received(data)
        if self.priority is not None and len(self._messages) > parsed:
            for message, _ in itertools.islice(self._messages, parsed, None):
                headers = getattr(message, "headers", None)  # None: a parse error
                if headers is not None and not is_view_read(headers):
                    self._early_calls += 1
                    self.priority.begin()
        if self._messages or getattr(self, "_request_in_progress", False):
            self._partial_since = None
        elif self._partial_since is None and self.transport is not None:
            started = self._partial_since = self._loop.time()
            self._loop.call_later(self.header_timeout_s, self._check_partial, started)

    async def _handle_request(self, request: Any, *args: Any) -> Any:
        # Bytes that came between the headers and the handler's start were this
        # request's body, not the start of a half-sent next one.
        self._partial_since = None
        # Calls are handled in the order parsed: this one takes over the count that
        # data_received began, until it is answered.
        if self.priority is None or not self._early_calls or is_view_read(request.headers):
            return await super()._handle_request(request, *args)
        self._early_calls -= 1
        request[COUNTED_IN_FLIGHT] = True  # so ``Api.handle`` does not count it again
        with self.priority.counting(begun=True):
            return await super()._handle_request(request, *args)

    def _check_partial(self, started: float) -> None:
        if self._partial_since != started or self._messages or self.transport is None:
            return
        if getattr(self, "_request_in_progress", False):
            return
        body = json.dumps(
            _gateway_body(_new_request_id(), *STATUS_CODES[408]), separators=(",", ":")
        ).encode()
        head = (
            "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(Exception):
            self.transport.write(head.encode() + body)
        self.transport.close()


class _ApiServer(web.Server):
    priority: CallPriority | None = None

    def __call__(self) -> RequestHandler:
        handler = ApiRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.priority = self.priority
        return handler


class ApiRunner(web.AppRunner):
    """An ``AppRunner`` whose connections use ``ApiRequestHandler`` and the API's limits
    on the request line and headers."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", None)
        kwargs.setdefault("max_line_size", MAX_REQUEST_LINE)
        kwargs.setdefault("max_field_size", MAX_HEADER_FIELD)
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT_S)
        # After an early answer (408, 413) the unread rest of a body is drained for at
        # most this long, so the client sees the answer, then the connection closes.
        kwargs.setdefault("lingering_time", LINGERING_S)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ApiServer
        if API_KEY in self.app:
            cast(_ApiServer, server).priority = self.app[API_KEY].priority
        return server


def _business_error(request_id: str, code: str, message: str) -> web.Response:
    return json_response(
        {"RequestId": request_id, "Success": False, "Code": code, "ErrorMessage": message}
    )


def _success(request_id: str, data: Any, top: Mapping[str, Any]) -> web.Response:
    body: dict[str, Any] = {"RequestId": request_id, "Success": True, "Code": "", **top}
    if data is not None:
        body["Data"] = data
    return json_response(body)


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
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        others_first_s: float = OTHERS_FIRST_S,
    ) -> None:
        self.settings = settings
        self.commands = control_client
        self.views = views
        self.packages = packages or PackageStore(settings)
        self.verifier = verifier or SignatureVerifier(settings.access_keys)
        self.command_timeout = command_timeout
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes
        self.others_first_s = others_first_s
        # Reads of the task view take their own lane (see ``handle``); created lazily so
        # the semaphore belongs to the loop that serves.
        self._view_lane: asyncio.Semaphore | None = None
        # Calls other than view reads in flight; a view read starts only when there is
        # none (see ``handle``).
        self.priority = CallPriority()

    async def read_body(self, request: web.Request, request_id: str) -> bytes | web.Response:
        """The body, once the headers passed every check that needs no body; a body over
        the limit is refused from its Content-Length (or as soon as it passes the limit)."""
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            return _gateway_error(
                request_id,
                STATUS_CODES[413][0],
                f"The request body is {length:,} bytes; at most {self.max_body_bytes:,}.",
                413,
            )
        try:
            async with asyncio.timeout(self.body_timeout_s):
                chunks: list[bytes] = []
                size = 0
                async for chunk in request.content.iter_any():
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        return _gateway_error(
                            request_id,
                            STATUS_CODES[413][0],
                            f"The request body is over {self.max_body_bytes:,} bytes.",
                            413,
                        )
                    chunks.append(chunk)
        except TimeoutError:
            return _gateway_error(
                request_id,
                STATUS_CODES[408][0],
                f"The request body was not received within {self.body_timeout_s:g} s.",
                408,
            )
        return b"".join(chunks)

    async def handle(self, request: web.Request) -> web.Response:
        """One call. Reads of the task view (a page of a 100,000-task batch) are served
        ``VIEW_LANE_SIZE`` at a time, in arrival order, and only while no other call is in
        flight (``CallPriority``: from its parse to its answer); the rest wait, parked,
        before any work is spent on them. So twenty clients paging a big batch keep one
        lane busy and no more, and every other call (a write, a device query) goes
        first: it waits at most for the page being built.
        The lane is chosen from the ``x-acs-action`` header that every ACS3 call is
        signed with; a call without it is served in the general lane, which only costs
        it its place in the queue."""
        if is_view_read(request.headers):
            if self._view_lane is None:
                self._view_lane = asyncio.Semaphore(VIEW_LANE_SIZE)
            async with self._view_lane:
                # Bounded: a steady stream of other calls must not starve the reads.
                await self.priority.none_left(self.others_first_s)
                return await self._handle(request)
        if request.get(COUNTED_IN_FLIGHT):  # since its parse, by ApiRequestHandler
            return await self._handle(request)
        with self.priority.counting():
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.Response:
        request_id = _new_request_id()
        query = {k: v for k, v in request.query.items()}
        try:
            prechecked = self.verifier.precheck(request.headers)
        except SignatureError as exc:
            refused = json_response(exc.to_body(request_id, HOST_ID), status=exc.http_status)
            if request.body_exists:
                refused.force_close()  # the body is not read: the connection is not reused
            return refused
        body = await self.read_body(request, request_id)
        if isinstance(body, web.Response):
            # The rest of the body is never read: the connection cannot be reused.
            body.force_close()
            return body
        try:
            signed = self.verifier.verify_request(
                request.method, request.path, query, request.headers, body, prechecked=prechecked
            )
        except SignatureError as exc:
            return json_response(exc.to_body(request_id, HOST_ID), status=exc.http_status)
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
            check_params(action, params)
            if action in LOCAL_ACTIONS:
                data = self.local(action, params)
            elif action in VIEW_ACTIONS:
                self.views.check_ready()
                structured = rpc.structured()
                if self.views.answers_at_once(action, structured):
                    # An index lookup (a page of 100 tasks: ~0.4 ms) on the loop: a thread
                    # would cost more in hand-overs and GIL waits than the read itself.
                    data, top = self.views.answer(action, structured)
                else:  # it may wait on Kafka (an unknown batch: catch up first)
                    data, top = await asyncio.to_thread(self.views.answer, action, structured)
            elif ControlPlane.supports(action):
                data, top = await self.command(action, params, request_id, signed.replay_key())
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
        self, action: str, params: dict[str, str], request_id: str, nonce: str | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if action in TASK_ID_ACTIONS or action in VIEW_ENRICHED:
            self.views.check_ready()
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
            nonce=nonce,
        )
        if not result.success and result.code in GATEWAY_RESULT_CODES:
            status = GATEWAY_RESULT_CODES[result.code]
            raise ApiError(result.code, result.message or "", status)
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
        grant = self.packages.grant_upload(key, now=now)
        return {
            "Host": self.settings.package_base_url,
            "Key": grant.key,
            "ObjectStorage": "OTAFLOW",
            "OSSAccessKeyId": UPLOAD_ACCESS_KEY_ID,
            "Policy": grant.policy,
            "Signature": grant.signature,
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
    **limits: Any,
) -> web.Application:
    api = Api(settings, control_client, views, packages=packages, verifier=verifier, **limits)
    known = lambda a: a in LOCAL_ACTIONS or a in VIEW_ACTIONS or ControlPlane.supports(a)  # noqa: E731
    # Metrics outermost: they count the answer platform_errors made of any failure.
    app = web.Application(
        client_max_size=api.max_body_bytes,
        middlewares=[observe.request_metrics(known), platform_errors],
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
    from otaflow.verification_feed import CommandSender, VerificationFeed

    packages = PackageStore(settings)  # first: it refuses an unsafe URL key
    if not settings.access_keys:
        log.warning("OTAFLOW_ACCESS_KEYS is empty: every API request will be refused")
    topics.ensure_topics(settings.kafka_bootstrap, settings)
    control = await asyncio.to_thread(ControlClient, settings)
    # The task view also reports verification outcomes (otaflow.verification_feed).
    sender = CommandSender(settings)
    feed = await asyncio.to_thread(TaskViewConsumer, settings, VerificationFeed(sender))
    runners = []
    try:
        for runner, port in (
            (
                ApiRunner(create_app(settings, control, feed.view, packages=packages)),
                settings.api_port,
            ),
            (web.AppRunner(make_app(packages), access_log=None), settings.package_port),
        ):
            await runner.setup()
            # Loopback unless OTAFLOW_BIND opens it: safe by default.
            await web.TCPSite(runner, bind_address(), port).start()
            runners.append(runner)
        host = bind_address()
        log.info("API on %s:%d, packages on :%d", host, settings.api_port, settings.package_port)
        observe.serve_metrics(settings, feed.view)
        await (stop or asyncio.Event()).wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        feed.close()
        sender.close()
        control.close()


def main() -> None:
    logs.setup("api")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config.load()))
    except UnsafeSettings as exc:
        log.error("refusing to start: %s", exc)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()


__all__ = ["Api", "ApiRunner", "create_app", "main", "serve", "split_result"]
