"""CLI of safe rollouts: ``--abort-rule``/``--window`` on ``batch create|edit``,
``batch resume`` and ``otaflow explain pk/dn`` (through the API, like every ops command)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otaflow.cli.ops import OpsClient, Out

RULE_HELP = (
    "KIND:PERCENT:MIN_FINISHED[:PAUSE|CANCEL[:BATCH|SRC_VERSION|MODULE|REGION|GROUP]], "
    "e.g. ALL:30:50:PAUSE:SRC_VERSION (repeatable)"
)
WINDOW_HELP = "maintenance window 'DAYS HH:MM MINUTES ZONE', e.g. 'Mon-Fri 02:00 120 Europe/Berlin'"


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--abort-rule", action="append", help=RULE_HELP)
    parser.add_argument("--window", action="append", help=WINDOW_HELP)


def rule_params(rules: Sequence[str] | None, windows: Sequence[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    names = ("FailureKind", "ThresholdPercent", "MinFinished", "Action", "CohortBy")
    for n, text in enumerate(rules or [], start=1):
        parts = text.split(":")
        if not 3 <= len(parts) <= 5:
            raise SystemExit(f"--abort-rule {text!r}: expected {RULE_HELP.split(',')[0]}")
        for name, value in zip(names, parts, strict=False):
            params[f"AbortRule.{n}.{name}"] = value
    for n, window in enumerate(windows or [], start=1):
        params[f"MaintenanceWindow.{n}"] = window
    return params


def batch_resume(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    params = {"JobId": a.job_id}
    if a.cohort:
        params["Cohort"] = a.cohort
    body = c.call("ResumeOTAJob", params)
    out(f"resumed {', '.join(body['Data']['ResumedCohorts'])} of {a.job_id}")
    return body


def explain(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    from otaflow.cli.ops import Column, _table

    product_key, _, device_name = a.device.partition("/")
    if not device_name:
        raise SystemExit("explain: give the device as PRODUCT_KEY/DEVICE_NAME")
    body = c.call("ExplainOTADevice", {"ProductKey": product_key, "DeviceName": device_name})
    rows = [
        dict(item, Evidence=" > ".join(e["status"] for e in item.get("Evidence") or []))
        for item in body["Data"]["Explanations"]
    ]
    cols = [
        Column("JobId", "JobId", "id"),
        Column("Reason", "Reason"),
        Column("Detail", "Detail"),
        Column("Other job", "OtherJobId", "id"),
        Column("Expected push", "ExpectedPushTime"),
        Column("Evidence", "Evidence", "note"),
    ]
    out(_table(f"why {a.device}", rows, cols))
    return body


def add_parsers(subparsers: Any, batch: Any, command: Any) -> None:
    """``batch resume`` under the ``batch`` group and ``explain`` at the top level."""
    p = command(batch, "resume", batch_resume, "resume pushes an abort rule paused")
    p.add_argument("job_id")
    p.add_argument("--cohort", help="DIMENSION=value, e.g. SRC_VERSION=1.2 (default: all)")
    p = command(subparsers, "explain", explain, "why a device was or was not updated")
    p.add_argument("device", help="PRODUCT_KEY/DEVICE_NAME")
