"""The API's request metrics and log lines, as one aiohttp middleware.

Every request is counted by operation (the ``x-acs-action``; ``unknown`` for names the
API does not serve, so a caller cannot mint label values) and answer code (``Success``,
the platform's ``Code`` of a business or gateway error, else the HTTP status), timed,
and logged at INFO as ``api <operation> <code> <ms> ms <RequestId>``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from otaflow import metrics
from otaflow.config import Settings

log = logging.getLogger("otaflow.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Answers larger than this are lists; their code is read from the HTTP status only.
MAX_PARSED_BODY = 256 * 1024


#: Where an answer built by the API carries its code and request id for the middleware.
ANSWER_LABEL = web.ResponseKey("otaflow.answer", tuple[str, str])


def label_answer(response: web.StreamResponse, body: Mapping[str, Any]) -> None:
    """Note an answer's code and request id on it, from the body it was encoded from,
    so the middleware does not parse the JSON again (a task page is 30 KB)."""
    code = "Success" if body.get("Success") is True else str(body.get("Code") or response.status)
    response[ANSWER_LABEL] = (code, str(body.get("RequestId", "-")))


def answer_code(response: web.StreamResponse) -> tuple[str, str]:
    """(code, request id) of an answer."""
    labelled = response.get(ANSWER_LABEL)
    if labelled is not None:
        return labelled
    if isinstance(response, web.Response) and response.content_type == "application/json":
        body = response.body
        if isinstance(body, bytes) and len(body) <= MAX_PARSED_BODY:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict):
                request_id = str(data.get("RequestId", "-"))
                if data.get("Success") is True:
                    return "Success", request_id
                if data.get("Code"):
                    return str(data["Code"]), request_id
    return str(response.status), "-"


def request_metrics(known: Callable[[str], bool]) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        action = request.headers.get("x-acs-action", "")
        operation = action if action and known(action) else "unknown"
        code, request_id = "500", "-"  # what an exception out of the handler becomes
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            code, request_id = str(exc.status), "-"
            raise
        else:
            code, request_id = answer_code(response)
            return response
        finally:
            seconds = time.perf_counter() - started
            metrics.API_REQUESTS.labels(operation, code).inc()
            metrics.API_LATENCY.labels(operation).observe(seconds)
            log.info("api %s %s %.0f ms %s", operation, code, seconds * 1000, request_id)

    return middleware


def serve_metrics(settings: Settings, view: object) -> None:
    """Serve the API process's metrics, with the fleet as its task view sees it (tasks
    per status, pushes and configured rate per batch) and dead letters by reason."""
    from prometheus_client import REGISTRY

    REGISTRY.register(metrics.TaskViewCollector(view))
    REGISTRY.register(metrics.DeadLetterCounter(settings))
    metrics.ready_when(lambda: True)  # called once the listeners are up
    metrics.serve(settings, "api")
