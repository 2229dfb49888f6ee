"""The worker's metrics, health and INFO logs: partitions it owns, what it applied.

Counting happens per envelope (``applied``), off the per-report path; the summary log
line every ``SUMMARY_S`` says what an operator asks first: is it working, how fast,
how far behind.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from otaflow import metrics, topics
from streams.app import app, settings

log = logging.getLogger("otaflow.worker")

SUMMARY_S = 30.0

_assigned: set[Any] = set()
_started = False
_last: dict[str, float] = {"at": time.monotonic(), "reports": 0.0, "envelopes": 0.0}


def applied(envelopes: int, reports: int) -> None:
    """Count one poll's worth of applied envelopes and reports."""
    metrics.ENVELOPES_APPLIED.inc(envelopes)
    if reports:
        metrics.REPORTS_APPLIED.inc(reports)


def _by_topic(partitions: Any) -> str:
    grouped: dict[str, list[int]] = {}
    for tp in partitions:
        grouped.setdefault(tp.topic, []).append(tp.partition)
    return "; ".join(f"{t} {sorted(p)}" for t, p in sorted(grouped.items())) or "none"


@app.on_partitions_assigned.connect
async def _on_assigned(*args: Any, **kwargs: Any) -> None:
    assigned = args[-1]  # (app, assigned): the app is the signal's default sender
    _assigned.clear()
    _assigned.update(assigned)
    mine = [tp for tp in assigned if not tp.topic.endswith("-changelog")]
    log.info("worker: assigned %s", _by_topic(mine))


@app.on_partitions_revoked.connect
async def _on_revoked(*args: Any, **kwargs: Any) -> None:
    revoked = args[-1]
    mine = [tp for tp in revoked if not tp.topic.endswith("-changelog")]
    if mine:
        log.info("worker: revoked %s", _by_topic(mine))


@app.task
async def _mark_started() -> None:
    global _started
    _started = True


@app.timer(SUMMARY_S)
async def _summary() -> None:
    now = time.monotonic()
    reports = metrics.REPORTS_APPLIED._value.get()
    envelopes = metrics.ENVELOPES_APPLIED._value.get()
    seconds = max(now - _last["at"], 1e-9)
    new_reports = reports - _last["reports"]
    if new_reports or envelopes - _last["envelopes"]:
        log.info(
            "worker: applied %d reports in %d envelopes in the last %.0f s (%.0f reports/s)",
            new_reports,
            envelopes - _last["envelopes"],
            seconds,
            new_reports / seconds,
        )
    _last.update(at=now, reports=reports, envelopes=envelopes)


def serve() -> int:
    """Start the worker's metrics endpoint (with consumer lag of its groups)."""
    from prometheus_client import REGISTRY

    def count(spec: topics.TopicSpec) -> tuple[str, int]:
        return spec.full_name(settings), spec.partition_count(settings)

    REGISTRY.register(
        metrics.GroupLagCollector(
            settings,
            {
                settings.app_id: [
                    count(topics.DEVICE_EVENTS),
                    count(topics.RATE_EVENTS),
                    count(topics.COMMANDS),
                ],
                f"{settings.app_id}-batcher": [count(topics.DEVICE_REPORTS)],
            },
        )
    )
    metrics.ready_when(lambda: _started and bool(_assigned))
    return metrics.serve(settings, "worker")
