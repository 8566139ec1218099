"""The what-if simulator (issue 6): runs the real engine, writes its files, repeats itself
exactly for a seed, and its daily figures are what its database holds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.cli import main
from bot.simulate import CHARTS, CSV_COLUMNS, Scenario, ScenarioError, Simulation, simulate
from engine.money import format_fen
from storage.models import Entry, Order, Pool

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def test_simulate_writes_csv_charts_and_summary(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "flat"
    assert main(["simulate", str(EXAMPLES / "flat.yaml"), "--out", str(out), "--days", "4"]) == 0
    printed = capsys.readouterr()
    with (out / "daily.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["day"] for r in rows] == ["1", "2", "3", "4"]
    assert tuple(rows[0]) == CSV_COLUMNS
    assert int(rows[-1]["entries"]) > 0 and rows[-1]["price"] != ""
    for name in CHARTS:
        assert (out / name).read_bytes().startswith(PNG), name
    summary = (out / "summary.txt").read_text(encoding="utf-8")
    assert summary == printed.out
    assert "Scenario: flat sales" in summary and "would never be paid" in summary
    assert "flat sales" in printed.err  # the tqdm progress bar, on stderr


def test_simulate_defaults_to_the_current_folder(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", str(EXAMPLES / "shrinking.yaml"), "--days", "2", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["daily.csv", "summary.txt", *CHARTS])


def test_the_same_seed_gives_the_same_days(tmp_path: Path):
    first, _ = simulate(EXAMPLES / "growing.yaml", tmp_path / "a", days=5, progress=False)
    second, _ = simulate(EXAMPLES / "growing.yaml", tmp_path / "b", days=5, progress=False)
    assert first == second
    csv_a, csv_b = (tmp_path / d / "daily.csv" for d in "ab")
    assert csv_a.read_bytes() == csv_b.read_bytes()


def test_daily_figures_are_what_the_database_holds():
    scenario = Scenario.load(EXAMPLES / "flat.yaml")
    scenario.days = 25  # long enough for 15-day locks to mature and releases to pay
    sim = Simulation(scenario)
    try:
        sim.run(progress=False)
        entries = sim.db.read(lambda s: s.execute(select(Entry)).scalars().all())
        balance = sim.db.read(lambda s: s.get(Pool, "queue").balance)
        last = sim.rows[-1]
        owed = sum(e.amount - e.released for e in entries if e.status == "waiting")
        assert last["liability"] == format_fen(owed)
        assert last["queue_balance"] == format_fen(balance)
        assert last["entries"] == len(entries)
        paid = sum(1 for e in entries if e.status == "released")
        assert last["entries_paid"] == paid > 0
        assert last["share_paid"] == f"{paid / len(entries):.4f}"
        orders = sim.db.read(lambda s: s.execute(select(Order.cash)).scalars().all())
        assert sum(r["orders"] for r in sim.rows) == len(orders)
        assert sum(int(r["sales"].replace(".", "")) for r in sim.rows) == sum(orders)
        assert last["amount_share_paid"] == (
            f"{sum(e.released for e in entries) / sum(e.amount for e in entries):.4f}")
    finally:
        sim.db.dispose()


def test_the_examples_cover_growing_flat_and_shrinking_sales():
    growth = {name: Scenario.load(EXAMPLES / f"{name}.yaml").daily_growth
              for name in ("growing", "flat", "shrinking")}
    assert growth["growing"] > 0 == growth["flat"] > growth["shrinking"]


@pytest.mark.parametrize("text, message", [
    ("products: []\n", "products"),
    ("days: 0\nproducts: [{sku: A, price: '1.00'}]\n", "days"),
    ("sales: {referral_share: 2}\nproducts: [{sku: A, price: '1.00'}]\n", "referral_share"),
    ("config: {queue: {pool_share: '1.5'}}\nproducts: [{sku: A, price: '1.00'}]\n",
     "refused the scenario's setup"),
    ("products: [{sku: A, price: 'free'}]\n", "refused the scenario's setup"),
    ("[unclosed\n", "not valid YAML"),
    ("sales: [1, 2]\nproducts: [{sku: A, price: '1.00'}]\n", "mappings"),
    ("config: {store: {paused: '1'}}\nproducts: [{sku: A, price: '100.00'}]\n",
     "day 1: the engine refused an event: sales_paused"),
    # seed money for the points pool before anyone holds points (SPEC §4)
    ("deposits: {points: '500.00'}\nproducts: [{sku: A, price: '100.00'}]\n",
     "refused the scenario's setup: no_points_holders"),
])
def test_a_bad_scenario_gets_a_clear_message(tmp_path: Path, text: str, message: str,
                                             capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError, match=message):
        simulate(path, tmp_path / "out", progress=False)
    assert main(["simulate", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("storefront simulate: ") and "Traceback" not in err
