"""Benchmark results: one JSON file and one PNG chart per scenario, and a terminal table."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None


@dataclass
class ScenarioResult:
    scenario: str
    parameters: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    # Named series for the chart: {"label": [(x, y), ...]}.
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    chart_axes: tuple[str, str] = ("seconds", "value")
    notes: list[str] = field(default_factory=list)

    def add(
        self, name: str, value: float, unit: str, target: str = "", met: bool | None = None
    ) -> None:
        self.figures.append(Figure(name, round(value, 3), unit, target, met))


def machine() -> dict[str, Any]:
    import os

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def save(result: ScenarioResult, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path | None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    data = asdict(result) | {"machine": machine(), "at": stamp}
    json_path = out_dir / f"{result.scenario}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    png_path = chart(result, out_dir / f"{result.scenario}.png") if result.series else None
    return json_path, png_path


def chart(result: ScenarioResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, points in result.series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=label, marker="." if len(points) < 60 else None)
    ax.set_xlabel(result.chart_axes[0])
    ax.set_ylabel(result.chart_axes[1])
    ax.set_title(f"otaflow benchmark: {result.scenario}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def print_summary(results: list[ScenarioResult], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="otaflow benchmarks")
    for column in ("scenario", "figure", "value", "target", "met"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for result in results:
        for fig in result.figures:
            met = "" if fig.met is None else ("yes" if fig.met else "NO")
            table.add_row(
                result.scenario, fig.name, f"{fig.value:,.2f} {fig.unit}", fig.target, met
            )
    console.print(table)
