"""The ingest figure of several runs is the median of each figure, every run noted."""

from __future__ import annotations

from benchmarks.results import ScenarioResult
from benchmarks.scenarios import median_ingest


def ingest_run(rate: float, raw: float) -> ScenarioResult:
    result = ScenarioResult("ingest", {"devices": 10})
    result.add("reports/s end to end", rate, "reports/s", "≥ 50,000", rate >= 50_000)
    result.add("raw confluent pass-through (median)", raw, "records/s")
    result.add("ratio to pass-through", rate / raw, "", "≥ 0.5", rate / raw >= 0.5)
    return result


def test_median_of_three_runs_with_targets_rechecked() -> None:
    runs = [ingest_run(40_000, 200_000), ingest_run(52_000, 100_000), ingest_run(51_000, 80_000)]
    result = median_ingest(runs)
    figures = {f.name.split(",")[0]: f for f in result.figures}
    assert figures["reports/s end to end"].value == 51_000
    assert figures["reports/s end to end"].met is True
    assert figures["raw confluent pass-through (median)"].value == 100_000
    assert figures["raw confluent pass-through (median)"].met is None
    assert figures["ratio to pass-through"].value == 0.52  # the median of 0.2, 0.52, 0.6375
    assert result.parameters["runs"] == 3
    assert len(result.notes) == 3


def test_one_run_is_itself() -> None:
    run = ingest_run(40_000, 200_000)
    assert median_ingest([run]) is run
