"""PNG charts for operators (`/pool`, `storefront report --charts`, the simulator).

matplotlib's object API on the Agg canvas: rendered off-screen, no pyplot global state (fonts
are passed to each text, never set in rcParams), no display, safe to call from a worker thread.

What the charts promise (docs/reports.md, "History and charts"):
- the time axis is fitted to the data: one day of a new shop is one readable day, not years;
- money is labelled with the store currency, values start at 0 and the range is never
  degenerate (a flat zero line still has a visible axis);
- the queue pool gets a panel of its own scale under "pool vs liability", because next to a
  liability hundreds of times larger its line would lie on the axis;
- the points price is drawn at every change (a step line), not sampled once a day, so a new
  shop's first-day jump from the initial price shows;
- labels are in the user's language. Chinese is drawn in the bundled subset of Noto Sans CJK
  SC (handlers/fonts/), so no font has to be installed on the server and nothing is ever
  downloaded at runtime.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot; never opens a window

from matplotlib import dates as mdates  # noqa: E402
from matplotlib import font_manager, ticker  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from engine.database import Database  # noqa: E402
from engine.history import config, price_changes  # noqa: E402
from engine.report import HISTORY_DAYS, history  # noqa: E402

from . import i18n  # noqa: E402

Series = tuple[str, Sequence[Any], Sequence[float | None]]  # label, x values, y values

# Noto Sans CJK SC cut down to the catalogue's characters (handlers/fonts/README.md): Chinese
# charts need no font installed on the server.
BUNDLED_CJK = Path(__file__).parent / "fonts" / "NotoSansSC-subset.otf"


@cache
def cjk_font() -> str | None:
    """The font Chinese labels are drawn in: the bundled subset (None only if a packager
    dropped it, and then the labels fall back to English with a footnote)."""
    return str(BUNDLED_CJK) if BUNDLED_CJK.is_file() else None


@cache
def _register(path: str) -> None:
    font_manager.fontManager.addfont(path)


@dataclass(frozen=True)
class Style:
    """The language a chart is labelled in, the font for it, and a footnote if the asked-for
    language could not be honoured."""

    lang: str
    font: font_manager.FontProperties | None
    note: str

    @staticmethod
    def for_lang(lang: str) -> Style:
        if lang == "zh":
            path = cjk_font()
            if path is not None:
                _register(path)  # tick labels name their font by family
                return Style("zh", font_manager.FontProperties(fname=path), "")
            return Style("en", None, "Labels in English: the Chinese font "
                                     "handlers/fonts/NotoSansSC-subset.otf is missing.")
        return Style("en", None, "")

    def t(self, key: str, **params: Any) -> str:
        return i18n.t(self.lang, key, **params)

    def text(self) -> dict[str, Any]:
        return {"fontproperties": self.font} if self.font is not None else {}


def money_label(currency: str, lang: str) -> str:
    """The store currency as an axis label: `CNY`, or `元 (CNY)` in Chinese."""
    return f"元 ({currency})" if lang == "zh" and currency == "CNY" else currency


def _floats(ys: Sequence[float | None]) -> list[float]:
    return [float("nan") if y is None else float(y) for y in ys]


def fit_y(ax: Axes, values: Sequence[float | None]) -> None:
    """From 0 to a little above the largest value; never a degenerate range."""
    seen = [v for v in values if v is not None]
    top = max(seen, default=0.0)
    ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)


# ConciseDateFormatter's formats in Chinese: 2026年 · 12月 · 6日 · 14:00
_ZH_DATES = {
    "formats": ["%Y年", "%-m月", "%-d日", "%H:%M", "%H:%M", "%S.%f"],
    "zero_formats": ["", "%Y年", "%-m月", "%-m月%-d日", "%H:%M", "%H:%M"],
    "offset_formats": ["", "%Y年", "%Y年%-m月", "%Y年%-m月%-d日", "%Y年%-m月%-d日",
                       "%Y年%-m月%-d日 %H:%M"],
}


def fit_x(ax: Axes, xs: Sequence[Any], tz: Any = None, style: Style | None = None) -> None:
    """The time axis spans the data (at least a day around a single instant), with dates
    that read at any span, in the chart's language."""
    if not xs:
        return
    first, last = xs[0], xs[-1]
    if isinstance(first, datetime):
        if last - first < timedelta(hours=1):  # a single instant: the day around it
            first, last = last - timedelta(hours=12), last + timedelta(hours=12)
        locator = mdates.AutoDateLocator(tz=tz, minticks=3, maxticks=8)
        ax.xaxis.set_major_locator(locator)
        zh = style is not None and style.lang == "zh" and style.font is not None
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(
            locator, tz=tz, **(_ZH_DATES if zh else {})))
        if zh and style is not None and style.font is not None:
            ax.xaxis.set_tick_params(labelfontfamily=style.font.get_name())
            ax.xaxis.get_offset_text().set_fontproperties(style.font)
        ax.set_xlim(first, last)  # type: ignore[arg-type]
    elif isinstance(first, date):
        if first == last:
            first, last = first - timedelta(days=1), last + timedelta(days=1)
        ax.set_xlim(first, last)  # type: ignore[arg-type]


def _footnote(fig: Figure, note: str) -> None:
    if note:
        fig.text(0.01, 0.005, note, fontsize="x-small", color="0.4")
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _figure(height: float = 4.2) -> Figure:
    fig = Figure(figsize=(8, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def line_chart_png(title: str, series: Sequence[Series], *, ylabel: str = "",
                   xlabel: str = "", percent: bool = False, fill_between: bool = False,
                   note: str = "", alone: int | None = None) -> bytes:
    """One PNG with a line per series (the simulator's charts). With `fill_between`, the gap
    between the first two series is shaded (the shortfall of pool vs liability). With
    `alone`, that series is drawn again below on its own scale (a pool next to a liability
    hundreds of times larger would otherwise lie on the axis)."""
    fig = _figure(5.6 if alone is not None else 4.2)
    if alone is not None:
        ax, low = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        label, xs_alone, ys_alone = series[alone]
        low.plot(list(xs_alone), _floats(ys_alone), linewidth=1.6, color=f"C{alone}")
        low.set_title(f"{label} (own scale)", fontsize="small")
        low.set_ylabel(ylabel)
        low.grid(True, alpha=0.3)
        fit_y(low, list(ys_alone))
    else:
        ax = fig.add_subplot()
    for label, xs, ys in series:
        ax.plot(list(xs), _floats(ys), label=label, linewidth=1.6,
                marker="o" if len(xs) < 3 else None)
    if fill_between and len(series) >= 2 and len(series[0][1]):
        xs = list(series[0][1])
        a, b = _floats(series[0][2]), _floats(series[1][2])
        ax.fill_between(xs, a, b, where=[x < y for x, y in zip(a, b, strict=True)],
                        color="tab:red", alpha=0.12, interpolate=True, label="shortfall")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    if percent:
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
    if series:
        fit_x(ax, list(series[0][1]))
        fit_y(ax, [y for _label, _xs, ys in series for y in ys])
    ax.grid(True, alpha=0.3)
    if any(label for label, _x, _y in series):
        ax.legend(loc="best", fontsize="small")
    if note:
        fig.text(0.01, 0.01, note, fontsize="x-small", color="0.4")
    if series and series[0][1] and isinstance(list(series[0][1])[0], date):
        fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)


def _money(fen: int) -> float:
    # Display only: a chart axis needs floats; every figure it shows is exact in the report.
    return fen / 100


def pool_chart(db: Database, at: datetime | None = None, days: int = HISTORY_DAYS, *,
               lang: str = "en") -> Figure:
    """Queue pool vs liability (what waiting entries are still owed) at the end of each day,
    the gap shaded; below, the pool alone on its own scale."""
    at = at or _now()
    cfg = db.read(config)
    rows = history(db, at, days)
    xs: list[datetime] = [r["at"] for r in rows]
    pool = [_money(r["queue_balance"]) for r in rows]
    owed = [_money(r["liability"]) for r in rows]
    if len(rows) < max(1, days):
        # Leading days with nothing were trimmed: the day before the first was all zeros,
        # so the lines start from 0 at that day's end (one day of data is still a line).
        xs.insert(0, datetime.combine(rows[0]["day"], time(0), tzinfo=cfg.timezone))
        pool.insert(0, 0.0)
        owed.insert(0, 0.0)
    style = Style.for_lang(lang)
    kw = style.text()
    unit = money_label(cfg.currency, style.lang)
    fig = _figure(5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    top.plot(xs, owed, label=style.t("chart.liability"), color="tab:red", linewidth=1.8)
    top.plot(xs, pool, label=style.t("chart.pool_balance"), color="tab:blue", linewidth=1.8)
    top.fill_between(xs, pool, owed, where=[p < o for p, o in zip(pool, owed, strict=True)],
                     color="tab:red", alpha=0.12, interpolate=True,
                     label=style.t("chart.shortfall"))
    top.set_title(style.t("chart.pool_title"), **kw)
    top.set_ylabel(unit, **kw)
    fit_y(top, owed + pool)
    top.legend(loc="upper left", fontsize="small", prop=style.font)
    bottom.plot(xs, pool, color="tab:blue", linewidth=1.8, marker="o" if len(xs) < 8 else None)
    bottom.set_title(style.t("chart.pool_panel"), fontsize="small", **kw)
    bottom.set_ylabel(unit, **kw)
    bottom.set_xlabel(style.t("chart.date_axis", tz=str(cfg.timezone)), **kw)
    fit_y(bottom, pool)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fit_x(bottom, xs, cfg.timezone, style)
    _footnote(fig, style.note)
    return fig


def price_chart(db: Database, at: datetime | None = None, days: int = HISTORY_DAYS, *,
                lang: str = "en") -> Figure:
    """The points price (pool ÷ supply) after every change, as steps."""
    at = at or _now()
    cfg = db.read(config)
    points = price_changes(db, at, days)
    xs = [when for when, _p in points]
    ys = [micro / 1_000_000 for _w, micro in points]
    style = Style.for_lang(lang)
    kw = style.text()
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(xs, ys, drawstyle="steps-post", color="tab:green", linewidth=1.8,
            label=style.t("chart.price"), marker="o" if len(xs) < 8 else None)
    ax.set_title(style.t("chart.price_title"), **kw)
    ax.set_ylabel(style.t("chart.price_axis", currency=money_label(cfg.currency, style.lang)),
                  **kw)
    ax.set_xlabel(style.t("chart.date_axis", tz=str(cfg.timezone)), **kw)
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2f"))
    fit_y(ax, ys)
    fit_x(ax, xs, cfg.timezone, style)
    ax.grid(True, alpha=0.3)
    _footnote(fig, style.note)
    return fig


def pool_chart_png(db: Database, at: datetime | None = None, days: int = HISTORY_DAYS, *,
                   lang: str = "en") -> bytes:
    return _png(pool_chart(db, at, days, lang=lang))


def price_chart_png(db: Database, at: datetime | None = None, days: int = HISTORY_DAYS, *,
                    lang: str = "en") -> bytes:
    return _png(price_chart(db, at, days, lang=lang))


def _now() -> datetime:
    from engine.service import now

    return now()


__all__ = ["cjk_font", "line_chart_png", "money_label", "pool_chart", "pool_chart_png",
           "price_chart", "price_chart_png"]
