"""``make bench-smoke`` in CI: every benchmark scenario completes and produces its figures.

Figures are never asserted against targets here (a slow machine makes slow figures,
not a failure); only that each scenario ran and wrote its JSON (and chart).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.run import SCENARIOS, SMOKE, run

pytestmark = pytest.mark.integration


def test_every_scenario_completes_and_writes_its_figures(tmp_path: Path) -> None:
    results = run(list(SCENARIOS), dict(SMOKE), tmp_path)
    names = {r.scenario for r in results}
    assert {"ingest", "fan-out", "state", "recovery", "rollout", "latency"} <= names
    assert {"ingest-2w", "fan-out-2w", "failover"} <= names
    for result in results:
        assert result.figures, f"{result.scenario} produced no figures"
        data = json.loads((tmp_path / f"{result.scenario}.json").read_text())
        assert data["figures"] and all(f["value"] >= 0 for f in data["figures"])
        if result.series:
            assert (tmp_path / f"{result.scenario}.png").stat().st_size > 1000
