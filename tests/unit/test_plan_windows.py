"""``otaflow plan --window``: the last push in wall time when only window time counts."""

from __future__ import annotations

import json

import pytest

from otaflow.cli.plan import main


def test_plan_with_a_window_across_dst_says_when_the_last_device_is_pushed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 30,000 at 100/min: 300 window minutes. From Thursday noon: Friday 00:00-02:00 UTC
    # (summer time), Monday 01:00-03:00 UTC (winter time), then one hour on Tuesday.
    args = ["--max-rate", "100", "--devices", "30000", "--json", "--start"]
    code = main([*args, "2026-10-22T12:00:00Z", "--window", "Mon-Fri 02:00 120 Europe/Berlin"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total_minutes"] == 300
    assert doc["last_push_at"] == 1793066400000  # 2026-10-27T02:00:00Z


def test_plan_without_windows_keeps_its_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max-rate", "100", "--devices", "300", "--json"]) == 0
    # The rate plan's own keys, nothing of the windows (finished_at_minutes: when the last
    # device is pushed, the rate as a speed).
    keys = set(json.loads(capsys.readouterr().out))
    assert keys == {"steps", "minutes", "total_minutes", "finished_at_minutes"}


def test_a_bad_window_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max-rate", "100", "--devices", "1", "--window", "Mon 02:00 60 Mars/X"]) == 2
    assert "unknown time zone" in capsys.readouterr().err
