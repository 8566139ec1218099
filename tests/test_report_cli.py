"""`storefront report` and the PNG charts (issue 6)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import matplotlib
import pytest

from bot.cli import main
from bot.cli_reports import format_report
from engine import report
from handlers.charts import pool_chart_png, price_chart_png
from storage.db import Database
from tests.conftest import MakeDb
from tests.test_report import busy_shop, local

PNG = b"\x89PNG\r\n\x1a\n"


def test_charts_render_off_screen_to_png(memdb: Database, make_db: MakeDb):
    at = busy_shop(memdb)
    assert matplotlib.get_backend().lower() == "agg"
    for png in (pool_chart_png(memdb, at), price_chart_png(memdb, at, days=5)):
        assert png.startswith(PNG) and len(png) > 10_000
    # An empty shop still gets a chart, not an error.
    empty = make_db("memory")
    assert pool_chart_png(empty, local(0)).startswith(PNG)
    assert price_chart_png(empty, local(0)).startswith(PNG)


def test_report_command_prints_the_figures_and_writes_charts(
        sqlite_db: Database, tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]):
    at = busy_shop(sqlite_db)
    expected = report.pool_report(sqlite_db, at)
    assert main(["report", "--db", sqlite_url, "--at", at.isoformat(), "--charts",
                 str(tmp_path / "charts")]) == 0
    out = capsys.readouterr().out
    assert out == format_report(expected)
    assert "liability 待返总额" in out and "coverage 覆盖率" in out
    cov = expected["coverage"]
    assert f"{cov.numerator * 10000 // cov.denominator // 100}." in out
    for name in ("pool.png", "price.png"):
        assert (tmp_path / "charts" / name).read_bytes().startswith(PNG)
    assert main(["report", "--db", sqlite_url, "--at", at.isoformat(), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["liability"] == expected["liability"]
    assert Fraction(figures["coverage"]) == expected["coverage"]
    assert main(["report", "--db", sqlite_url, "--at", "yesterday"]) == 2
    assert "ISO 8601" in capsys.readouterr().err


def test_report_text_says_n_a_without_liability(memdb: Database):
    text = format_report(report.pool_report(memdb, local(0)))
    assert "coverage 覆盖率               n/a" in text


def test_report_shows_pool_money_no_points_stand_for(
        sqlite_db: Database, sqlite_url: str, capsys: pytest.CaptureFixture[str]):
    """Issue 13: with the supply at zero, money left in the points pool (here the fee the last
    holder left behind) belongs to nobody yet, and the report says so."""
    from engine import service
    from tests.helpers import at, seed_shop

    seed_shop(sqlite_db, users=("A",), products=[("tea", "100.00", "0.50", 0, "points")])
    service.buy(sqlite_db, user="A", sku="tea", at=at(1))
    assert "no points stand for" not in format_report(report.pool_report(sqlite_db, at(2)))
    service.withdraw_points(sqlite_db, user="A", points="21", at=at(2))
    figures = report.pool_report(sqlite_db, at(2))
    assert (figures["supply"], figures["points_balance"], figures["points_unbacked"]) == (
        0, 300, 300)
    assert main(["report", "--db", sqlite_url, "--at", at(2).isoformat()]) == 0
    out = capsys.readouterr().out
    assert ("  pool money no points stand for 无积分对应的分红池资金  3.00 CNY "
            "(supply 0 流通量为零)") in out
    assert main(["report", "--db", sqlite_url, "--at", at(2).isoformat(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["points_unbacked"] == 300
