"""Entry point of the API process: the OpenAPI server and the package server.

Falls back to the package server alone while the OpenAPI server is not installed.
"""

from __future__ import annotations


def main() -> int:
    import importlib

    try:
        server = importlib.import_module("otaflow.api.server")
    except ImportError:
        return serve_packages_only()
    server.main()
    return 0


def serve_packages_only() -> int:
    from aiohttp import web

    from otaflow import config
    from otaflow.package_server import make_app
    from otaflow.packages import PackageStore

    settings = config.load()
    web.run_app(
        make_app(PackageStore(settings)),
        host="127.0.0.1",
        port=settings.package_port,
        print=None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
