"""The report batcher stops within seconds of SIGTERM, whatever its topics do.

A worker killed with SIGKILL takes its batcher down by PR_SET_PDEATHSIG (SIGTERM); a
batcher was then seen alive minutes after its deployment's topics were deleted. Its stop
path waited on librdkafka: a flush of envelopes to a deleted topic (30 s, then 10 s
more), and a consumer close that can wait forever when it races a topic deletion
(librdkafka#4362; not reproduced here, the process deadline covers it).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable

import pytest

from otaflow import topics
from tests.integration.conftest import Otaflow, TopicReader, free_port

pytestmark = pytest.mark.integration

# streams.batcher.STOP_DEADLINE_S (8) plus room for a busy machine; the old stop path
# took 35-40 s with its envelope topic deleted.
EXIT_WITHIN_S = 20.0
REPORTS = 200


def _poll_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _exit_took(proc: subprocess.Popen[bytes], seconds: float) -> float | None:
    """Seconds the process took to exit, or None when still running after ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if proc.poll() is not None:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def _send_reports(otaflow: Otaflow, count: int) -> None:
    for n in range(count):
        otaflow.report("pkStop", f"d{n}", "VERSION", 1_000, version="1.0")
    otaflow.flush()


def _running_batcher(otaflow: Otaflow) -> tuple[subprocess.Popen[bytes], str]:
    """A batcher as a worker starts it (a static group member), seen forwarding reports;
    and its metrics URL."""
    metrics_port = free_port()
    otaflow.env["OTAFLOW_BATCHER_STATE_DIR"] = str(otaflow.tmp / "data" / "batcher")
    otaflow.env["OTAFLOW_METRICS_PORT"] = str(metrics_port)
    otaflow.start("batcher", "-m", "streams.batcher")
    _send_reports(otaflow, 8)
    envelopes = TopicReader(otaflow.settings, topics.DEVICE_EVENTS)
    try:
        envelopes.wait_for(lambda v: sum(len(e["items"]) for e in v) >= 8, what="envelopes")
    finally:
        envelopes.close()
    return otaflow.procs["batcher"], f"http://127.0.0.1:{metrics_port}/metrics"


def _counter(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{name}_total\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in the batcher's metrics"
    return float(found.group(1))


def _assert_exits_soon(otaflow: Otaflow, batcher: subprocess.Popen[bytes]) -> None:
    try:
        took = _exit_took(batcher, EXIT_WITHIN_S)
        assert took is not None, (
            f"batcher still running {EXIT_WITHIN_S:.0f} s after SIGTERM:\n{otaflow.log('batcher')}"
        )
    finally:
        otaflow.procs.pop("batcher")
        if batcher.poll() is None:
            batcher.kill()
            batcher.wait(10)


def test_batcher_stops_soon_while_its_envelopes_cannot_be_acknowledged(otaflow: Otaflow) -> None:
    batcher, metrics_url = _running_batcher(otaflow)
    # The envelope topic goes; the report topic stays, so the batcher keeps forwarding
    # into a topic that no longer exists: its flush cannot finish.
    envelope_topic = topics.DEVICE_EVENTS.full_name(otaflow.settings)
    topics.delete_topics(otaflow.settings.kafka_bootstrap, [envelope_topic])
    forwarded = _counter(metrics_url, "otaflow_batcher_forwarded")
    received = _counter(metrics_url, "otaflow_batcher_received")
    _send_reports(otaflow, REPORTS)
    # Its first poll of them is in an envelope it now waits on (the rest stay unpolled).
    _poll_until(
        "the batcher to take reports",
        lambda: _counter(metrics_url, "otaflow_batcher_received") > received,
        timeout=30,
    )
    assert _counter(metrics_url, "otaflow_batcher_forwarded") == forwarded
    batcher.send_signal(signal.SIGTERM)
    _assert_exits_soon(otaflow, batcher)


@pytest.mark.parametrize("order", ["delete-then-stop", "stop-while-deleting"])
def test_batcher_stops_soon_when_its_topics_are_deleted(otaflow: Otaflow, order: str) -> None:
    batcher, _ = _running_batcher(otaflow)
    if order == "delete-then-stop":
        topics.delete_deployment_topics(otaflow.settings.kafka_bootstrap, otaflow.settings)
        batcher.send_signal(signal.SIGTERM)
    else:  # as after a worker's SIGKILL: the parent-death signal, then the clean-up
        batcher.send_signal(signal.SIGTERM)
        topics.delete_deployment_topics(otaflow.settings.kafka_bootstrap, otaflow.settings)
    _assert_exits_soon(otaflow, batcher)
