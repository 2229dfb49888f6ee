"""Drive a real device built on the official ``aliyun-iot-linkkit`` SDK from pytest.

``aliyun-iot-linkkit`` 1.2.13 only works with paho-mqtt 1.x while otaflow uses
paho-mqtt 2, so the SDK runs unchanged in its own virtualenv
(``~/.cache/otaflow/linkkit-venv``, override with ``OTAFLOW_LINKKIT_VENV``) as a
subprocess (``driver.py``) that this module talks to with JSON lines on stdin/stdout.

Example::

    with SdkDevice("pk1", "dev1", mqtt_port=port) as dev:
        dev.wait_connected(30)
        dev.report_version("1.0.0")
        msg = dev.wait_ota_message(10)
        result = dev.download_firmware(msg["url"], msg["sign_method"], msg["sign"],
                                       int(msg["size"]), tmp_path / "fw.bin")
        assert result.ok

All waits block on queues/conditions fed by a reader thread, with a timeout; a dead
driver process wakes every waiter at once.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

__all__ = [
    "DEFAULT_VENV_DIR",
    "DRIVER_PATH",
    "LINKKIT_REQUIREMENTS",
    "DownloadResult",
    "SdkDevice",
    "SdkDeviceError",
    "ensure_linkkit_venv",
]

LINKKIT_REQUIREMENTS: Final[tuple[str, ...]] = ("paho-mqtt<2", "aliyun-iot-linkkit==1.2.13")
DEFAULT_VENV_DIR: Final[Path] = Path.home() / ".cache" / "otaflow" / "linkkit-venv"
DRIVER_PATH: Final[Path] = Path(__file__).resolve().with_name("driver.py")
_MARKER_NAME: Final[str] = ".otaflow-linkkit-ready"
_CHECK_SCRIPT: Final[str] = (
    "import paho.mqtt, linkkit.linkkit; "
    "assert int(paho.mqtt.__version__.split('.')[0]) < 2, paho.mqtt.__version__"
)


class SdkDeviceError(RuntimeError):
    """The linkkit venv could not be set up, or the driver failed or died."""


@dataclass(frozen=True)
class DownloadResult:
    """Outcome of the SDK's ``download_ota_firmware``.

    ``ok`` is the SDK's own verdict (``code == "SUCCESS"``: HTTP 200 and the file's
    digest equals ``sign``).  ``code`` is the ``LinkKit.ErrorCode`` name it returned
    (``SUCCESS``, ``OTA_DIGEST_MISMATCH``, ``OTA_INVALID_URL``, ``OTA_INVALID_PATH``,
    ``OTA_DOWNLOAD_FAIL``, ``OTA_INVALID_PARAM``) or ``EXCEPTION`` when the SDK raised
    (it does for a sign method other than exactly ``SHA256``/``Md5``), with ``error``
    holding the exception.  ``bytes_written`` is the size of the file at ``path``
    afterwards (the SDK keeps the file even on a digest mismatch).  ``size_matches`` is
    the harness's own check against the ``size`` passed in (the SDK ignores size).
    """

    ok: bool
    code: str
    value: int | None
    bytes_written: int | None
    size_matches: bool | None
    error: str | None = None


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def ensure_linkkit_venv(venv_dir: Path | None = None, python: str | None = None) -> Path:
    """Create (once) the virtualenv that runs the SDK; return its interpreter.

    Idempotent and safe across concurrent pytest processes (a file lock guards the
    build).  A marker file recording the requirements is written only after the install
    and an import check succeeded; a venv without a matching marker is rebuilt.
    """
    if venv_dir is None:
        env = os.environ.get("OTAFLOW_LINKKIT_VENV")
        venv_dir = Path(env).expanduser() if env else DEFAULT_VENV_DIR
    venv_dir = venv_dir.expanduser()
    marker = venv_dir / _MARKER_NAME
    marker_text = "\n".join(LINKKIT_REQUIREMENTS) + "\n"
    interpreter = _venv_python(venv_dir)

    def ready() -> bool:
        try:
            return interpreter.exists() and marker.read_text() == marker_text
        except OSError:
            return False

    if ready():
        return interpreter
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv_dir.with_name(venv_dir.name + ".lock")
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready():
            return interpreter
        if venv_dir.exists():
            shutil.rmtree(venv_dir)
        base = python or shutil.which("python3") or sys.executable
        steps: list[list[str]] = [
            [base, "-m", "venv", str(venv_dir)],
            [
                str(interpreter),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                *LINKKIT_REQUIREMENTS,
            ],
            [str(interpreter), "-c", _CHECK_SCRIPT],
        ]
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SdkDeviceError(
                    f"setting up {venv_dir} failed: {' '.join(cmd)} exited "
                    f"{proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
                )
        marker.write_text(marker_text)
    return interpreter


_EOF: Final = object()


class SdkDevice:
    """A device run by the unchanged ``aliyun-iot-linkkit`` 1.2.13 SDK in a subprocess.

    The SDK connects with plain MQTT (username ``dn&pk``, HMAC-SHA1 password), so the
    broker must accept it (anonymous or an auth plugin).  After the CONNACK the driver
    subscribes to ``/ota/device/upgrade/{pk}/{dn}`` and
    ``/sys/{pk}/{dn}/thing/ota/firmware/get_reply`` at QoS 1, and only reports
    "connected" once the SUBACK arrived, so pushes sent after :meth:`wait_connected`
    returns are delivered.
    """

    def __init__(
        self,
        product_key: str,
        device_name: str,
        device_secret: str = "secret",
        mqtt_host: str = "127.0.0.1",
        mqtt_port: int = 1883,
        *,
        venv_dir: Path | None = None,
        log_level: str | None = "INFO",
        start_timeout: float = 30.0,
    ) -> None:
        self.product_key = product_key
        self.device_name = device_name
        self.mqtt_host = mqtt_host
        self.mqtt_port = mqtt_port
        self.driver_info: dict[str, Any] = {}
        self.errors: list[dict[str, Any]] = []
        self.connect_failures: list[dict[str, Any]] = []
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._ota: queue.Queue[object] = queue.Queue()
        self._pending: dict[int, queue.Queue[object]] = {}
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._started = False
        self._connected: dict[str, Any] | None = None
        self._connect_count = 0
        self._exited = False
        self._closed = False

        python = ensure_linkkit_venv(venv_dir)
        env = dict(os.environ)
        env["OTAFLOW_SDK_DEVICE_SECRET"] = device_secret
        env["PYTHONUNBUFFERED"] = "1"
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(var, None)
        cmd = [
            str(python),
            str(DRIVER_PATH),
            "--product-key",
            product_key,
            "--device-name",
            device_name,
            "--host",
            mqtt_host,
            "--port",
            str(mqtt_port),
        ]
        if log_level:
            cmd += ["--log-level", log_level]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
            env=env,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._reader = threading.Thread(
            target=self._read_events,
            args=(self._proc.stdout,),
            daemon=True,
            name=f"sdkdevice-events-{device_name}",
        )
        self._err_reader = threading.Thread(
            target=self._read_stderr,
            args=(self._proc.stderr,),
            daemon=True,
            name=f"sdkdevice-stderr-{device_name}",
        )
        self._reader.start()
        self._err_reader.start()
        try:
            self._wait_for(lambda: self._started, start_timeout, "driver start")
        except BaseException:
            self.close()
            raise

    # context manager ----------------------------------------------------------------

    def __enter__(self) -> SdkDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # topics -------------------------------------------------------------------------

    @property
    def inform_topic(self) -> str:
        return f"/ota/device/inform/{self.product_key}/{self.device_name}"

    @property
    def upgrade_topic(self) -> str:
        return f"/ota/device/upgrade/{self.product_key}/{self.device_name}"

    @property
    def progress_topic(self) -> str:
        return f"/ota/device/progress/{self.product_key}/{self.device_name}"

    @property
    def firmware_get_topic(self) -> str:
        return f"/sys/{self.product_key}/{self.device_name}/thing/ota/firmware/get"

    @property
    def firmware_get_reply_topic(self) -> str:
        return f"/sys/{self.product_key}/{self.device_name}/thing/ota/firmware/get_reply"

    # public API ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected is not None

    @property
    def connect_count(self) -> int:
        """How many times the device connected and subscribed (reconnects included)."""
        with self._cond:
            return self._connect_count

    def stderr_tail(self, lines: int = 40) -> str:
        """The last lines the driver wrote to stderr (SDK and paho logs)."""
        return "\n".join(list(self._stderr_tail)[-lines:])

    def wait_connected(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the SDK is connected and subscribed to the OTA topics.

        Returns immediately when it already is.  The returned dict holds
        ``session_present``, ``rc``, ``granted_qos`` and ``count``.
        """
        self._wait_for(lambda: self._connected is not None, timeout, "MQTT connect")
        with self._cond:
            assert self._connected is not None
            return dict(self._connected)

    def wait_disconnected(self, timeout: float = 30.0) -> None:
        self._wait_for(
            lambda: self._connected is None, timeout, "MQTT disconnect", fail_on_exit=False
        )

    def report_version(
        self, version: str, module: str | None = "default", timeout: float = 10.0
    ) -> None:
        """Publish the version with the SDK's ``ota_report_version`` (QoS 0).

        Topic ``/ota/device/inform/{pk}/{dn}``, payload exactly
        ``{"id": 1,"params": {"version":"<v>","module": "<m>"}}`` (``id`` an unquoted
        number, always 1); ``module=None`` gives ``{"id": 1, "params": {"version": "<v>"}}``.
        The SDK's return code is ignored: it reports ``OTA_PUB_FAILED`` even on success.
        """
        self._request("report_version", timeout, version=version, module=module)

    def report_progress(
        self, step: int, desc: str = "", module: str | None = "default", timeout: float = 10.0
    ) -> str:
        """Publish progress on ``/ota/device/progress/{pk}/{dn}`` (QoS 0).

        The SDK has no helper, so this goes through its ``publish_topic`` with
        ``{"id": "<n>", "params": {"step": "<step>", "desc": desc, "module": module}}``
        (``module`` left out when None).  Returns the payload sent.
        """
        reply = self._request("report_progress", timeout, step=int(step), desc=desc, module=module)
        return str(reply["payload"])

    def request_firmware(self, module: str | None = "default", timeout: float = 10.0) -> None:
        """Ask for pending firmware with the SDK's ``query_ota_firmware`` (QoS 0).

        Topic ``/sys/{pk}/{dn}/thing/ota/firmware/get``, payload exactly
        ``{"id": <n>, "params": {"module": "<m>"}}`` (``id`` an unquoted number from the
        SDK's request counter; ``{"id": <n>, "params": {}}`` when module is None); no
        ``version`` or ``method`` members.  Its return code lies like report_version's.
        """
        self._request("request_firmware", timeout, module=module)

    def wait_ota_message(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next ``on_ota_message_arrived`` call, as a dict.

        Keys: ``type`` (1 push on upgrade topic, 2 reply on get_reply), ``version``,
        ``size`` (as in the JSON, so usually an int), ``url``, ``sign_method``, ``sign``,
        ``module`` (``"default"`` when absent), ``ext`` (``str()`` of ``extData``: a
        Python repr such as ``"{'k': 'v'}"``, not JSON; ``""`` when absent).
        Raises TimeoutError when none arrives in time.
        """
        try:
            item = self._ota.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no OTA message within {timeout}s\n{self._diagnostics()}") from None
        if item is _EOF:
            self._ota.put(_EOF)
            raise SdkDeviceError(f"driver exited\n{self._diagnostics()}")
        assert isinstance(item, dict)
        return item

    def download_firmware(
        self,
        url: str,
        sign_method: str,
        sign: str,
        size: int | None,
        path: str | os.PathLike[str],
        timeout: float = 120.0,
    ) -> DownloadResult:
        """Download with the SDK's ``download_ota_firmware(url, local_path, sign_method, sign)``.

        The SDK streams the URL (plain ``http://`` works; ``https://`` only trusts the
        platform's built-in CA) into ``path`` and compares the lowercase hex digest
        (``SHA256`` or ``Md5``, exact spelling) with ``sign``, case-sensitively.
        """
        reply = self._request(
            "download",
            timeout,
            url=url,
            sign_method=sign_method,
            sign=sign,
            path=str(Path(path).resolve()),
            size=size,
        )
        code = str(reply.get("result"))
        written = reply.get("bytes")
        return DownloadResult(
            ok=code == "SUCCESS",
            code=code,
            value=reply.get("code"),
            bytes_written=written,
            size_matches=None if size is None or written is None else written == size,
            error=reply.get("error"),
        )

    def close(self, timeout: float = 10.0) -> None:
        """Destruct the SDK client and stop the driver; idempotent."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        with contextlib.suppress(OSError, ValueError):
            self._write({"cmd": "close", "id": 0})
        if proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reader.join(timeout=5)
        self._err_reader.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()

    # internals ----------------------------------------------------------------------

    def _diagnostics(self) -> str:
        rc = self._proc.poll()
        return (
            f"driver pid {self._proc.pid} returncode {rc}; errors {self.errors}; "
            f"failed connect attempts {len(self.connect_failures)}\n"
            f"--- driver stderr (tail) ---\n{self.stderr_tail()}"
        )

    def _wait_for(
        self, predicate: Callable[[], bool], timeout: float, what: str, fail_on_exit: bool = True
    ) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                if self._exited and fail_on_exit:
                    raise SdkDeviceError(
                        f"driver exited while waiting for {what}\n{self._diagnostics()}"
                    )
                if self._exited:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"timed out after {timeout}s waiting for {what}\n{self._diagnostics()}"
                    )
                self._cond.wait(remaining)

    def _write(self, msg: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        if stdin is None:
            raise SdkDeviceError("driver stdin is closed")
        with self._write_lock:
            stdin.write(json.dumps(msg) + "\n")
            stdin.flush()

    def _request(self, cmd: str, timeout: float, **fields: Any) -> dict[str, Any]:
        if self._closed:
            raise SdkDeviceError("SdkDevice is closed")
        request_id = next(self._ids)
        box: queue.Queue[object] = queue.Queue(maxsize=1)
        with self._pending_lock:
            if self._exited:
                raise SdkDeviceError(f"driver exited\n{self._diagnostics()}")
            self._pending[request_id] = box
        try:
            try:
                self._write({"cmd": cmd, "id": request_id, **fields})
            except (OSError, ValueError) as e:
                raise SdkDeviceError(f"cannot write to driver: {e!r}\n{self._diagnostics()}") from e
            try:
                reply = box.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(
                    f"{cmd} got no reply within {timeout}s\n{self._diagnostics()}"
                ) from None
        finally:
            with self._pending_lock:
                self._pending.pop(request_id, None)
        if reply is _EOF:
            raise SdkDeviceError(f"driver exited during {cmd}\n{self._diagnostics()}")
        assert isinstance(reply, dict)
        if cmd != "download" and reply.get("error"):
            raise SdkDeviceError(f"{cmd} failed in the driver: {reply['error']}")
        return reply

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        request_id = event.get("id")
        if isinstance(request_id, int) and request_id > 0:
            with self._pending_lock:
                box = self._pending.get(request_id)
            if box is not None:
                box.put(event)
                return
        if kind == "ota":
            self._ota.put({k: v for k, v in event.items() if k != "event"})
        elif kind == "connected":
            with self._cond:
                self._connected = {k: v for k, v in event.items() if k != "event"}
                self._connect_count += 1
                self._cond.notify_all()
        elif kind == "disconnected":
            with self._cond:
                self._connected = None
                self._cond.notify_all()
        elif kind == "started":
            with self._cond:
                self.driver_info = {k: v for k, v in event.items() if k != "event"}
                self._started = True
                self._cond.notify_all()
        elif kind == "connect_failed":
            self.connect_failures.append(event)
        elif kind == "error":
            self.errors.append(event)

    def _read_events(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    self._stderr_tail.append(f"[stdout] {line}")
                    continue
                if isinstance(event, dict):
                    self._handle(event)
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._exited = True
                self._connected = None
                self._cond.notify_all()
            with self._pending_lock:
                boxes = list(self._pending.values())
            for box in boxes:
                with contextlib.suppress(queue.Full):
                    box.put_nowait(_EOF)
            self._ota.put(_EOF)

    def _read_stderr(self, stream: IO[str]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self._stderr_tail.append(line.rstrip("\n"))
