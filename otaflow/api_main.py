"""Entry point of the API process: the OpenAPI server and the package server."""

from __future__ import annotations


def main() -> int:
    from otaflow.api import server

    server.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
