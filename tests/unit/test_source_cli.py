"""``otaflow source check|try``: a source file explained, and records shown as they map."""

from __future__ import annotations

from pathlib import Path

import pytest

from otaflow.cli.main import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "telemetry-source.toml"


def test_check_prints_the_example_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["source", "check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "topic fleet.telemetry (json)" in out
    assert "version      $.firmware.version" in out
    assert "only when    $.type in ['firmware']" in out


def test_check_refuses_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[source]]\ntopic = "t"\n')
    assert main(["source", "check", str(bad)]) == 2
    assert "'product_key' is required" in capsys.readouterr().err


def test_try_shows_a_report_a_skip_and_a_dead_letter(capsys: pytest.CaptureFixture[str]) -> None:
    firmware = (
        '{"type": "firmware", "device": {"product": "pk1", "name": "s0"}, '
        '"firmware": {"version": "1.2"}, "ts": 1800000000000}'
    )
    heartbeat = '{"type": "heartbeat", "device": {"product": "pk1", "name": "s0"}}'
    broken = '{"type": "firmware", "device": {"product": "pk1"}}'
    assert main(["source", "try", str(EXAMPLE), firmware, heartbeat, broken]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "fleet telemetry: report pk1/s0 module=default version=1.2 event_time=1800000000000",
        "fleet telemetry: skipped (only_when / skip_when)",
        "fleet telemetry: dead letter: no device name at $.device.name",
    ]
