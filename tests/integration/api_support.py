"""The OTA OpenAPI driven by the official SDK, unchanged, against a running otaflow:
the deployment and the helpers every SDK-driven integration test shares.

A deployment is real Kafka, the worker as a real process, and the API and package
servers in this process on free ports. The per-resource tests in
``tests/integration/openapi/`` share one (package-scoped ``api`` in their conftest);
another module imports the module-scoped ``api`` fixture from here (``__all__ =
["api"]``). Each test uses its own product, so tests stay independent while sharing the
worker.

Task reads come from the API's task view and are eventually consistent: tests that
read tasks right after a write poll (``eventually``).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from alibabacloud_iot20180120 import models as m
from alibabacloud_iot20180120.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.models import Config
from alibabacloud_tea_util import models as util_models

from otaflow import topics
from otaflow.api.server import create_app
from otaflow.api.views import TaskViewConsumer
from otaflow.codec import codec
from otaflow.control.client import ControlClient
from otaflow.dev import devstack
from otaflow.package_server import make_app
from otaflow.packages import PackageStore
from tests.integration.conftest import Otaflow
from tests.integration.uploads import post_object
from tests.served_api import free_port

CODEC = codec()
AK, SK = "testAccessKey", "testAccessKeySecret"
T = TypeVar("T")


class Deployment:
    """otaflow with its API: the worker process, and the API + package servers here."""

    def __init__(self, stack: devstack.DevStack, tmp: Path) -> None:
        self.otaflow = Otaflow(stack, tmp)
        api_port, package_port = free_port(), free_port()
        self.settings = replace(
            self.otaflow.settings,
            api_port=api_port,
            package_port=package_port,
            package_base_url=f"http://127.0.0.1:{package_port}",
            access_keys={AK: SK},
        )
        self.otaflow.env["OTAFLOW_PACKAGE_BASE_URL"] = self.settings.package_base_url
        self.otaflow.start_worker()
        self.packages = PackageStore(self.settings, root=tmp / "packages")
        self.control = ControlClient(self.settings)
        self.feed = TaskViewConsumer(self.settings)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(20)
        self.client = self.sdk(SK)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runners = []
        for app, port in (
            (
                create_app(self.settings, self.control, self.feed.view, packages=self.packages),
                self.settings.api_port,
            ),
            (make_app(self.packages), self.settings.package_port),
        ):
            runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(runner.setup())
            self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
            self.runners.append(runner)
        self._ready.set()
        self.loop.run_forever()

    def sdk(self, secret: str) -> Client:
        return Client(
            Config(
                access_key_id=AK,
                access_key_secret=secret,
                endpoint=f"127.0.0.1:{self.settings.api_port}",
                protocol="http",
                read_timeout=70_000,
            )
        )

    def call_raw(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """An operation (or extra parameters) the SDK has no model for, through its
        generic ``call_api``: still the SDK's own signing and wire format."""
        query = {k: str(v) for k, v in params.items()}
        api_params = open_api_models.Params(
            action=action,
            version="2018-01-20",
            protocol="HTTP",
            pathname="/",
            method="POST",
            auth_type="AK",
            style="RPC",
            req_body_type="formData",
            body_type="json",
        )
        request = open_api_models.OpenApiRequest(query=query)
        response = self.client.call_api(api_params, request, util_models.RuntimeOptions())
        body: dict[str, Any] = response["body"]
        return body

    def close(self) -> None:
        async def stop() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.feed.close()
        self.control.close()
        self.otaflow.close()


def running_deployment(
    stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A deployment for a fixture to yield; closed when the fixture's scope ends."""
    deployment = Deployment(stack, tmp_path_factory.mktemp("api"))
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.fixture(scope="module")
def api(stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One deployment for a test module that imports this fixture (the tests under
    ``tests/integration/openapi/`` share one for the package instead: its conftest)."""
    yield from running_deployment(stack, tmp_path_factory)


def eventually(fetch: Callable[[], T], ok: Callable[[T], bool], timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s; last: {value!r}")
        time.sleep(0.1)


def ok(body: Any) -> Any:
    assert body.success, f"{body.code}: {body.error_message}"
    return body


def refused(body: Any, code: str, *words: str) -> None:
    assert body.success is False, body
    assert body.code == code, f"{body.code}: {body.error_message}"
    for word in words:
        assert word in body.error_message, body.error_message


# -- helpers that build a world ------------------------------------------------------------


def new_product(api: Deployment) -> str:
    name = "p_" + uuid.uuid4().hex[:12]
    body = ok(
        api.client.create_product(m.CreateProductRequest(product_name=name, node_type=0)).body
    )
    assert body.data.product_name == name
    return str(body.product_key)


def register(api: Deployment, pk: str, *names: str, province: str | None = None) -> None:
    for name in names:
        if province is None:
            ok(
                api.client.register_device(
                    m.RegisterDeviceRequest(product_key=pk, device_name=name)
                ).body
            )
        else:
            body = api.call_raw(
                "RegisterDevice",
                {"ProductKey": pk, "DeviceName": name, "Province": province, "City": "Hangzhou"},
            )
            assert body["Success"], body


def upload_firmware(api: Deployment, pk: str, version: str = "2.0", **extra: Any) -> str:
    url = ok(
        api.client.generate_otaupload_url(m.GenerateOTAUploadURLRequest(file_suffix="bin")).body
    ).data
    payload = f"firmware {pk} {version}".encode() * 50
    # Only the SDK's fields, as the object store's PostObject form.
    put = post_object(url, payload)
    assert put.status_code == 200, put.text
    extra.setdefault("need_to_verify", False)
    request = m.CreateOTAFirmwareRequest(
        product_key=pk,
        firmware_name=f"fw_{uuid.uuid4().hex[:10]}",
        dest_version=version,
        firmware_url=url.firmware_url,
        firmware_sign=hashlib.md5(payload).hexdigest(),
        sign_method="MD5",
        firmware_size=len(payload),
        **extra,
    )
    return str(ok(api.client.create_otafirmware(request).body).data.firmware_id)


def report_versions(api: Deployment, pk: str, version: str, *names: str) -> None:
    for name in names:
        api.otaflow.report(pk, name, "VERSION", int(time.time() * 1000), version=version)
    api.otaflow.flush()


def job_ids(api: Deployment, firmware_id: str) -> list[str]:
    body = ok(
        api.client.list_otajob_by_firmware(
            m.ListOTAJobByFirmwareRequest(firmware_id=firmware_id, current_page=1, page_size=50)
        ).body
    )
    return [j.job_id for j in body.data.simple_otajob_info]


def jobs_of_device(api: Deployment, pk: str, device_name: str, firmware_id: str) -> Any:
    """ListOTAJobByDevice's first page (up to 10) of the device's batches of the package."""
    return ok(
        api.client.list_otajob_by_device(
            m.ListOTAJobByDeviceRequest(
                product_key=pk,
                device_name=device_name,
                firmware_id=firmware_id,
                current_page=1,
                page_size=10,
            )
        ).body
    ).data.simple_otajob_info


def device_items(api: Deployment, schema: str) -> list[tuple[int, dict[str, Any]]]:
    """(partition, record) of every ``schema`` item sent to the device partitions so far."""
    reader = api.otaflow.reader(topics.DEVICE_EVENTS)
    reader.poll(0.5)
    out = []
    for partition, envelope in reader.records:
        for item in envelope["items"]:
            name, record = CODEC.decode(item)
            if name == schema:
                out.append((partition, record))
    return out


def wait_items(
    api: Deployment, schema: str, ok: Callable[[list[dict[str, Any]]], bool]
) -> list[tuple[int, dict[str, Any]]]:
    return eventually(lambda: device_items(api, schema), lambda v: ok([r for _, r in v]))


def tasks_of(api: Deployment, job_id: str, status: str | None = None) -> Any:
    return api.client.list_otatask_by_job(
        m.ListOTATaskByJobRequest(job_id=job_id, current_page=1, page_size=100, task_status=status)
    ).body


def dynamic_job(api: Deployment, pk: str, firmware_id: str, **extra: Any) -> Any:
    params: dict[str, Any] = {"src_version": ["1.0"], "maximum_per_minute": 100}
    params.update(extra)
    return api.client.create_otadynamic_upgrade_job(
        m.CreateOTADynamicUpgradeJobRequest(product_key=pk, firmware_id=firmware_id, **params)
    ).body


def static_job(api: Deployment, pk: str, firmware_id: str, **extra: Any) -> Any:
    params: dict[str, Any] = {"target_selection": "ALL", "maximum_per_minute": 100}
    params.update(extra)
    return api.client.create_otastatic_upgrade_job(
        m.CreateOTAStaticUpgradeJobRequest(product_key=pk, firmware_id=firmware_id, **params)
    ).body


def now_ms() -> int:
    return int(time.time() * 1000)


def task_statuses(api: Deployment, job_id: str) -> dict[str, str]:
    """Each device's task status in the batch ``job_id``."""
    body = ok(tasks_of(api, job_id))
    return {t.device_name: t.task_status for t in body.data.simple_otatask_info}
