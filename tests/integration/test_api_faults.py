"""Issue 16 on the real broker: a command that cannot be applied, replays across API
processes and restarts, and a call the API answered 503.

The worker runs as a real process; the API runs here, as two independent "processes"
(each with its own ControlClient, task view and signature verifier, as two replicas
behind the same keys would have), on free ports with ``ApiRunner``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from alibabacloud_iot20180120 import models as m
from Tea.exceptions import TeaException

from otaflow import topics
from otaflow.api.server import create_app
from otaflow.api.signature import sign_request
from otaflow.api.views import TaskViewConsumer
from otaflow.codec import codec
from otaflow.config import Settings
from otaflow.control.client import ControlClient
from otaflow.control.errors import ApiError
from otaflow.dev import devstack
from otaflow.packages import PackageStore
from tests.integration.conftest import Otaflow
from tests.served_api import ServedApi, free_port

pytestmark = pytest.mark.integration

AK, SK = "faultAK", "faultSecret"
CODEC = codec()


class ApiProcess(ServedApi):
    """One API replica: its own Kafka clients, view, verifier and port."""

    def __init__(self, settings: Settings, tmp: Path, command_timeout: float = 60.0) -> None:
        port = free_port()
        self.settings = replace(settings, api_port=port, access_keys={AK: SK})
        self.control = ControlClient(self.settings)
        self.feed = TaskViewConsumer(self.settings)
        app = create_app(
            self.settings,
            self.control,
            self.feed.view,
            packages=PackageStore(self.settings, root=tmp / "packages"),
            command_timeout=command_timeout,
        )
        super().__init__(app, port, (AK, SK), ready_timeout_s=20, sdk_read_timeout_ms=90_000)

    def close(self) -> None:
        super().close()
        self.feed.close()
        self.control.close()


class World:
    def __init__(self, stack: devstack.DevStack, tmp: Path) -> None:
        self.otaflow = Otaflow(stack, tmp)
        self.otaflow.start_worker()
        self.tmp = tmp
        self.apis: list[ApiProcess] = []

    def api(self, command_timeout: float = 60.0) -> ApiProcess:
        process = ApiProcess(self.otaflow.settings, self.tmp, command_timeout)
        self.apis.append(process)
        return process

    def close(self) -> None:
        for process in self.apis:
            process.close()
        self.otaflow.close()


@pytest.fixture
def world(stack: devstack.DevStack, tmp_path: Path) -> Iterator[World]:
    w = World(stack, tmp_path)
    try:
        yield w
    finally:
        w.close()


def create_product(api: ApiProcess, name: str) -> Any:
    return api.sdk().create_product(m.CreateProductRequest(product_name=name, node_type=0)).body


def test_command_that_cannot_be_stored_is_answered_dead_lettered_and_agent_goes_on(
    world: World,
) -> None:
    """A client that bypasses the API's checks (the CLI, an old API) sends a value the
    records cannot hold (a product's DataFormat of 2^40 in an Avro int; before the package
    checks, a firmware size of 2^63 did the same). Before: the worker exited."""
    control = world.otaflow.control
    result = control.call(
        "CreateProduct",
        {"ProductName": "pfault00", "NodeType": "0", "DataFormat": str(2**40)},
        timeout=90,
    )
    assert result.success is False
    assert result.code == "iot.system.SystemException"
    dead = world.otaflow.reader(topics.DEAD_LETTERS).wait_for(
        lambda rs: any("CreateProduct" in r["reason"] for r in rs), what="the dead letter"
    )
    reason = next(r["reason"] for r in dead if "CreateProduct" in r["reason"])
    assert reason.startswith("CreateProduct could not be applied"), reason
    # The agent goes on, and nothing of the refused command was written.
    assert world.otaflow.procs["worker"].poll() is None, world.otaflow.log("worker")
    again = world.otaflow.call(
        "CreateProduct", int(time.time() * 1000), ProductName="pfault00", NodeType=0
    )
    assert again["ProductKey"]  # the name was never taken by the refused command


def test_a_replay_is_refused_by_another_api_process_and_after_a_restart(world: World) -> None:
    first, second = world.api(), world.api()
    name = "p_" + uuid.uuid4().hex[:12]
    query = {"ProductName": name, "NodeType": "0"}
    headers = sign_request(
        access_key_id=AK,
        access_key_secret=SK,
        method="POST",
        host="api.example",  # one Host for every replica, as behind a load balancer
        query=query,
        action="CreateProduct",
        version="2018-01-20",
    )

    def send(api: ApiProcess) -> requests.Response:
        return requests.post(f"http://{api.host}/", params=query, headers=headers, timeout=90)

    answer = send(first)
    assert answer.status_code == 200 and answer.json()["Success"] is True, answer.text
    replayed = send(second)
    assert replayed.status_code == 400, replayed.text
    assert replayed.json()["Code"] == "SignatureNonceUsed"
    first.close()
    world.apis.remove(first)
    restarted = world.api()  # a fresh process: nothing in memory
    replayed = send(restarted)
    assert replayed.status_code == 400, replayed.text
    assert replayed.json()["Code"] == "SignatureNonceUsed"


def test_a_create_answered_503_is_never_applied(world: World) -> None:
    impatient, patient = world.api(command_timeout=1.0), world.api()
    name = "p_" + uuid.uuid4().hex[:12]
    assert create_product(patient, "p_" + uuid.uuid4().hex[:12]).success  # worker is up
    world.otaflow.stop("worker", kill=True)
    with pytest.raises(TeaException) as raised:
        create_product(impatient, name)
    assert raised.value.code == "ServiceUnavailable"
    world.otaflow.start_worker()
    # The client retries (a new request, a new nonce): exactly one product is made.
    body = create_product(patient, name)
    assert body.success is True, f"{body.code}: {body.error_message}"


def test_task_view_says_not_ready_until_it_has_read_what_was_there(
    stack: devstack.DevStack, tmp_path: Path
) -> None:
    """After an API restart the view answered 0, then 71,137, ... of 100,000 tasks."""
    deployment = Otaflow(stack, tmp_path)
    feed = None
    try:
        total = 30_000
        topic = topics.TASK_EVENTS.full_name(deployment.settings)
        for i in range(total):
            event = {
                "task_id": f"t{i:06d}",
                "batch_id": "job-restart",
                "product_key": "pk1",
                "device_name": f"dev-{i:06d}",
                "module": "default",
                "dest_version": "2.0",
                "status": "QUEUED",
                "event_time": 1_700_000_000_000 + i,
            }
            deployment.producer.produce(
                topic, key=f"pk1/dev-{i:06d}".encode(), value=CODEC.encode("TaskEvent", event)
            )
            if i % 5000 == 0:
                deployment.producer.poll(0)
        deployment.flush()
        feed = TaskViewConsumer(deployment.settings)
        view = feed.view
        assert view.catching_up is not None and view.catching_up[1] >= total
        deadline = time.monotonic() + 60
        while True:
            progress = view.catching_up
            counted = view.statistics("job-restart")["Total"]
            if progress is None:
                # Once it says ready, it answers every task that was there.
                assert counted == total
                break
            try:
                view.check_ready()
            except ApiError as refused:
                assert refused.http_status == 503
                assert refused.code == "ServiceUnavailable.ViewNotReady"
            else:  # it caught up between the two reads: the next round checks the count
                assert view.catching_up is None
            assert time.monotonic() < deadline, f"view never caught up: {progress}"
            time.sleep(0.01)
        view.check_ready()
    finally:
        if feed is not None:
            feed.close()
        deployment.close()
