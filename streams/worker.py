"""Run one otaflow worker: the Faust agents, with a report batcher beside them."""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
from pathlib import Path

from otaflow import bounded_stop, config, instances, logs, native, topics
from otaflow.instances import BATCHER_STATE_ENV
from otaflow.packages import UnsafeSettings, require_private_signing_key
from streams import gc_tuning


def start_batcher(state_dir: Path | None = None) -> subprocess.Popen[bytes]:
    # The batcher keeps its consumer-group member id in its worker's state directory, so
    # a restarted worker's batcher is the same static member (otaflow.membership).
    env = dict(os.environ)
    if state_dir is not None:
        env[BATCHER_STATE_ENV] = str(state_dir)
    # It dies with its worker, even one killed with SIGKILL (PR_SET_PDEATHSIG).
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.batcher"], env=env, preexec_fn=bounded_stop.die_with_parent
    )

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
    level = logs.setup("worker")
    settings = config.load()
    try:  # before touching Kafka: a published URL key off loopback never runs
        require_private_signing_key(settings)
    except UnsafeSettings as exc:
        print(f"otaflow worker: refusing to start: {exc}", file=sys.stderr)
        return 2
    topics.ensure_topics(settings.kafka_bootstrap, settings)
    if with_batcher:
        start_batcher(instances.worker_state_dir(settings))
    from faust.worker import Worker

    import streams.command_agent
    import streams.device_agent
    import streams.rate_agent
    import streams.stream_positions
    import streams.ticker  # (registers agents and timers)
    from streams import faust_private, observe, transactions
    from streams.app import app, declare_changelogs

    if transactions.processing_guarantee() == transactions.EXACTLY_ONCE:
        # Aborted rounds (a killed worker's) must not be read back, in changelogs or
        # envelopes: streams.checkpoint.
        faust_private.install_read_committed()
        # The round producer now, not at the first round: its init fences the killed
        # worker's producer and aborts the round it left open, which otherwise holds
        # back every read-committed reader (table recovery first) until it times out.
        streams.device_agent.checkpoint()

    declare_changelogs()
    gc_tuning.apply()
    # Compiled or from source: a worker several times slower per report says why here.
    logging.getLogger("otaflow.worker").info("%s", native.summary())

    observe.serve()
    # otaflow.logs configured logging (level, format, quiet libraries): Faust keeps it.
    worker = Worker(app, loglevel=level, quiet=True, override_logging=False)
    worker.spinner = None  # its terminal escape codes (cursor on/off) end up in log files
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
