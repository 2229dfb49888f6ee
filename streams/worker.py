"""Run one otaflow worker: the Faust agents, with a report batcher beside them."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import signal
import subprocess
import sys

from otaflow import config, topics
from otaflow.packages import UnsafeSettings, require_private_signing_key
from streams import gc_tuning


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the batcher must not outlive a worker killed with SIGKILL.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)


def start_batcher() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "streams.batcher"], preexec_fn=_die_with_parent)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    atexit.register(stop)
    return proc


def main(with_batcher: bool = True) -> int:
    settings = config.load()
    try:  # before touching Kafka: a published URL key off loopback never runs
        require_private_signing_key(settings)
    except UnsafeSettings as exc:
        print(f"otaflow worker: refusing to start: {exc}", file=sys.stderr)
        return 2
    topics.ensure_topics(settings.kafka_bootstrap, settings)
    if with_batcher:
        start_batcher()
    from faust.worker import Worker

    import streams.command_agent
    import streams.device_agent
    import streams.rate_agent
    import streams.ticker  # noqa: F401  (registers agents and timers)
    from streams.app import app, declare_changelogs

    declare_changelogs()
    gc_tuning.apply()

    level = config_log_level()
    worker = Worker(app, loglevel=level, quiet=True)
    if not sys.stdout.isatty():
        # Faust's start-up spinner writes cursor escape codes even into a log file.
        worker.spinner = None
    worker.execute_from_commandline()
    return 0


def config_log_level() -> str:
    import os

    return os.environ.get("OTAFLOW_LOG_LEVEL", "warning")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
