"""Paying an order that awaits payment from the wallet (engine.checkout.pay_with_wallet):
the same journal rules as a wallet purchase, on that very order, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from engine import checkout, service
from engine.errors import Refusal
from engine.verify import verify
from storage.models import Checkout, JournalTxn, Order
from tests.helpers import at, seed_shop, state


def _setup(db) -> None:  # type: ignore[no-untyped-def]
    """B holds 100.00 in the wallet (a released entry); A invited B."""
    seed_shop(db, users=("A", "B"), referrals={"B": "A"},
              products=[("tea", "100.00", "0.50", 15, "queue")], queue_seed="1000.00")
    service.buy(db, user="B", sku="tea", at=at(1))
    service.release(db, at=at(20))
    assert state(db)["users"]["B"]["wallet"] == "100.00"


def _open(db, user: str = "B", key: str = "k1", day: int = 21) -> dict:  # type: ignore[no-untyped-def]
    return checkout.open_checkout(db, user=user, sku="tea", channel="telegram",
                                  method="telegram", key=key, at=at(day))


def _count(db, model) -> int:  # type: ignore[no-untyped-def]
    return db.read(lambda s: s.execute(select(func.count()).select_from(model)).scalar_one())


def test_wallet_pays_the_open_order_itself_and_never_opens_a_second(db):
    _setup(db)
    opened = _open(db)
    assert opened["order"] == "N2" and opened["status"] == "awaiting_payment"
    orders_before, txns_before = _count(db, Order), _count(db, JournalTxn)
    r = checkout.pay_with_wallet(db, user="B", order="N2", key="pay:N2:w", at=at(21, 11))
    assert r["order"] == "N2" and r["status"] == "settled" and r["entry"] == 2
    assert _count(db, Order) == orders_before  # no N3
    s = state(db)
    assert s["users"]["B"]["wallet"] == "0.00"
    assert [e["amount"] for e in s["entries"] if e["user"] == "B"] == ["100.00", "100.00"]
    row = db.read(lambda x: x.execute(select(Order).where(Order.ref == "N2")).scalar_one())
    assert (row.status, row.method) == ("settled", "wallet")
    assert db.read(lambda x: x.get(Checkout, opened["token"]).status) == "paid"
    assert checkout.precheck(db, token=opened["token"], amount=10000, currency="CNY",
                             identity="B", at=at(21, 12)) == "closed"
    # a purchase transaction and a settlement: the same rules as `/buy … wallet`
    assert _count(db, JournalTxn) == txns_before + 2
    assert verify(db).ok
    again = checkout.pay_with_wallet(db, user="B", order="N2", key="pay:N2:w", at=at(21, 12))
    assert again["order"] == "N2" and again.get("replayed")
    assert _count(db, JournalTxn) == txns_before + 2 and state(db) == s


def test_paying_an_order_refuses_others_closed_orders_and_a_short_wallet(db):
    _setup(db)
    _open(db)  # N2, B's
    before = state(db), _count(db, JournalTxn)
    for user, order, code in (("A", "N2", "unknown_order"), ("B", "N9", "unknown_order"),
                              ("B", "N1", "not_payable"), ("B", None, "unknown_order")):
        with pytest.raises(Refusal) as err:
            checkout.pay_with_wallet(db, user=user, order=order, key=f"x:{user}:{order}",
                                     at=at(21, 11))
        assert err.value.code == code
    assert (state(db), _count(db, JournalTxn)) == before
    checkout.pay_with_wallet(db, user="B", order="N2", key="pay:N2:w", at=at(21, 11))
    _open(db, key="k2")  # N3, with an empty wallet
    with pytest.raises(Refusal) as err:
        checkout.pay_with_wallet(db, user="B", order="N3", key="pay:N3:w", at=at(21, 12))
    assert err.value.code == "insufficient_balance"
    service.configure(db, {"store": {"paused": "1"}}, at=at(21, 12))
    with pytest.raises(Refusal) as err:  # the wallet's money has not moved: the shop says no
        checkout.pay_with_wallet(db, user="B", order="N3", key="pay:N3:w", at=at(21, 12))
    assert err.value.code == "sales_paused"
    with pytest.raises(Refusal) as err:  # N2 is paid: another key cannot pay it twice
        checkout.pay_with_wallet(db, user="B", order="N2", key="pay:N2:again", at=at(21, 12))
    assert err.value.code == "not_payable"
    assert verify(db).ok


def test_an_open_order_paid_from_the_wallet_is_refunded_to_the_wallet(db):
    _setup(db)
    service.configure(db, {"store": {"settle_days": "7"}}, at=at(21))
    _open(db)
    checkout.pay_with_wallet(db, user="B", order="N2", key="pay:N2:w", at=at(21, 11))
    assert state(db)["users"]["B"]["wallet"] == "0.00"
    r = service.refund(db, order="N2", at=at(22))
    assert r["status"] == "refunded"
    assert state(db)["users"]["B"]["wallet"] == "100.00"  # back where it came from
    assert verify(db).ok
