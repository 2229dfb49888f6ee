"""An otaflow API app served over real HTTP on a free loopback port, by a thread of its
own, with the official SDK as its client.

Unit tests serve it with a stand-in control plane (``tests/unit/test_api_faults.py``),
integration tests with the real one on Kafka (``tests/integration/test_api_faults.py``):
both call it over sockets, as a platform client would.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web
from alibabacloud_iot20180120.client import Client
from alibabacloud_tea_openapi.models import Config

from otaflow.api.server import ApiRunner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServedApi:
    """``app`` served on ``port`` until :meth:`close`; ``sdk()`` signs with the given key."""

    def __init__(
        self,
        app: web.Application,
        port: int,
        access_key: tuple[str, str],
        *,
        ready_timeout_s: float = 10.0,
        sdk_read_timeout_ms: int | None = None,
    ) -> None:
        self.app = app
        self.port = port
        self.access_key = access_key
        self.sdk_read_timeout_ms = sdk_read_timeout_ms
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner = ApiRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", self.port)
            self.loop.run_until_complete(site.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(ready_timeout_s)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sdk(self) -> Client:
        key_id, secret = self.access_key
        return Client(
            Config(
                access_key_id=key_id,
                access_key_secret=secret,
                endpoint=self.host,
                protocol="http",
                read_timeout=self.sdk_read_timeout_ms,
            )
        )

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
