"""``otaflow plan``: JSON document, readable table, validation and wiring."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from otaflow.cli import plan

DOC_ARGS = [
    "--base-rate", "50", "--factor", "2", "--max-rate", "10000",
    "--threshold", "1000", "--on", "pushed", "--devices", "20000",
]  # fmt: skip
BASE_OVER_MAX_ARGS = [
    "--base-rate", "200", "--factor", "2", "--max-rate", "100",
    "--threshold", "1", "--devices", "5",
]  # fmt: skip


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert plan.main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object on one line
    return json.loads(out)


def test_json_doc_example(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, DOC_ARGS)
    assert set(doc) == {"steps", "minutes", "total_minutes", "finished_at_minutes"}
    assert [(s["rate"], s["pushed_at_start"]) for s in doc["steps"]] == [
        (50, 0), (100, 1_000), (200, 2_000), (400, 3_000), (800, 4_000),
        (1_600, 5_000), (3_200, 6_000), (6_400, 7_000), (10_000, 8_000),
    ]  # fmt: skip
    assert doc["steps"][0] == {
        "rate": 50, "pushed_at_start": 0, "start_minute": 0, "start_at_minutes": 0.0
    }  # fmt: skip
    assert doc["steps"][1]["start_minute"] == 20
    # Issue 12: a speed, not a burst: 1,600, 3,200 and 6,400 last 37.5 s, 18.75 s, 9.375 s;
    # 8,000 are pushed at 39.84 minutes and 20,000 at 41.04.
    starts = [s["start_at_minutes"] for s in doc["steps"]]
    assert starts[5:] == [38.75, 39.375, 39.6875, 39.84375]
    assert round(doc["finished_at_minutes"], 2) == 41.04
    assert doc["total_minutes"] == 42 == len(doc["minutes"])
    assert doc["minutes"][0] == {"minute": 0, "pushed": 50}
    assert doc["minutes"][37] == {"minute": 37, "pushed": 4_400}  # the old plan: 10,000 more
    assert doc["minutes"][-1] == {"minute": 41, "pushed": 20_000}


def test_json_constant_rate_from_max_rate_only(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, ["--max-rate", "10000", "--devices", "20000"])
    assert doc == {
        "steps": [
            {"rate": 10_000, "pushed_at_start": 0, "start_minute": 0, "start_at_minutes": 0.0}
        ],
        "minutes": [{"minute": 0, "pushed": 10_000}, {"minute": 1, "pushed": 20_000}],
        "total_minutes": 2,
        "finished_at_minutes": 2.0,
    }


def test_succeeded_with_ratio_is_slower_than_pushed(capsys: pytest.CaptureFixture[str]) -> None:
    base = [a if a != "pushed" else "succeeded" for a in DOC_ARGS]
    full = run_json(capsys, base)
    half = run_json(capsys, [*base, "--success-ratio", "0.5"])
    pushed = run_json(capsys, DOC_ARGS)
    assert pushed["total_minutes"] < full["total_minutes"] < half["total_minutes"]
    # a success-counted step starts the minute after the successes were recorded
    assert full["steps"][1] == {
        "rate": 100, "pushed_at_start": 1_000, "start_minute": 20, "start_at_minutes": 20.0
    }  # fmt: skip


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan.main(DOC_ARGS) == 0
    out = capsys.readouterr().out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    assert "Total: 42 minutes" in out
    assert "20,000 devices; the last at minute 41.04" in out
    rows = [line for line in out.splitlines() if "10,000" in line and "8,000" in line]
    assert len(rows) == 1 and "39.84" in rows[0]
    assert "Rate (devices/min)" in out


def test_table_constant(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan.main(["--max-rate", "10", "--devices", "1500"]) == 0
    out = capsys.readouterr().out
    assert "Constant rate 10/min" in out
    assert "Total: 150 minutes (2h 30m)" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--max-rate", "9", "--devices", "5"], "iot.ota.InvalidConstantRate"),
        ([*DOC_ARGS[:3], "1.234", *DOC_ARGS[4:]], "iot.ota.InvalidIncrementalFactor"),
        (BASE_OVER_MAX_ARGS, "iot.ota.BaseRateExceedsMaxRate"),
        (["--base-rate", "5", "--max-rate", "100", "--devices", "5"], "--factor, --threshold"),
    ],
)
def test_invalid_settings_exit_2_with_code(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert plan.main(argv) == plan.EXIT_INVALID == 2
    captured = capsys.readouterr()
    assert needle in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-rate", "10", "--devices", "5", "--success-ratio", "1.5"],
        ["--max-rate", "10", "--devices", "-1"],
        [*DOC_ARGS[:3], "two", *DOC_ARGS[4:]],
        ["--max-rate", "10", "--devices", "5", "--on", "failed"],
    ],
)
def test_malformed_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        plan.main(argv)
    assert exc.value.code == 2


def test_add_parser_wires_run_into_a_main_cli(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="otaflow")
    sub = parser.add_subparsers(dest="command", required=True)
    plan_parser = plan.add_parser(sub)
    assert plan_parser.prog.endswith("plan")
    args = parser.parse_args(["plan", "--max-rate", "600", "--devices", "1200", "--json"])
    assert args.func is plan.run
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["total_minutes"] == 2


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "otaflow.cli.plan", "--max-rate", "600", "--devices", "601",
         "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total_minutes"] == 2
