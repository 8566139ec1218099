"""Issue 15: one money primitive. A movement changes the stored balance of every account a row
keeps and writes its two postings in one call; a transaction that does not balance per unit is
never chained (docs/engine.md, "The journal")."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from engine import journal, ledger
from storage.rows import UserRow


def _ann(**balances: int) -> UserRow:
    return UserRow(**{"id": 7, "handle": "ann", "wallet": 0, "held": 0, "points": 0, "basis": 0,
                      **balances})


def test_a_movement_moves_the_stored_balances_and_writes_both_postings() -> None:
    ann = _ann(wallet=500)
    p = journal.Postings()
    p.fen(ledger.wallet(ann), ledger.held(ann), 200, "withdrawal:1")
    assert (ann.wallet, ann.held) == (300, 200)
    assert p.lines == [("user:7:wallet", "fen", -200, "withdrawal:1"),
                       ("user:7:held", "fen", 200, "withdrawal:1")]


def test_an_account_no_row_keeps_only_gets_its_posting() -> None:
    ann = _ann()
    p = journal.Postings()
    p.fen(journal.PAYMENTS_IN, ledger.wallet(ann), 150)
    assert ann.wallet == 150
    assert p.lines == [("world:payments", "fen", -150, None), ("user:7:wallet", "fen", 150, None)]


def test_minting_raises_the_supply_which_is_minus_the_points_issued() -> None:
    pool = SimpleNamespace(balance=0, supply=1_000)
    ann = _ann()
    p = journal.Postings()
    p.micro(journal.Stored(journal.POINTS_ISSUED, pool, "supply", -1), ledger.holding(ann), 250)
    assert (pool.supply, ann.points) == (1_250, 250)
    assert p.lines[0] == ("points:issued", "micro", -250, None)


def test_a_zero_movement_changes_and_writes_nothing() -> None:
    ann = _ann(wallet=10)
    p = journal.Postings()
    p.fen(ledger.wallet(ann), journal.REVENUE, 0)
    assert ann.wallet == 10 and p.lines == []


def test_an_unbalanced_transaction_is_not_chained() -> None:
    head = SimpleNamespace(last_txn=0, last_hash=journal.GENESIS)
    p = journal.Postings(lines=[("user:7:wallet", "fen", 5, None)])
    with pytest.raises(AssertionError, match="unbalanced"):
        journal.chain(head, [journal.Txn("k", "deposit", datetime(2026, 1, 1, tzinfo=UTC), p)])
    assert head.last_txn == 0
