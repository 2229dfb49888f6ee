"""``otaflow plan``: predict how a push-rate setting rolls out, before creating a batch.

Runs :func:`otaflow.domain.rate.plan` -- the very meter the rate agent uses --
so the prediction cannot drift from what a live batch does. A variable rate is a
speed: each step is in force from the instant its threshold is reached, and the
plan gives that instant (for the console doc's example, 8,000 pushed at 39.84
minutes, all 20,000 at 41.04). Inputs are checked
with :func:`otaflow.domain.rate_rules.validate_rate`, the same rules the API
enforces, so a plan that succeeds here describes a setting the API accepts.

Examples::

    otaflow plan --max-rate 10000 --devices 20000
    otaflow plan --base-rate 50 --factor 2 --max-rate 10000 --threshold 1000 \\
        --on pushed --devices 20000 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

from rich.console import Console
from rich.table import Table

from otaflow import plan_windows
from otaflow.domain.rate import WINDOW_MS, Plan, RateCondition, RateConfig, plan
from otaflow.domain.rate_rules import RateRuleError, validate_rate

__all__ = ["add_parser", "build_config", "main", "plan_to_dict", "run"]

# Exit status for a setting the platform would refuse (argparse uses 2 for bad syntax too).
EXIT_INVALID = 2

_DESCRIPTION = (
    "Predict a rollout minute by minute for a push-rate setting. Give only --max-rate for a "
    "constant rate; add --base-rate, --factor and --threshold for a variable rate."
)


def _decimal(text: str) -> Decimal:
    # argparse only turns ValueError/TypeError/ArgumentTypeError into a usage error,
    # and decimal.InvalidOperation is none of them.
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not a decimal number: {text!r}") from exc
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-rate",
        type=int,
        required=True,
        help="devices/minute: the constant rate, or the cap of a variable rate",
    )
    parser.add_argument("--base-rate", type=int, help="variable rate: starting devices/minute")
    parser.add_argument(
        "--factor", type=_decimal, help="variable rate: multiplier per threshold (1.20-5.00)"
    )
    parser.add_argument(
        "--threshold", type=int, help="variable rate: counted devices between increases"
    )
    parser.add_argument(
        "--on",
        choices=[c.value for c in RateCondition],
        default=RateCondition.PUSHED.value,
        help="variable rate: count pushed or succeeded devices (default: pushed)",
    )
    parser.add_argument(
        "--success-ratio",
        type=_ratio,
        default=1.0,
        help="with --on succeeded: share of pushed devices assumed to succeed (default 1.0)",
    )
    parser.add_argument("--devices", type=_non_negative, required=True, help="devices in the batch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    plan_windows.add_arguments(parser)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``plan`` on the main CLI's subparsers; ``args.func`` is :func:`run`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "plan", help="predict a rollout for a push-rate setting", description=_DESCRIPTION
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def build_config(args: argparse.Namespace) -> RateConfig:
    """The :class:`RateConfig` the arguments describe (unvalidated).

    Raises ``ValueError`` when a variable rate is only partly given, since
    silently planning a constant rate instead would mislead.
    """
    variable = {
        "--base-rate": args.base_rate,
        "--factor": args.factor,
        "--threshold": args.threshold,
    }
    given = [name for name, value in variable.items() if value is not None]
    if not given:
        return RateConfig.constant(args.max_rate)
    missing = [name for name in variable if name not in given]
    if missing:
        raise ValueError(f"a variable rate also needs {', '.join(missing)}")
    return RateConfig.variable(
        base_rate=args.base_rate,
        factor=args.factor,
        max_rate=args.max_rate,
        threshold=args.threshold,
        condition=RateCondition(args.on),
    )


def _minutes(ms: int) -> float:
    """Batch time in minutes (exact for whole ms: 2,390,625 ms is 39.84375)."""
    return ms / WINDOW_MS


def plan_to_dict(result: Plan) -> dict[str, Any]:
    """The ``--json`` document: ``steps``, ``minutes``, ``total_minutes``, ``finished_at_minutes``.

    ``start_minute`` is the 0-based minute window a step starts in, ``start_at_minutes``
    the instant (minutes from the batch's start) its threshold is reached;
    ``finished_at_minutes`` the instant the last device is pushed (null: no device).
    """
    return {
        "steps": [
            {
                "rate": s.rate,
                "pushed_at_start": s.pushed_at_start,
                "start_minute": s.start_minute,
                "start_at_minutes": _minutes(s.start_ms),
            }
            for s in result.steps
        ],
        "minutes": [{"minute": m.minute, "pushed": m.pushed} for m in result.minutes],
        "total_minutes": result.total_minutes,
        "finished_at_minutes": (
            _minutes(result.finished_ms) if result.finished_ms is not None else None
        ),
    }


def _duration(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    parts.append(f"{mins}m")
    return " ".join(parts)


def _print_table(config: RateConfig, devices: int, result: Plan) -> None:
    console = Console(file=sys.stdout, soft_wrap=True)
    title = (
        f"Constant rate {config.rate:,}/min"
        if config.kind == "constant"
        else f"Variable rate {config.base_rate:,}/min x{config.factor} every "
        f"{config.threshold:,} {config.condition.value if config.condition else ''}, "
        f"max {config.max_rate:,}/min"
    )
    table = Table(title=title)
    table.add_column("Rate (devices/min)", justify="right")
    table.add_column("From pushed", justify="right")
    table.add_column("From minute", justify="right")
    table.add_column("Starts after", justify="right")
    table.add_column("At minute", justify="right")
    for step in result.steps:
        table.add_row(
            f"{step.rate:,}",
            f"{step.pushed_at_start:,}",
            str(step.start_minute),
            _duration(step.start_minute),
            f"{_minutes(step.start_ms):,.2f}",
        )
    console.print(table)
    last = (
        f"; the last at minute {_minutes(result.finished_ms):,.2f}"
        if result.finished_ms is not None
        else ""
    )
    console.print(
        f"Total: {result.total_minutes:,} minutes ({_duration(result.total_minutes)}) "
        f"to push {devices:,} devices{last}"
    )


def run(args: argparse.Namespace) -> int:
    """Execute ``otaflow plan``; returns the process exit status."""
    try:
        config = build_config(args)
        validate_rate(config)
    except RateRuleError as exc:
        print(f"otaflow plan: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:
        print(f"otaflow plan: {exc}", file=sys.stderr)
        return EXIT_INVALID
    ratio = args.success_ratio if config.condition is RateCondition.SUCCEEDED else 1.0
    result = plan(config, args.devices, success_ratio=ratio)
    try:
        finish = plan_windows.finish(args, result.total_minutes)
    except ValueError as exc:
        print(f"otaflow plan: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps({**plan_to_dict(result), **finish}))
    else:
        _print_table(config, args.devices, result)
        plan_windows.print_finish(finish)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m otaflow.cli.plan ...``."""
    parser = argparse.ArgumentParser(prog="otaflow plan", description=_DESCRIPTION)
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
