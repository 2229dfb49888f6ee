"""Reads of the task view have their own lane in the API (issue 16: "one big batch does
not slow other calls"), and a task page is rendered as the platform shapes it.

The server runs for real (aiohttp, ``ApiRunner``, signatures checked) on a free port in
this test's event loop; the view's answer is held on an event, so the test sees how many
reads the server lets in at once and whether another call gets through meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import ClientSession, web

from otaflow import config
from otaflow.api import observe
from otaflow.api.client import signed_call_headers
from otaflow.api.server import API_KEY, VIEW_LANE_SIZE, ApiRunner, create_app, json_response
from otaflow.api.views import TaskView
from otaflow.control.client import CommandResult
from otaflow.control.common import utc
from otaflow.packages import PackageStore
from tests.served_api import free_port

AK, SK = "laneAK", "laneSecret"
JOB = "lane-job"
HELD_READS = 20


async def until(
    condition: Callable[[], bool], failure: str | Callable[[], object], within_s: float = 10.0
) -> None:
    """Poll ``condition`` every 10 ms; fail with ``failure`` (or what it returns) once
    ``within_s`` has passed."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, (
            failure() if callable(failure) else failure
        )
        await asyncio.sleep(0.01)


class InstantCommands:
    def call(self, action: str, params: Mapping[str, str], **_: Any) -> CommandResult:
        return CommandResult("r", True, None, None, {"ProductKey": "pk"})


class HeldView(TaskView):
    """A view whose answers wait until the test lets them go, counting how many wait.
    Its answers go to a worker thread (as an unknown batch's do, which may wait on
    Kafka): held on the event loop, they would hold every call."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.inside = 0
        self.most_inside = 0
        self._count = threading.Lock()

    def answers_at_once(self, action: str, p: Mapping[str, Any]) -> bool:
        return False

    def answer(self, action: str, p: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            assert self.release.wait(30)
            return super().answer(action, p)
        finally:
            with self._count:
                self.inside -= 1


@contextlib.asynccontextmanager
async def serving(
    view: TaskView, commands: Any, **limits: Any
) -> AsyncIterator[tuple[int, web.Application]]:
    """The API for real (aiohttp, ``ApiRunner``, signatures checked) on a free port in
    the caller's event loop: (port, application)."""
    port = free_port()
    settings = replace(config.load(), access_keys={AK: SK}, api_port=port)
    packages = PackageStore(settings, root=Path(tempfile.mkdtemp()))
    app = create_app(settings, commands, view, packages=packages, **limits)
    runner = ApiRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port, app
    finally:
        await runner.cleanup()


async def _call(session: ClientSession, port: int, action: str, query: dict[str, str]) -> Any:
    host = f"127.0.0.1:{port}"
    headers = signed_call_headers(AK, SK, host, action, query)
    async with session.post(f"http://{host}/", params=query, headers=headers, data=b"") as r:
        return await r.json()


def test_twenty_held_page_reads_take_one_lane_and_another_call_is_answered_meanwhile() -> None:
    view = HeldView()
    for i in range(10):
        view.apply_task_event(_event(i, "QUEUED"))

    async def scenario() -> None:
        async with serving(view, InstantCommands()) as (port, _):
            try:
                async with ClientSession() as session:
                    reads = [
                        asyncio.create_task(
                            _call(
                                session, port, "ListOTATaskByJob", {"JobId": JOB, "PageSize": "5"}
                            )
                        )
                        for _ in range(HELD_READS)
                    ]
                    await until(lambda: view.inside >= VIEW_LANE_SIZE, "reads never arrived")
                    # Every page read has arrived and waits; an unrelated call still gets its
                    # answer (before the lane, twenty reads held every worker thread).
                    other = await asyncio.wait_for(
                        _call(session, port, "QueryProduct", {"ProductKey": "pk"}), 10
                    )
                    assert other["Success"] is True, other
                    assert view.most_inside == VIEW_LANE_SIZE
                    view.release.set()
                    pages = await asyncio.gather(*reads)
            finally:
                view.release.set()
        assert all(p["Success"] is True and p["Total"] == 10 for p in pages), pages[0]
        assert view.most_inside == VIEW_LANE_SIZE

    asyncio.run(scenario())


class HeldCommands:
    """Control-plane calls held (in their worker thread) until the test lets them go."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.release = threading.Event()
        self.called = threading.Event()

    def call(self, action: str, params: Mapping[str, str], **_: Any) -> CommandResult:
        self.called.set()
        assert self.release.wait(30)
        self.order.append(action)
        return CommandResult("r", True, None, None, {"ProductKey": "pk"})


class OrderedView(TaskView):
    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order

    def answer(self, action: str, p: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        self.order.append(action)
        return super().answer(action, p)


def test_page_reads_wait_for_the_calls_in_flight_parsed_ones_included() -> None:
    """Reads of a known batch are answered on the event loop, after the other calls in
    flight: two QueryProducts pipelined on one connection, the first held in the control
    plane, the second parsed and waiting its turn (HTTP/1.1 answers in order). Five
    reads sent meanwhile wait for both (the wait long enough here)."""
    order: list[str] = []
    commands = HeldCommands(order)
    view = OrderedView(order)
    for i in range(10):
        view.apply_task_event(_event(i, "QUEUED"))

    async def scenario() -> None:
        async with serving(view, commands, others_first_s=30.0) as (port, app):
            try:
                writer = await _two_pipelined_calls_the_first_held(port, commands)
                async with ClientSession() as session:
                    page = {"JobId": JOB, "PageSize": "5"}
                    reads = [
                        asyncio.create_task(_call(session, port, "ListOTATaskByJob", page))
                        for _ in range(5)
                    ]
                    api = app[API_KEY]
                    # Until a read has the lane (and waits), or one was answered (it did not).
                    await until(
                        lambda: (
                            bool(order) or (api._view_lane is not None and api._view_lane.locked())
                        ),
                        "no read arrived",
                    )
                    assert order == []  # nothing read while the parsed call waits its turn
                    commands.release.set()
                    pages = await asyncio.gather(*reads)
                writer.close()
            finally:
                commands.release.set()
        assert all(p["Success"] is True and p["Total"] == 10 for p in pages), pages[0]
        assert order == ["QueryProduct"] * 2 + ["ListOTATaskByJob"] * 5

    asyncio.run(scenario())


def _event(i: int, status: str) -> dict[str, Any]:
    return {
        "batch_id": JOB,
        "task_id": f"task-{i:03d}",
        "product_key": "pk",
        "device_name": f"dev-{i:03d}",
        "module": "default",
        "src_version": "1.0" if i % 2 else None,
        "dest_version": "2.0",
        "status": status,
        "progress": 0,
        "desc": "failed: 3" if i == 3 else None,
        "event_time": 1_700_000_000_000 + i * 1_001,
    }


def test_a_task_page_shows_what_the_platform_shows_and_leaves_out_what_is_empty() -> None:
    view = TaskView()
    for i in range(4):
        view.apply_task_event(_event(i, "FAILED" if i == 3 else "QUEUED"))
    data, top = view.answer("ListOTATaskByJob", {"JobId": JOB, "PageSize": "10"})
    rows = data["SimpleOTATaskInfo"]
    assert top["Total"] == 4
    assert rows[0] == {
        "TaskId": "task-000",
        "JobId": JOB,
        "ProductKey": "pk",
        "DeviceName": "dev-000",
        "IotId": rows[0]["IotId"],
        "DestVersion": "2.0",
        "TaskStatus": "QUEUED",
        "UtcCreate": "2023-11-14T22:13:20.000Z",
        "UtcModified": "2023-11-14T22:13:20.000Z",
        "Progress": "0",
    }
    assert len(rows[0]["IotId"]) == 20
    assert rows[1]["SrcVersion"] == "1.0" and rows[3]["TaskDesc"] == "failed: 3"
    assert rows[3]["UtcCreate"] == "2023-11-14T22:13:23.003Z"


def test_utc_formats_milliseconds_around_second_and_epoch_boundaries() -> None:
    assert utc(None) is None
    assert utc(0) == "1970-01-01T00:00:00.000Z"
    assert utc(999) == "1970-01-01T00:00:00.999Z"
    assert utc(1000) == "1970-01-01T00:00:01.000Z"
    assert utc(-1) == "1969-12-31T23:59:59.999Z"
    assert utc(1_700_000_000_007) == "2023-11-14T22:13:20.007Z"


def test_an_answer_is_labelled_with_its_code_so_the_middleware_need_not_parse_it() -> None:
    ok = json_response({"RequestId": "R1", "Success": True, "Code": "", "Data": {}})
    business = json_response({"RequestId": "R2", "Success": False, "Code": "iot.x.Y"})
    gateway = json_response({"RequestId": "R3", "Code": "Throttling"}, status=429)
    assert observe.answer_code(ok) == ("Success", "R1")
    assert observe.answer_code(business) == ("iot.x.Y", "R2")
    assert observe.answer_code(gateway) == ("Throttling", "R3")
    assert ok.content_type == "application/json" and ok.charset == "utf-8"
    # A body orjson cannot hold (over 64 bits) still answers, through the standard encoder.
    big = json_response({"RequestId": "R4", "Success": True, "Data": 2**70})
    assert isinstance(big.body, bytes)
    assert orjson.loads(big.body.replace(b"1180591620717411303424", b"0"))["Data"] == 0


def _raw_call(port: int, action: str, query: dict[str, str]) -> bytes:
    """One signed call as the bytes a client writes (so two can go in one write)."""
    host = f"127.0.0.1:{port}"
    headers = signed_call_headers(AK, SK, host, action, query)
    lines = [f"POST /?{urlencode(query)} HTTP/1.1", f"Host: {host}", "Content-Length: 0"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _two_pipelined_calls_the_first_held(
    port: int, commands: HeldCommands
) -> asyncio.StreamWriter:
    """Two QueryProducts (each signed with its own nonce) in one write on one connection;
    returns once the first is held in ``commands`` (the second is parsed, not handled)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    query = {"ProductKey": "pk"}
    writer.write(_raw_call(port, "QueryProduct", query) + _raw_call(port, "QueryProduct", query))
    await writer.drain()
    await until(commands.called.is_set, "the first call never reached the control plane")
    return writer


def test_a_call_counts_in_flight_from_its_parse_and_not_after_its_connection_is_gone() -> None:
    """Two QueryProducts pipelined on one connection: the first is held in the control
    plane; the second is parsed but not handled (HTTP/1.1 answers in order), and counts
    already, so a page read would wait for it too. The connection closes: the second will
    never be handled and no longer counts; the first, once answered, neither. (Counted
    from the handler's start, the second never counted: 1, not 2.)"""
    commands = HeldCommands([])
    view = TaskView()

    async def scenario() -> None:
        async with serving(view, commands) as (port, app):
            priority = app[API_KEY].priority
            try:
                writer = await _two_pipelined_calls_the_first_held(port, commands)
                assert priority.in_flight == 2
                writer.close()
                await until(lambda: priority.in_flight == 1, lambda: priority.in_flight)
                commands.release.set()
                await until(lambda: priority.in_flight == 0, lambda: priority.in_flight)
            finally:
                commands.release.set()

    asyncio.run(scenario())
