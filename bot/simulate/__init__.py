"""`storefront simulate SCENARIO.yaml`: the real engine, simulated buyers, honest outcomes.

A scenario (examples/*.yaml, documented in docs/reports.md) describes the shop (config,
products) and its buyers (daily orders and their growth, returning vs new buyers, referral
share, points selling). The simulator drives `engine.service` on a fresh in-memory SQLite
database day by day: the day's purchases at random times, then the 00:05 release of the next
morning, then holders selling points. Randomness comes from one seeded generator, so a
scenario gives the same files every run. It writes `daily.csv`, four PNG charts and
`summary.txt` into the output folder.
"""

from __future__ import annotations

from pathlib import Path

from bot.simulate.outputs import CHARTS, CSV_COLUMNS, never_paid, summary, write_outputs
from bot.simulate.scenario import Scenario, ScenarioError
from bot.simulate.simulation import Simulation

__all__ = ["CHARTS", "CSV_COLUMNS", "Scenario", "ScenarioError", "Simulation", "never_paid",
           "simulate", "summary", "write_outputs"]


def simulate(path: str | Path, out: str | Path = ".", *, days: int | None = None,
             progress: bool = True) -> tuple[str, dict[str, Path]]:
    """Run a scenario file and write its outputs; returns (summary text, written paths)."""
    scenario = Scenario.load(path)
    if days is not None:
        if not 1 <= days <= 3650:
            raise ScenarioError("--days: a whole number 1-3650")
        scenario.days = days
    sim = Simulation(scenario)
    try:
        sim.run(progress=progress)
        paths = write_outputs(sim, Path(out))
        return paths["summary"].read_text(encoding="utf-8"), paths
    finally:
        sim.db.dispose()
