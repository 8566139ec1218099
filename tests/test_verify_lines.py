"""`storefront verify` checks that every order's lines add up to the order (SPEC §9): 1–50
lines, their totals the order's total, their cash the order's cash."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from engine.replay import Replayer
from engine.verify import verify
from storage.db import Database
from tests.helpers import tamper
from tests.test_vectors import VECTORS


@pytest.fixture
def carts(db: Database) -> Database:
    """Carts of one to three lines, points paid, refunds and settlements."""
    with open(VECTORS / "cart-stock-receipt.jsonl", encoding="utf-8") as fh:
        Replayer(db).run(fh)
    return db


def test_untouched_carts_pass(carts):
    report = verify(carts)
    assert report.ok, report.lines()
    lines = carts.read(lambda s: s.execute(text("select count(*) from order_lines")).scalar())
    assert lines >= 8  # carts of several lines are there to be checked


def test_a_line_total_changed_is_caught(carts):
    tamper(carts, "update order_lines set total = total + 1 where line_no = 2 and order_no = "
                  "(select no from orders where ref = 'b3')")
    report = verify(carts)
    assert report.problems == ["order b3: its lines total 11001, the order 11000"]


def test_a_line_cash_changed_is_caught(carts):
    tamper(carts, "update order_lines set cash = cash - 5 where line_no = 1 and order_no = "
                  "(select no from orders where ref = 'r0')")
    report = verify(carts)
    assert len(report.problems) == 1
    assert report.problems[0].startswith("order r0: its lines' cash is ")


def test_a_removed_line_and_an_order_without_lines_are_caught(carts):
    tamper(carts, "delete from order_lines where line_no = 3 and order_no = "
                  "(select no from orders where ref = 'b1')")
    tamper(carts, "delete from order_lines where order_no = "
                  "(select no from orders where ref = 'r2')")
    problems = verify(carts).problems
    assert any(p.startswith("order b1: its lines total ") for p in problems)
    assert "order r2: 0 lines (1–50)" in problems


def test_more_than_fifty_lines_is_caught(carts):
    tamper(carts, "update order_lines set total = 0, cash = 0 where order_no = "
                  "(select no from orders where ref = 'r2')")
    for n in range(2, 52):  # 51 lines in all; the first keeps the whole order
        tamper(carts, "insert into order_lines (order_no, line_no, sku, qty, unit_price, total, "
                      f"cash, minted, accelerated) select no, {n}, sku, 1, 0, 0, 0, 0, 0 "
                      "from orders where ref = 'r2'")
    tamper(carts, "update order_lines set total = (select total from orders where ref = 'r2'), "
                  "cash = (select cash from orders where ref = 'r2') where line_no = 1 and "
                  "order_no = (select no from orders where ref = 'r2')")
    assert verify(carts).problems == ["order r2: 51 lines (1–50)"]
