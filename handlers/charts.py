"""PNG charts for operators (`/pool`, `storefront report --charts`, the simulator).

matplotlib's object API on the Agg canvas: rendered off-screen, no pyplot global state, no
display, safe to call from a worker thread. Labels are English because a CJK font may not be
installed (matplotlib would draw boxes); numbers are plain decimals.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot; never opens a window

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from engine.report import HISTORY_DAYS, history  # noqa: E402
from storage.db import Database  # noqa: E402

Series = tuple[str, Sequence[Any], Sequence[float | None]]  # label, x values, y values


def line_chart_png(title: str, series: Sequence[Series], *, ylabel: str = "",
                   xlabel: str = "", percent: bool = False, fill_between: bool = False,
                   note: str = "") -> bytes:
    """One PNG with a line per series. With `fill_between`, the gap between the first two
    series is shaded (the shortfall of pool vs liability)."""
    fig = Figure(figsize=(8, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, xs, ys in series:
        ax.plot(list(xs), [float("nan") if y is None else y for y in ys], label=label,
                linewidth=1.6)
    if fill_between and len(series) >= 2 and len(series[0][1]):
        xs = list(series[0][1])
        a = [float("nan") if y is None else y for y in series[0][2]]
        b = [float("nan") if y is None else y for y in series[1][2]]
        ax.fill_between(xs, a, b, where=[x < y for x, y in zip(a, b, strict=True)],
                        color="tab:red", alpha=0.12, interpolate=True, label="shortfall")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    if percent:
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.grid(True, alpha=0.3)
    if any(label for label, _x, _y in series):
        ax.legend(loc="best", fontsize="small")
    if note:
        fig.text(0.01, 0.01, note, fontsize="x-small", color="0.4")
    if series and series[0][1] and isinstance(list(series[0][1])[0], date):
        fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _money(fen: int) -> float:
    # Display only: a chart axis needs floats; every figure it shows is exact in the report.
    return fen / 100


def pool_chart_png(db: Database, at: datetime | None = None,
                   days: int = HISTORY_DAYS) -> bytes:
    """Queue pool balance vs liability (the sum still owed to waiting entries), daily."""
    rows = history(db, at or _now(), days)
    xs = [r["day"] for r in rows]  # store-local dates: each value is at that day's end
    return line_chart_png(
        f"Queue pool vs liability (last {len(rows)} days)",
        [("pool balance", xs, [_money(r["queue_balance"]) for r in rows]),
         ("liability", xs, [_money(r["liability"]) for r in rows])],
        ylabel="currency units", fill_between=True,
        note="liability = sum still owed to waiting entries; shaded = not covered")


def price_chart_png(db: Database, at: datetime | None = None,
                    days: int = HISTORY_DAYS) -> bytes:
    """The points price (pool ÷ supply) at the end of each day."""
    rows = [r for r in history(db, at or _now(), days) if r["price_micro"] is not None]
    xs = [r["day"] for r in rows]
    return line_chart_png(
        f"Points price (last {len(rows)} days)",
        [("price", xs, [r["price_micro"] / 1_000_000 for r in rows])],
        ylabel="currency units per point")


def _now() -> datetime:
    from engine.service import now

    return now()


__all__ = ["line_chart_png", "pool_chart_png", "price_chart_png"]
