"""The engine's service API: one function per business action, each one DB transaction.

Handlers, the scheduler and `storefront replay` call only these. Each returns a plain dict
(or raises `Refusal`, after which nothing has changed). Functions that move money accept an
idempotency `key`: a second call with the same key returns the first result.
"""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Withdrawal

from . import accounts, orders, payouts
from .book import Book
from .errors import Refusal
from .queue import RELEASE_PAGE, ReleasePage, release_page
from .times import now, parse_at

T = TypeVar("T")


def _in_book(db: Database, work: Callable[[Book], T]) -> T:
    def unit(session: Session) -> T:
        return work(Book(session))

    # The calling action's name labels its commit's crash points (`commit.before:buy`,
    # storage/faults.py), so a fault test can kill any action at its commit.
    return db.run(unit, label=sys._getframe(1).f_code.co_name)


def configure(db: Database, sections: Any, *, at: datetime | None = None,
              actor: str | None = None) -> dict[str, str]:
    return _in_book(db, lambda b: accounts.configure(b, sections, at or now(), actor))


def change_settings(db: Database, sections: Any, *, at: datetime | None = None,
                    actor: str | None = None) -> dict[str, tuple[str, str]]:
    """`configure` (the very check and journal entry of a replayed `config` event), telling
    what each changed rule was before: `{"store.settle_days": ("0", "7")}`."""
    def work(b: Book) -> dict[str, tuple[str, str]]:
        before = b.cfg.raw
        after = accounts.configure(b, sections, at or now(), actor)
        return {key: (before.get(key, ""), value) for key, value in after.items()}

    return _in_book(db, work)


def set_on_sale(db: Database, *, sku: object, active: bool, at: datetime | None = None,
                actor: str | None = None) -> dict[str, Any]:
    return _in_book(db, lambda b: accounts.set_on_sale(b, sku=sku, active=active,
                                                       at=at or now(), actor=actor))


def set_stock(db: Database, *, sku: object, stock: object, at: datetime | None = None,
              actor: str | None = None) -> dict[str, Any]:
    return _in_book(db, lambda b: accounts.set_stock(b, sku=sku, stock=stock, at=at or now(),
                                                     actor=actor))


def upsert_product(db: Database, *, sku: object, price: object, margin: object,
                   lock_days: object, scheme: object, name: str | None = None,
                   active: bool | None = None, stock: object = accounts.KEEP,
                   kind: object = None, at: datetime | None = None,
                   actor: str | None = None) -> dict[str, Any]:
    """Add or change a product. `stock`: units to sell, None for unlimited; left out, a new
    product is unlimited and a changed one keeps its count (SPEC §9). `kind`: `goods`
    (default for a new product), `digital` or `service`; None keeps it."""
    def work(b: Book) -> dict[str, Any]:
        row = accounts.upsert_product(b, sku=sku, price=price, margin=margin,
                                      lock_days=lock_days, scheme=scheme, name=name,
                                      active=active, stock=stock, kind=kind, at=at or now(),
                                      actor=actor)
        return {"sku": row.sku, "name": row.name, "price": row.price, "margin": row.margin,
                "lock_days": row.lock_days, "scheme": row.scheme, "active": row.active,
                "stock": row.stock, "kind": row.kind}

    return _in_book(db, work)


def join(db: Database, *, user: object, referrer: object = None, at: datetime | None = None,
         lang: str | None = None, display_name: str | None = None) -> dict[str, Any]:
    def work(b: Book) -> dict[str, Any]:
        row = accounts.join(b, user=user, referrer=referrer, at=at or now(), lang=lang,
                            display_name=display_name)
        return {"user": row.handle, "id": row.id, "referrer": referrer}

    return _in_book(db, work)


def deposit(db: Database, *, pool: object, amount: object, at: datetime | None = None,
            actor: str | None = None, key: str | None = None) -> dict[str, Any]:
    return _in_book(db, lambda b: accounts.deposit(b, pool=pool, amount=amount, at=at or now(),
                                                   actor=actor, key=key))


_GROUPS: weakref.WeakKeyDictionary[Database, Any] = weakref.WeakKeyDictionary()


def start_group_commit(db: Database, *, most: int = 64) -> None:
    """From now on `buy` on `db` from many threads at once shares commits (engine/batch.py);
    each caller still returns only once its purchase is durable. The storefront turns this
    on for its chat and webhook handlers (bot/app.py)."""
    from .batch import GroupCommit  # engine/batch.py builds on this module

    if db not in _GROUPS:
        _GROUPS[db] = GroupCommit(db, most=most)


def stop_group_commit(db: Database) -> None:
    """Record what is queued, then go back to one transaction per `buy`."""
    group = _GROUPS.pop(db, None)
    if group is not None:
        group.close()


def buy(db: Database, *, user: str, sku: object = None, qty: object = 1, lines: object = None,
        at: object = None, pay_points: object = None, order: object = None,
        method: str = "cash", key: str | None = None, actor: str | None = None
        ) -> dict[str, Any]:
    """Record a paid purchase (cash recorded by the caller, wallet, or offline by staff):
    `sku`/`qty`, or `lines=[{"sku": "TEA", "qty": 2}, ...]` (SPEC §9), exactly one of the
    two."""
    group = _GROUPS.get(db)
    if group is not None:
        result: dict[str, Any] = group.buy(user=user, sku=sku, qty=qty, lines=lines, at=at,
                                           pay_points=pay_points, order=order, method=method,
                                           key=key, actor=actor)
        return result

    def unit(session: Session) -> dict[str, Any]:
        when = now() if at is None else at
        try:
            due_by: datetime | None = parse_at(when)
        except Refusal:
            due_by = None  # refused in SPEC §7's order, by `place`
        # The purchase's reads go with the head lock's, in one round trip (engine/book.py).
        book = Book(session, purchase=(user, key, due_by))
        return place(book, user=user, sku=sku, qty=qty, lines=lines, at=when,
                     pay_points=pay_points, order=order, method=method, key=key, actor=actor)

    return db.run(unit, label="buy")


def place(b: Book, *, user: str, sku: object = None, qty: object = 1, lines: object = None,
          at: object = None, pay_points: object = None, order: object = None,
          method: str = "cash", key: str | None = None, actor: str | None = None
          ) -> dict[str, Any]:
    """`buy` inside a transaction the caller holds (engine/batch.py puts several in one)."""
    return orders.record_paid_order(b, user=user, sku=sku, qty=qty, lines=lines,
                                    at=now() if at is None else at, pay_points=pay_points,
                                    ref=order, method=method, key=key, actor=actor)


def receive(db: Database, *, order: str, at: object = None,
            actor: str | None = None) -> dict[str, Any]:
    """SPEC §9: a pending order's goods reached the buyer (`not_receivable` otherwise); with
    `store.settle_from` = receipt its return window starts now. Settles what is due."""
    return _in_book(db, lambda b: orders.receive(b, ref=order, at=now() if at is None else at,
                                                 actor=actor))


def settle(db: Database, *, at: object = None) -> list[dict[str, Any]]:
    when = parse_at(now() if at is None else at)
    return _in_book(db, lambda b: [orders.order_result(b, order)
                                   for order in orders.settle_due(b, when)])


def refund(db: Database, *, order: object, at: object = None,
           actor: str | None = None) -> dict[str, Any]:
    return _in_book(db, lambda b: orders.refund(b, ref=order, at=now() if at is None else at,
                                                actor=actor))


def release(db: Database, *, at: object = None, batch: int = RELEASE_PAGE,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Settle what is due, then pay matured entries in `seq` order (SPEC §3, §7).

    Batched: each page of entries is its own transaction, each payment keyed by its entry,
    so a crash between pages loses nothing and a rerun never pays an entry twice."""
    when = parse_at(now() if at is None else at)
    settled = settle(db, at=when)
    after, paid, amount = 0, 0, 0
    while True:
        with _collector_paused():
            page = _in_book(db, partial(_release_page, when=when, after=after, batch=batch))
        paid += len(page.paid)
        amount += sum(x[2] for x in page.paid)
        after = page.last_seq
        if progress:
            progress(paid, amount)
        if page.blocked or page.exhausted:
            return {"settled": len(settled), "paid": paid, "amount": amount,
                    "blocked": page.blocked}


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while one page is made: a page allocates a few hundred
    thousand short-lived containers, and the collections they trigger cost the release about
    a sixth of its time (docs/perf.md). Whatever cycles a page leaves are collected after."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _release_page(b: Book, *, when: datetime, after: int, batch: int) -> ReleasePage:
    return release_page(b, when, after, batch)


def withdraw_points(db: Database, *, user: object, points: object, at: datetime | None = None,
                    key: str | None = None) -> dict[str, Any]:
    return _in_book(db, lambda b: accounts.withdraw_points(b, user=user, amount=points,
                                                           at=at or now(), key=key))


def transfer_points(db: Database, *, sender: object, receiver: object, points: object,
                    at: datetime | None = None, key: str | None = None) -> dict[str, Any]:
    return _in_book(db, lambda b: accounts.transfer_points(
        b, sender=sender, receiver=receiver, amount=points, at=at or now(), key=key))


def request_withdrawal(db: Database, *, user: object, amount: object,
                       at: datetime | None = None, key: str | None = None) -> dict[str, Any]:
    return _in_book(db, lambda b: accounts.request_withdrawal(b, user=user, amount=amount,
                                                              at=at or now(), key=key))


def decide_withdrawal(db: Database, *, withdrawal_id: object, approve: bool, actor: str | None,
                      at: datetime | None = None, reference: str | None = None) -> dict[str, Any]:
    return _in_book(db, lambda b: accounts.decide_withdrawal(
        b, withdrawal_id=withdrawal_id, approve=approve, at=at or now(), actor=actor,
        reference=reference))


def set_payout_method(db: Database, *, user: object, kind: object, name: object = None,
                      account: object = None, at: datetime | None = None) -> dict[str, Any]:
    """Where `user`'s withdrawals are paid (engine/payouts.py)."""
    return _in_book(db, lambda b: payouts.set_method(b, user=user, kind=kind, name=name,
                                                     account=account, at=at or now()))


def set_payout_limits(db: Database, values: dict[str, int]) -> payouts.Limits:
    """Operator-set withdrawal limits in fen, 0 = none (engine/payouts.py)."""
    return _in_book(db, lambda b: payouts.set_limits(b, values))


def withdraw_cash(db: Database, *, user: object, amount: object, at: datetime | None = None,
                  key: str | None = None) -> dict[str, Any]:
    """Replay's `withdraw_cash`: a request approved at once, in one transaction."""
    when = at or now()

    def work(b: Book) -> dict[str, Any]:
        req = accounts.request_withdrawal(b, user=user, amount=amount, at=when, key=key)
        if req.get("replayed"):
            row = b.s.get(Withdrawal, req["withdrawal"])  # answered as the decision was
            return {"withdrawal": req["withdrawal"], "user": req["user"], "amount": req["amount"],
                    "status": row.status if row else req["status"], "replayed": True}
        return accounts.decide_withdrawal(b, withdrawal_id=req["withdrawal"], approve=True,
                                          at=when, actor="replay")

    return _in_book(db, work)
