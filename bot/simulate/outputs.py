"""What a simulation writes: `daily.csv`, four PNG charts and `summary.txt`."""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import date
from pathlib import Path

from bot.simulate.simulation import Simulation
from engine.money import format_fen, format_micro
from engine.sim_reads import never_paid

CSV_COLUMNS = (
    "day", "date", "orders", "sales", "new_buyers", "queue_balance", "liability", "coverage",
    "matured_unpaid", "inflow", "paid_by_release", "paid_by_acceleration", "entries",
    "entries_paid", "share_paid", "amount_share_paid", "median_wait_days",
    "median_paid_wait_days", "points_balance", "supply", "price", "points_sold", "forced_exits",
)
CHARTS = ("pool_vs_liability.png", "share_paid.png", "median_wait.png", "points_price.png")


def write_outputs(sim: Simulation, out: Path) -> dict[str, Path]:
    from handlers.charts import line_chart_png

    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "daily.csv", "summary": out / "summary.txt"}
    with paths["csv"].open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        w.writerows(sim.rows)
    xs = [date.fromisoformat(r["date"]) for r in sim.rows]

    def col(name: str, scale: Callable[[str], float | None] = float) -> list[float | None]:
        return [scale(r[name]) if r[name] != "" else None for r in sim.rows]

    title = sim.sc.name
    currency = str((sim.sc.config.get("store") or {}).get("currency", "CNY"))
    charts = {
        "pool_vs_liability.png": line_chart_png(
            f"{title}: queue pool vs liability",
            [("pool balance", xs, col("queue_balance")), ("liability", xs, col("liability"))],
            ylabel=currency, fill_between=True, alone=0),
        "share_paid.png": line_chart_png(
            f"{title}: share of entries fully paid",
            [("entries", xs, col("share_paid")), ("amount", xs, col("amount_share_paid"))],
            percent=True),
        "median_wait.png": line_chart_png(
            f"{title}: median wait (days)",
            [("all entries (waiting ones: age so far)", xs, col("median_wait_days")),
             ("paid entries only", xs, col("median_paid_wait_days"))], ylabel="days"),
        "points_price.png": line_chart_png(
            f"{title}: points price", [("price", xs, col("price"))],
            ylabel=f"{currency} per point"),
    }
    for name, png in charts.items():
        paths[name] = out / name
        paths[name].write_bytes(png)
    paths["summary"].write_text(summary(sim), encoding="utf-8")
    return paths


def summary(sim: Simulation) -> str:
    rows = sim.rows
    last = rows[-1]
    r = last["_report"]
    e = sim.entries
    n, paid_n = len(e.created), sum(1 for d in e.done if d >= 0)
    total_sales = sum(int(x["sales"].replace(".", "")) for x in rows)
    orders = sum(x["orders"] for x in rows)
    payable, left, owed = never_paid(sim.db)
    cov = r["coverage"]
    lines = [
        f"Scenario: {sim.sc.name} (seed {sim.sc.seed}, {len(rows)} days from "
        f"{sim.sc.start.isoformat()}; orders/day {rows[0]['orders']} -> {last['orders']})",
        f"Sales: {orders} orders, {format_fen(total_sales)} in cash; {len(sim.users)} buyers, "
        f"{sim.referred} of them referred",
        f"Queue: {n} entries worth {format_fen(sum(e.amount))}; fully paid {paid_n} "
        f"({_pct(paid_n, n)}), {format_fen(sum(e.paid))} of the amount "
        f"({_pct(sum(e.paid), sum(e.amount))})",
        f"Paid by acceleration to referrers {format_fen(e.accelerated)} "
        f"({_pct(e.accelerated, sum(e.paid))}), by release in queue order "
        f"{format_fen(e.released)} ({_pct(e.released, sum(e.paid))})",
        f"End: queue pool {format_fen(r['queue_balance'])}, still owed "
        f"{format_fen(r['liability'])} to {r['waiting_entries']} waiting entries, coverage "
        f"{'n/a' if cov is None else f'{float(cov) * 100:.1f}%'}; matured but unpaid "
        f"{format_fen(r['matured_unpaid'])}",
        f"Median wait: all entries {last['median_wait_days'] or 'n/a'} days (waiting ones "
        f"counted by age so far, a lower bound); paid entries "
        f"{last['median_paid_wait_days'] or 'n/a'} days",
        f"If sales stopped now: the pool pays {payable} more entries in queue order; "
        f"{left} entries ({format_fen(owed)}) would never be paid.",
        f"Points: price {format_micro(sim.first_price or 0)} -> {last['price']}, supply "
        f"{last['supply']}, forced exits {last['forced_exits']}",
    ]
    return "\n".join(lines) + "\n"


def _pct(part: int, whole: int) -> str:
    return f"{part * 100 / whole:.1f}%" if whole else "n/a"
