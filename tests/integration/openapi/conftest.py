"""One OpenAPI deployment for every module in this package: the worker warms up once,
and each test uses its own product, so the tests stay independent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from otaflow.dev import devstack
from tests.integration.api_support import Deployment, running_deployment


@pytest.fixture(scope="package")
def api(stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from running_deployment(stack, tmp_path_factory)
