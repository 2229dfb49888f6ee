"""``make bench`` / ``otaflow bench SCENARIO``: run benchmark scenarios, print and save figures.

    python -m benchmarks.run all            full scale (1,000,000 devices; tens of minutes)
    python -m benchmarks.run smoke          thousands of devices, every scenario, about a minute
    python -m benchmarks.run ingest --devices 200000

Each scenario writes ``benchmarks/results/<scenario>.json`` and a PNG chart beside it.
Figures are printed, never asserted: a slow machine makes slow figures, not a failure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from benchmarks import scenarios
from benchmarks.results import RESULTS_DIR, ScenarioResult, print_summary, save

FULL = {
    "devices": 1_000_000,
    "rollout": 100_000,
    "rollout_step": 1000,
    "latency": 1000,
    "pass_through_runs": 3,
    "ingest_runs": 3,
    "egress_runs": 3,
}
SMOKE = {
    "devices": 2000,
    "rollout": 2000,
    "rollout_step": 100,
    "latency": 100,
    "pass_through_runs": 1,
    "ingest_runs": 1,
    "egress_runs": 1,
}
SCENARIOS = (
    "ingest",
    "fan-out",
    "state",
    "recovery",
    "failover",
    "rollout",
    "latency",
    "egress",
    "scale-out",
    "abort",
)
# Run only when named, not by `all` or `smoke`: `otaflow bench ingest-json --devices 100000`,
# and `otaflow bench presence`, which starts a broker of its own.
EXTRA_SCENARIOS = ("ingest-json", "presence")


class ScenariosFailed(RuntimeError):
    """Some scenarios failed; the others ran and their figures were printed and saved."""

    def __init__(self, failures: dict[str, str], results: list[ScenarioResult]) -> None:
        super().__init__("; ".join(f"{name}: {error}" for name, error in failures.items()))
        self.failures = failures
        self.results = results


def run(
    names: list[str], sizes: dict[str, int], out_dir: Path = RESULTS_DIR
) -> list[ScenarioResult]:
    """Run ``names``; a failing scenario does not stop the others (each cleans up its own
    deployment), the summary is printed either way, then :class:`ScenariosFailed` is raised
    if any failed."""
    console = Console()
    results: list[ScenarioResult] = []
    failures: dict[str, str] = {}

    def keep(result: ScenarioResult) -> None:
        json_path, png_path = save(result, out_dir)
        console.print(
            f"[green]✓[/] {result.scenario}: {json_path}" + (f", {png_path}" if png_path else "")
        )
        results.append(result)

    def attempt(name: str, scenario: Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            scenario()
        except Exception as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
            console.print(f"[red]✗[/] {name}: {failures[name]}", markup=False)
        # Wall time per scenario, set-up and clean-up included: what it costs CI's smoke run.
        console.print(f"  {name}: {time.monotonic() - started:.1f} s", markup=False)

    n = sizes["devices"]
    fleet_scenarios = {"ingest", "fan-out", "state", "recovery"} & set(names)
    if fleet_scenarios:
        attempt("ingest", lambda: fleet(names, n, sizes, keep, attempt))
    if "scale-out" in names:
        attempt("scale-out", lambda: scale_out(n, results, keep, attempt))
    if "failover" in names:
        attempt("failover", lambda: keep(scenarios.failover(min(n, 20_000))))
    if "rollout" in names:
        attempt("rollout", lambda: keep(scenarios.rollout(sizes["rollout"], sizes["rollout_step"])))
    if "abort" in names:
        from benchmarks.abort_bench import abort_rollout

        attempt("abort", lambda: keep(abort_rollout(min(sizes["rollout"], 20_000))))
    if "latency" in names:
        attempt("latency", lambda: keep(scenarios.latency(sizes["latency"])))
    if "egress" in names:
        attempt("egress", lambda: keep(egress_scenario(sizes)))
    if "ingest-json" in names:
        from benchmarks.telemetry_source import ingest_json

        attempt("ingest-json", lambda: keep(ingest_json(n)))
    print_summary(results, console)
    if failures:
        for name, error in failures.items():
            console.print(f"FAILED {name}: {error}", markup=False)
        raise ScenariosFailed(failures, results)
    return results


def fleet(
    names: list[str],
    n: int,
    sizes: dict[str, int],
    keep: Callable[[ScenarioResult], None],
    attempt: Callable[[str, Callable[[], None]], None],
) -> None:
    """Ingest, then the scenarios that need its fleet in place (state, recovery, fan-out)."""
    # The ingest figure is the median of several runs, each on a fresh deployment; the
    # last run's fleet stays for the scenarios that need 1,000,000 devices in place.
    runs: list[ScenarioResult] = []
    for _ in range(sizes["ingest_runs"] - 1):
        result, extra = scenarios.ingest(n, pass_through_runs=sizes["pass_through_runs"])
        extra.close()
        runs.append(result)
    last, d = scenarios.ingest(n, pass_through_runs=sizes["pass_through_runs"])
    ingest_result = scenarios.median_ingest([*runs, last])
    try:
        if "ingest" in names:
            keep(ingest_result)
        if "state" in names:
            attempt("state", lambda: keep(scenarios.state(n, d)))
        if "recovery" in names:
            attempt("recovery", lambda: keep(scenarios.recovery(n, d)))
        if "fan-out" in names:
            attempt("fan-out", lambda: keep(scenarios.fan_out(n, d)))
    finally:
        d.close()


def scale_out(
    n: int,
    results: list[ScenarioResult],
    keep: Callable[[ScenarioResult], None],
    attempt: Callable[[str, Callable[[], None]], None],
) -> None:
    two, d2 = scenarios.ingest(n, workers=2, pass_through_runs=0)
    try:
        one = next((r for r in results if r.scenario == "ingest"), None)
        if one is not None:
            single = one.figures[0].value
            two.add("speed-up over 1 worker", two.figures[0].value / single, "x")
        keep(two)
        # The same fleet, started over by two workers: each scans its own partitions.
        attempt("fan-out-2w", lambda: keep(scenarios.fan_out(n, d2, name="fan-out-2w")))
    finally:
        d2.close()


def egress_scenario(sizes: dict[str, int]) -> ScenarioResult:
    """Notifications per second through the egress connector to Mosquitto (egress_bench)."""
    from benchmarks import egress_bench
    from otaflow import config

    n = max(5000, sizes["rollout"])
    result = ScenarioResult("egress", {"notifications": n})
    runs = [egress_bench.run(n, config.load()) for _ in range(sizes["egress_runs"])]
    rates = [r["rate"] or r["received_rate"] or 0.0 for r in runs]
    rate = statistics.median(rates)
    result.add(
        "notifications/s, PUBACKed and committed (median)",
        rate,
        "msg/s",
        "≥ 20,000",
        rate >= 20_000,
    )
    result.add(
        "egress CPU per notification",
        statistics.median(r["egress_cpu_us_per_notification"] for r in runs),
        "us",
    )
    result.add("duplicates seen by the subscriber", max(r["duplicates"] for r in runs), "")
    result.notes.append(f"runs: {rates}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="otaflow bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", choices=("all", "smoke", *SCENARIOS, *EXTRA_SCENARIOS))
    parser.add_argument("--devices", type=int, help="fleet size for ingest/fan-out/state/recovery")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    sizes = dict(SMOKE if args.scenario == "smoke" else FULL)
    if args.devices:
        sizes["devices"] = args.devices
        sizes["rollout"] = min(sizes["rollout"], args.devices)
    names = list(SCENARIOS) if args.scenario in ("all", "smoke") else [args.scenario]
    out = args.out / "smoke" if args.scenario == "smoke" and args.out == RESULTS_DIR else args.out
    if args.scenario == "presence":
        from benchmarks.presence_bench import presence

        result = presence(args.devices or 10_000)
        json_path, _ = save(result, out)
        print_summary([result], Console())
        print(f"saved {json_path}")
        return 0
    try:
        run(names, sizes, out)
    except ScenariosFailed:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
