"""``otaflow plan --window ... [--start ...]``: when the last device is pushed when the
batch pushes only inside maintenance windows (``domain.rate_windows``)."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

from otaflow.domain.maintenance import WindowError, parse_windows
from otaflow.domain.rate_windows import last_push_at


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window",
        action="append",
        help="maintenance window 'DAYS HH:MM MINUTES ZONE' (repeatable), "
        "e.g. 'Mon-Fri 02:00 120 Europe/Berlin'",
    )
    parser.add_argument(
        "--start", help="when the batch starts, ISO 8601 with an offset (default: now)"
    )


def finish(args: argparse.Namespace, total_minutes: int) -> dict[str, Any]:
    """``{"start", "last_push_at"}`` (epoch ms) with windows; {} without."""
    if not args.window:
        return {}
    try:
        windows = parse_windows(args.window)
    except WindowError as exc:
        raise ValueError(str(exc)) from None
    if args.start:
        try:
            parsed = dt.datetime.fromisoformat(args.start)
        except ValueError:
            raise ValueError(f"--start {args.start!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise ValueError("--start needs an offset or Z, e.g. 2026-10-22T12:00:00+00:00")
        start = int(parsed.timestamp() * 1000)
    else:
        start = int(time.time() * 1000)
    return {"start": start, "last_push_at": last_push_at(windows, start, total_minutes)}


def print_finish(result: dict[str, Any]) -> None:
    if not result:
        return
    at = dt.datetime.fromtimestamp(result["last_push_at"] / 1000, dt.UTC)
    print(f"Inside the maintenance windows, the last device is pushed by {at.isoformat()}")
