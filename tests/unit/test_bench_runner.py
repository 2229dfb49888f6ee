"""The benchmark runner goes on past a failing scenario, prints its summary and says which
failed (a missing program once stopped ``otaflow bench smoke`` with no summary at all)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import run as bench_run
from benchmarks import scenarios
from benchmarks.results import ScenarioResult


def figures(name: str) -> ScenarioResult:
    result = ScenarioResult(name, {"devices": 1})
    result.add("something", 1.0, "x")
    return result


def test_a_failing_scenario_leaves_the_others_run_and_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(_sizes: dict[str, int]) -> ScenarioResult:
        raise RuntimeError("mosquitto_sub not found")

    monkeypatch.setattr(scenarios, "rollout", lambda n, step: figures("rollout"))
    monkeypatch.setattr(scenarios, "latency", lambda n: figures("latency"))
    monkeypatch.setattr(bench_run, "egress_scenario", broken)

    with pytest.raises(bench_run.ScenariosFailed) as failed:
        bench_run.run(["rollout", "egress", "latency"], dict(bench_run.SMOKE), tmp_path)

    assert failed.value.failures == {"egress": "RuntimeError: mosquitto_sub not found"}
    assert [r.scenario for r in failed.value.results] == ["rollout", "latency"]
    assert (tmp_path / "latency.json").exists()
    printed = capsys.readouterr().out
    assert "FAILED egress: RuntimeError: mosquitto_sub not found" in printed


def test_the_command_exits_non_zero_when_a_scenario_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_n: int) -> ScenarioResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(scenarios, "latency", broken)
    assert bench_run.main(["latency", "--out", str(tmp_path)]) == 1
