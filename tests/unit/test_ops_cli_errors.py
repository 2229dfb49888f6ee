"""The operations CLI answers a wrong endpoint or a missing file with one clear line and
exit status 1, never a traceback."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = ["--access-key-id", "ak", "--access-key-secret", "sk"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otaflow.cli.ops", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


@pytest.fixture
def web_page() -> Iterator[str]:
    """Something that speaks HTTP but is not the API (say, the package server)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_nothing_listening_at_the_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    line = one_line_error(cli("firmware", "list", "--endpoint", endpoint, *KEYS))
    assert "ConnectionFailed" in line and endpoint in line


def test_an_endpoint_that_is_not_the_api(web_page: str) -> None:
    line = one_line_error(cli("product", "show", "a1x", "--endpoint", web_page, *KEYS))
    assert "NotTheOtaApi" in line and web_page in line


def test_a_missing_file_to_upload(tmp_path: Path) -> None:
    missing = tmp_path / "fw-2.0.bin"
    endpoint = f"http://127.0.0.1:{closed_port()}"
    args = ["firmware", "upload", str(missing), "--product", "a1x", "--version", "2.0"]
    line = one_line_error(cli(*args, "--endpoint", endpoint, *KEYS))
    assert "No such file or directory" in line and str(missing) in line
