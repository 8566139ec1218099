"""Issue 7: group commit (engine/batch.py) — many concurrent buyers, several purchases per
durable commit, on SQLite and PostgreSQL.

- every purchase is recorded exactly once, the journal verifies, and the books are exactly
  those of the same purchases made one after the other in the journal's order;
- fewer commits than purchases (that is the point), and nobody is answered before the commit;
- a refused purchase is refused alone; one key twice in a batch is one purchase;
- a batch whose transaction fails is retried purchase by purchase.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from engine import service
from engine.batch import GroupCommit
from engine.errors import Refusal
from engine.state import snapshot
from engine.verify import verify
from storage import faults
from storage.db import Database
from storage.migrate import migrate

T = datetime(2026, 5, 1, 10, tzinfo=UTC)


def shop(db: Database, users: int = 12) -> list[str]:
    service.upsert_product(db, sku="tea", price="100.00", margin="0.40", lock_days=0,
                           scheme="queue", at=T)
    service.upsert_product(db, sku="rice", price="50.00", margin="0.30", lock_days=0,
                           scheme="points", at=T)
    service.upsert_product(db, sku="sofa", price="300.00", margin="0.30", lock_days=7,
                           scheme="both", at=T)
    service.deposit(db, pool="queue", amount="500.00", at=T, key="seed")
    handles = [f"u{i}" for i in range(users)]
    for i, h in enumerate(handles):
        service.join(db, user=h, referrer=handles[i // 2] if i else None, at=T)
    return handles


def together(threads: list[threading.Thread]) -> None:
    """Start every thread, then wait for all of them."""
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_buyers_share_commits_and_the_books_are_exact(db: Database) -> None:
    handles = shop(db)
    commits = [0]
    event.listen(db.engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    group = GroupCommit(db, most=16)
    answers: list[dict[str, Any]] = []
    asked: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        try:
            for i in range(15):
                kwargs = {"user": handles[(n * 5 + i) % len(handles)],
                          "sku": ("tea", "rice", "sofa")[(n + i) % 3],
                          "at": T + timedelta(minutes=1 + i), "key": f"c{n}:{i}"}
                with lock:
                    asked[kwargs["key"]] = kwargs
                got = group.buy(**kwargs)
                with lock:
                    answers.append(got)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    together([threading.Thread(target=client, args=(n,)) for n in range(8)])
    group.close()
    assert errors == []
    assert len(answers) == 120 and len({a["order"] for a in answers}) == 120
    assert group.purchases == 120 and group.batches < 120
    assert commits[0] == group.batches  # one commit per batch, not per purchase
    assert verify(db).ok

    # The same purchases one after the other, in the journal's order, give the same books.
    with db.reading() as s:
        keys = [k for (k,) in s.execute(text(
            "SELECT \"key\" FROM journal WHERE kind = 'purchase' ORDER BY id"))]
    assert sorted(keys) == sorted(asked)
    serial = Database("sqlite://")
    migrate(serial)
    shop(serial)
    for key in keys:
        service.buy(serial, **asked[key])
    with serial.reading() as a, db.reading() as b:
        assert snapshot(a) == snapshot(b)


def test_a_refused_purchase_is_refused_alone(db: Database) -> None:
    handles = shop(db, users=3)
    group = GroupCommit(db)
    results: dict[str, Any] = {}

    def call(name: str, **kwargs: Any) -> None:
        try:
            results[name] = group.buy(**kwargs)
        except Refusal as refusal:
            results[name] = refusal

    faults.arm("commit.before:buy:*:sleep0.2")  # hold each commit so the next calls queue up
    try:
        first = threading.Thread(target=call, args=("warm",),
                                 kwargs={"user": handles[0], "sku": "tea", "at": T, "key": "w"})
        first.start()
        threading.Event().wait(0.05)
        calls = [("ok1", {"user": handles[1], "sku": "tea", "at": T, "key": "a"}),
                 ("bad", {"user": "nobody", "sku": "tea", "at": T, "key": "b"}),
                 ("dup", {"user": handles[1], "sku": "tea", "at": T, "key": "a"}),
                 ("ok2", {"user": handles[2], "sku": "rice", "at": T, "key": "c"})]
        threads = [threading.Thread(target=call, args=(n,), kwargs=k) for n, k in calls]
        for t in threads:
            t.start()
        for t in [first, *threads]:
            t.join()
    finally:
        faults.disarm()
        group.close()
    assert isinstance(results["bad"], Refusal) and results["bad"].code == "unknown_user"
    assert results["dup"]["replayed"] is True and results["dup"]["order"] == results["ok1"]["order"]
    assert results["ok2"]["status"] == "settled"
    assert group.batches < 5
    with db.reading() as s:
        assert s.execute(text("SELECT count(*) FROM orders")).scalar_one() == 3
    assert verify(db).ok


def test_a_failed_batch_is_retried_purchase_by_purchase(db: Database) -> None:
    handles = shop(db, users=4)
    group = GroupCommit(db)
    results: dict[int, Any] = {}

    def call(i: int) -> None:
        try:
            results[i] = group.buy(user=handles[i], sku="tea", at=T, key=f"k{i}")
        except Exception as exc:  # noqa: BLE001 - compared below
            results[i] = exc

    # The first commit raises; what it held is recorded again, one purchase at a time.
    faults.arm("commit.before:buy:1:raise")
    try:
        together([threading.Thread(target=call, args=(i,)) for i in range(4)])
    finally:
        faults.disarm()
        group.close()
    failed = [r for r in results.values() if isinstance(r, Exception)]
    assert len(failed) <= 1  # only a purchase alone in the failed transaction is lost to it
    with db.reading() as s:
        n = s.execute(text("SELECT count(*) FROM orders")).scalar_one()
    assert n == 4 - len(failed)
    assert verify(db).ok


def test_nobody_is_answered_before_the_commit(db: Database) -> None:
    handles = shop(db, users=2)
    group = GroupCommit(db)
    faults.arm("commit.before:buy:*:raise")
    try:
        with pytest.raises(faults.FaultInjected):
            group.buy(user=handles[0], sku="tea", at=T, key="never")
    finally:
        faults.disarm()
        group.close()
    with db.reading() as s:
        assert s.execute(text("SELECT count(*) FROM orders")).scalar_one() == 0


def test_service_buy_shares_commits_once_the_storefront_turns_it_on(db: Database) -> None:
    """`storefront run` calls `service.start_group_commit` (bot/app.py): from then on the
    handlers' `service.buy` calls from many threads share commits; after `stop` each `buy`
    is its own transaction again."""
    handles = shop(db, users=6)
    commits = [0]
    event.listen(db.engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    service.start_group_commit(db)
    try:
        faults.arm("commit.before:buy:*:sleep0.05")  # let callers queue behind each commit
        together([threading.Thread(target=service.buy, kwargs={
            "db": db, "user": handles[i % 6], "sku": "rice", "at": T, "key": f"s{i}"})
            for i in range(24)])
    finally:
        faults.disarm()
        service.stop_group_commit(db)
    assert commits[0] < 24
    with db.reading() as s:
        assert s.execute(text("SELECT count(*) FROM orders")).scalar_one() == 24
    before = commits[0]
    service.buy(db, user=handles[0], sku="rice", at=T, key="alone")
    assert commits[0] == before + 1
    assert verify(db).ok
