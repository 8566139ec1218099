"""Issue 14: charts that show the data. Structure, not pixels: the axes span the data, money
is labelled with the store currency, the pool's own line has a range of its own, the price is
drawn at each change, labels follow the user's language (docs/reports.md)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from matplotlib import dates as mdates
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from engine import service
from engine.history import price_changes
from handlers import charts
from storage.db import Database
from tests.test_report import TZ, busy_shop, local

PNG = b"\x89PNG\r\n\x1a\n"


def new_shop(db: Database) -> datetime:
    """One day of trade: three purchases on day 0. Returns 18:00 that day."""
    t = local(0, 0)
    service.upsert_product(db, sku="TEA", price="100.00", margin="0.30", lock_days=15,
                           scheme="both", at=t)
    service.join(db, user="A", at=t)
    service.join(db, user="B", referrer="A", at=t)
    service.buy(db, user="A", sku="TEA", at=local(0, 9), order="a1")
    service.buy(db, user="B", sku="TEA", qty=3, at=local(0, 11), order="b1")
    service.buy(db, user="A", sku="TEA", at=local(0, 15), order="a2")
    return local(0, 18)


def _xspan(ax) -> tuple[datetime, datetime]:  # type: ignore[no-untyped-def]
    lo, hi = ax.get_xlim()
    return mdates.num2date(lo, tz=TZ), mdates.num2date(hi, tz=TZ)


def _texts(fig: Figure) -> str:
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_ylabel(), ax.get_xlabel()]
        if ax.get_legend() is not None:
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return "\n".join(out)


def _line_range(ax) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    return min(ys), max(ys)


def test_one_day_of_a_new_shop_gives_a_readable_day_not_years(memdb: Database):
    at = new_shop(memdb)
    fig = charts.pool_chart(memdb, at)
    top, bottom = fig.axes
    first, last = _xspan(bottom)
    # Before: an x axis from 2025 to 2029 and a y axis of −0.04…0.04.
    assert first == local(0, 0) and last == at
    assert top.get_ylim()[0] == 0 and top.get_ylim()[1] >= 480  # liability 480.00
    lo, hi = _line_range(bottom)
    assert (lo, hi) == (0.0, 6.00)  # the pool: 4 × 1.50 of contributions, its own scale
    assert bottom.get_ylim() == pytest.approx((0, 6.6))
    assert top.get_ylabel() == bottom.get_ylabel() == "CNY"
    assert "currency units" not in _texts(fig)


def test_the_price_is_drawn_at_each_change_so_the_first_day_jump_shows(memdb: Database):
    at = new_shop(memdb)
    changes = price_changes(memdb, at)
    # From the initial 1.00 at the start of the day, then after each purchase.
    assert changes[0] == (local(0, 0), 1_000_000)
    assert [w for w, _p in changes[1:]] == [local(0, 9), local(0, 11), local(0, 15), at]
    assert changes[1][1] > 1_000_000 and changes[-1][1] == changes[-2][1]
    fig = charts.price_chart(memdb, at)
    (ax,) = fig.axes
    assert _xspan(ax) == (local(0, 0), at)
    lo, hi = _line_range(ax)
    assert lo == 1.0 and hi == changes[-1][1] / 1e6 and ax.get_ylim()[0] == 0
    assert ax.get_lines()[0].get_drawstyle() == "steps-post"
    assert ax.get_ylabel() == "CNY per point"


def test_a_busy_shop_keeps_the_pool_visible_next_to_a_much_larger_liability(memdb: Database):
    at = busy_shop(memdb)
    top, bottom = charts.pool_chart(memdb, at).axes
    first, last = _xspan(bottom)
    assert first == local(0, 0) and last == at
    liability_top = top.get_ylim()[1]
    pool_lo, pool_hi = _line_range(bottom)
    assert pool_hi * 10 < liability_top  # on the shared scale the pool is a flat line…
    assert bottom.get_ylim()[1] == pytest.approx(pool_hi * 1.1)  # …so it has its own scale
    assert pool_lo == 0 and pool_hi > 0
    price = charts.price_chart(memdb, at).axes[0]
    assert len(price.get_lines()[0].get_xdata()) > 12  # more changes than days


@pytest.mark.filterwarnings("ignore:Glyph")  # the stand-in font has no Chinese glyphs
def test_labels_follow_the_language_and_fall_back_to_english_without_a_cjk_font(
        memdb: Database, monkeypatch: pytest.MonkeyPatch):
    at = new_shop(memdb)
    monkeypatch.setattr(charts, "cjk_font", lambda: None)
    fig = charts.pool_chart(memdb, at, lang="zh")
    assert "Queue pool vs liability" in _texts(fig)
    assert "no CJK font is installed" in _texts(fig)
    # With a font that can draw them (here any font: the test checks the words, not glyphs).
    monkeypatch.setattr(charts, "cjk_font", _any_font)
    fig = charts.pool_chart(memdb, at, lang="zh")
    text = _texts(fig)
    assert "排队资金池与负债" in text and "元 (CNY)" in text and "English" not in text
    price = charts.price_chart(memdb, at, lang="zh")
    assert price.axes[0].get_ylabel() == "元 (CNY)/积分"


def _any_font() -> str:
    from matplotlib import font_manager

    return str(font_manager.findfont(FontProperties(family="DejaVu Sans")))


def test_the_cjk_font_search_finds_only_fonts_with_chinese_glyphs():
    found = charts.cjk_font()
    if found is not None:  # a server with e.g. fonts-noto-cjk
        from matplotlib.ft2font import FT2Font

        assert all(ord(ch) in FT2Font(found).get_charmap() for ch in "元价格")


def test_charts_render_to_png_for_a_new_and_a_busy_shop(memdb: Database, tmp_path: Path):
    at = new_shop(memdb)
    for name, png in (("pool.png", charts.pool_chart_png(memdb, at, lang="zh")),
                      ("price.png", charts.price_chart_png(memdb, at + timedelta(days=3)))):
        assert png.startswith(PNG)
        (tmp_path / name).write_bytes(png)
