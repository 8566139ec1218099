"""Issue 14: charts that show the data. Structure, not pixels: the axes span the data, money
is labelled with the store currency, the pool's own line has a range of its own, the price is
drawn at each change, labels follow the user's language (docs/reports.md)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from matplotlib import dates as mdates
from matplotlib.figure import Figure
from matplotlib.text import Text

from engine import service
from engine.history import price_changes
from engine.replay import Replayer
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


def test_chinese_labels_are_drawn_in_the_bundled_font(memdb: Database):
    at = new_shop(memdb)
    fig = charts.pool_chart(memdb, at, lang="zh")
    text = _texts(fig)
    assert "排队资金池与负债" in text and "元 (CNY)" in text and "English" not in text
    fonts = {t.get_fontproperties().get_file() for t in fig.findobj(Text) if t.get_text()}
    assert str(charts.BUNDLED_CJK) in fonts
    price = charts.price_chart(memdb, at, lang="zh")
    assert price.axes[0].get_ylabel() == "元 (CNY)/积分"


def test_without_the_bundled_font_labels_fall_back_to_english_and_say_why(
        memdb: Database, monkeypatch: pytest.MonkeyPatch):
    at = new_shop(memdb)
    monkeypatch.setattr(charts, "cjk_font", lambda: None)
    text = _texts(charts.pool_chart(memdb, at, lang="zh"))
    assert "Queue pool vs liability" in text and "NotoSansSC-subset.otf is missing" in text


def test_the_bundled_font_has_every_character_a_chinese_chart_label_uses():
    from matplotlib.ft2font import FT2Font

    charmap = FT2Font(str(charts.BUNDLED_CJK)).get_charmap()
    zh = json.loads((Path(charts.__file__).parent / "locales" / "zh.json").read_text("utf-8"))
    labels = [v for k, v in zh.items() if k.startswith("chart.")]
    labels.append(charts.money_label("CNY", "zh") + "0123456789-:./年月日")  # + dates
    missing = sorted({ch for label in labels for ch in label if ord(ch) not in charmap})
    assert labels[:-1] and not missing, f"rebuild the subset (handlers/fonts/README.md): {missing}"


def test_charts_render_to_png_for_a_new_and_a_busy_shop(memdb: Database, tmp_path: Path):
    at = new_shop(memdb)
    for name, png in (("pool.png", charts.pool_chart_png(memdb, at, lang="zh")),
                      ("price.png", charts.price_chart_png(memdb, at + timedelta(days=3)))):
        assert png.startswith(PNG)
        (tmp_path / name).write_bytes(png)


def test_the_price_line_for_an_earlier_day_undoes_what_came_after_it(memdb: Database):
    # seed-points-cycle: three purchases on 1-3 Aug, then withdrawals and a fourth purchase.
    lines = (Path(__file__).parent / "vectors" / "seed-points-cycle.jsonl").read_text("utf-8")
    Replayer(memdb).run(lines.splitlines())
    early = price_changes(memdb, datetime.fromisoformat("2026-08-02T12:00:00+08:00"), 3)
    assert [p for _w, p in early] == [1_000_000, 1_428_571, 1_680_672, 1_680_672]
    full = [p for _w, p in price_changes(memdb, datetime.fromisoformat("2026-08-05T00:00:00+08:00"), 5)]
    assert full == sorted(full) and full[0] == 1_000_000  # SPEC §4: the price never falls
