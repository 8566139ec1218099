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
from storage.migrate import migrate
from tests.test_report import busy_shop, local

PNG = b"\x89PNG\r\n\x1a\n"


def test_charts_render_off_screen_to_png(memdb: Database):
    at = busy_shop(memdb)
    assert matplotlib.get_backend().lower() == "agg"
    for png in (pool_chart_png(memdb, at), price_chart_png(memdb, at, days=5)):
        assert png.startswith(PNG) and len(png) > 10_000
    # An empty shop still gets a chart, not an error.
    empty = Database("sqlite://")
    migrate(empty)
    assert pool_chart_png(empty, local(0)).startswith(PNG)
    assert price_chart_png(empty, local(0)).startswith(PNG)
    empty.dispose()


def test_report_command_prints_the_figures_and_writes_charts(
        tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]):
    db = Database(sqlite_url)
    migrate(db)
    at = busy_shop(db)
    expected = report.pool_report(db, at)
    db.dispose()
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
