"""Issue 7: group commit (engine/batch.py) — many concurrent buyers, several purchases per
durable commit, on SQLite and PostgreSQL.

- every purchase is recorded exactly once, the journal verifies, and the books are exactly
  those of the same purchases made one after the other in the journal's order;
- fewer commits than purchases (that is the point), and nobody is answered before the commit;
- a refused purchase is refused alone; one key twice in a batch is one purchase;
- a batch whose transaction fails is retried purchase by purchase.

No test here depends on how threads happen to be scheduled: where a batch of several
purchases is needed, the worker's first commit is held until they are all queued behind it
(`hold_first_commit`), and where their order matters each is queued before the next starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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
from tests.conftest import MakeDb

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


def orders(db: Database) -> int:
    with db.reading() as s:
        return int(s.execute(text("SELECT count(*) FROM orders")).scalar_one())


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition another thread brings about (the deadline only ends a hung run;
    no assertion depends on how long anything took)."""
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.001)


def hold_first_commit(db: Database, group: GroupCommit, queued: int) -> threading.Event:
    """The group's first commit waits until `queued` purchases are queued behind it, so the
    next batch certainly holds them all (whatever the machine's load). Returns an event set
    once that commit is being held."""
    holding = threading.Event()

    def hold(_conn: Any) -> None:
        if not holding.is_set() and threading.current_thread().name == "group-commit":
            holding.set()
            wait_until(lambda: group._jobs.qsize() >= queued, f"{queued} purchases queued")

    event.listen(db.engine, "commit", hold)
    return holding


def queued_in_order(group: GroupCommit, threads: list[threading.Thread]) -> None:
    """Start the threads one by one, each once the one before has queued its purchase. (Not
    after the last: the held commit lets go once it is queued, and the recording thread may
    take them all before this thread could see the queue full.)"""
    for n, t in enumerate(threads, 1):
        if n > 1:
            wait_until(lambda n=n: group._jobs.qsize() >= n - 1,  # type: ignore[misc]
                       f"purchase {n - 1} queued")
        t.start()


def together(threads: list[threading.Thread], holding: threading.Event | None = None) -> None:
    """Start every thread, then wait for all of them. With `holding` (hold_first_commit's),
    the first thread starts alone and the others once its commit is held, so the held batch
    is the first thread's purchase alone and everyone else's queue behind it."""
    first, *rest = threads
    first.start()
    if holding is not None:
        wait_until(holding.is_set, "the first commit held")
    for t in rest:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_buyers_share_commits_and_the_books_are_exact(db: Database,
                                                                 make_db: MakeDb) -> None:
    handles = shop(db)
    commits = [0]
    event.listen(db.engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    group = GroupCommit(db, most=16)
    holding = hold_first_commit(db, group, queued=7)  # the other 7 clients' first purchases
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

    together([threading.Thread(target=client, args=(n,)) for n in range(8)], holding)
    group.close()
    assert errors == []
    assert len(answers) == 120 and len({a["order"] for a in answers}) == 120
    assert group.purchases == 120 and group.batches <= 120 - 6  # those 7 shared a commit
    assert commits[0] == group.batches  # one commit per batch, not per purchase
    assert verify(db).ok

    # The same purchases one after the other, in the journal's order, give the same books.
    with db.reading() as s:
        keys = [k for (k,) in s.execute(text(
            "SELECT \"key\" FROM journal WHERE kind = 'purchase' ORDER BY id"))]
    assert sorted(keys) == sorted(asked)
    serial = make_db("memory")
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

    first = threading.Thread(target=call, args=("warm",),
                             kwargs={"user": handles[0], "sku": "tea", "at": T, "key": "w"})
    calls = [("ok1", {"user": handles[1], "sku": "tea", "at": T, "key": "a"}),
             ("bad", {"user": "nobody", "sku": "tea", "at": T, "key": "b"}),
             ("dup", {"user": handles[1], "sku": "tea", "at": T, "key": "a"}),
             ("ok2", {"user": handles[2], "sku": "rice", "at": T, "key": "c"})]
    threads = [threading.Thread(target=call, args=(n,), kwargs=k) for n, k in calls]
    holding = hold_first_commit(db, group, queued=len(calls))
    try:
        first.start()
        wait_until(holding.is_set, "the warm-up's commit held")
        queued_in_order(group, threads)  # ok1 before dup: dup is the replay
        for t in [first, *threads]:
            t.join()
    finally:
        group.close()
    assert isinstance(results["bad"], Refusal) and results["bad"].code == "unknown_user"
    assert results["dup"]["replayed"] is True and results["dup"]["order"] == results["ok1"]["order"]
    assert results["ok2"]["status"] == "settled"
    assert group.batches == 2  # the warm-up, then the four together
    assert orders(db) == 3
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

    # A warm-up commit is held until all four are queued; their batch's commit (the second)
    # raises, and each of them is then recorded alone.
    warm = threading.Thread(target=group.buy, kwargs={"user": handles[0], "sku": "rice",
                                                      "at": T, "key": "warm"})
    holding = hold_first_commit(db, group, queued=4)
    faults.arm("commit.before:buy:2:raise")
    try:
        warm.start()
        wait_until(holding.is_set, "the warm-up's commit held")
        together([threading.Thread(target=call, args=(i,)) for i in range(4)])
        warm.join()
    finally:
        faults.disarm()
        group.close()
    assert [r for r in results.values() if isinstance(r, Exception)] == []
    assert sorted(results) == [0, 1, 2, 3]
    assert group.batches == 1 + 4  # the warm-up, then each of the failed batch alone
    assert orders(db) == 5
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
    assert orders(db) == 0


def test_service_buy_shares_commits_once_the_storefront_turns_it_on(db: Database) -> None:
    """`storefront run` calls `service.start_group_commit` (bot/app.py): from then on the
    handlers' `service.buy` calls from many threads share commits; after `stop` each `buy`
    is its own transaction again."""
    handles = shop(db, users=6)
    commits = [0]
    event.listen(db.engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    service.start_group_commit(db)
    holding = hold_first_commit(db, service._GROUPS[db], queued=23)  # the rest queue behind
    try:
        together([threading.Thread(target=service.buy, kwargs={
            "db": db, "user": handles[i % 6], "sku": "rice", "at": T, "key": f"s{i}"})
            for i in range(24)], holding)
    finally:
        service.stop_group_commit(db)
    assert commits[0] == 2  # the first purchase, then the other 23 together
    assert orders(db) == 24
    before = commits[0]
    service.buy(db, user=handles[0], sku="rice", at=T, key="alone")
    assert commits[0] == before + 1
    assert verify(db).ok


def _journal(db: Database) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The journal as stored (every byte the hash chain covers) and its postings."""
    with db.reading() as s:
        txns = [tuple(r) for r in s.execute(text(
            'SELECT id, "key", kind, actor, body, result, prev_hash, hash FROM journal '
            "ORDER BY id"))]
        postings = sorted(tuple(r) for r in s.execute(text(
            "SELECT txn_id, account, unit, amount, ref FROM postings")))
    return txns, postings


def batched(db: Database, calls: list[dict[str, Any]], warm: dict[str, Any]
            ) -> tuple[dict[int, Any], list[str]]:
    """The purchase `warm` recorded alone, its commit held until every one of `calls` is
    queued behind it, in order; then `calls` in one batch. Returns their answers (a refusal
    as ("refused", code)) and the statements the recording thread sent for that batch."""
    group = GroupCommit(db)
    answers: dict[int, Any] = {}
    sent: list[str] = []

    def call(i: int) -> None:
        try:
            answers[i] = group.buy(**calls[i])
        except Refusal as refusal:
            answers[i] = ("refused", refusal.code)

    def heard(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.current_thread().name == "group-commit":
            sent.append(statement)

    first = threading.Thread(target=group.buy, kwargs=warm)
    holding = hold_first_commit(db, group, queued=len(calls))
    try:
        first.start()
        wait_until(holding.is_set, "the warm-up's commit held")
        event.listen(db.engine, "before_cursor_execute", heard)
        queued_in_order(group, [threading.Thread(target=call, args=(i,))
                                for i in range(len(calls))])
        first.join()
        wait_until(lambda: len(answers) == len(calls), "every purchase answered")
    finally:
        group.close()
        event.remove(db.engine, "before_cursor_execute", heard)
    assert group.batches == 2  # the warm-up, then all of them together
    return answers, sent


def same_books(db: Database, serial: Database, calls: list[dict[str, Any]],
               warm: dict[str, Any], answers: dict[int, Any]) -> None:
    """`serial` (the same shop as `db` before `batched`) given `warm` and `calls` one by one
    answers as the batch did and ends with the same journal bytes and state."""
    service.buy(serial, **warm)
    alone: dict[int, Any] = {}
    for i, kwargs in enumerate(calls):
        try:
            alone[i] = service.buy(serial, **kwargs)
        except Refusal as refusal:
            alone[i] = ("refused", refusal.code)
    assert answers == alone
    assert _journal(db) == _journal(serial)
    with serial.reading() as a, db.reading() as b:
        assert snapshot(a) == snapshot(b)


def test_one_batch_gives_each_purchase_what_it_would_get_alone(db: Database,
                                                               make_db: MakeDb) -> None:
    """Issue 19: a batch reads every purchase's rows in one round trip before recording
    any, and writes its rows a statement a table at the end. Whatever an earlier purchase of
    the batch changed in memory (a buyer twice, a shared referrer's entries, an order it made
    due, a key it recorded) each later one sees, exactly as one-by-one purchases would: the
    same answers, refusals, journal bytes, hash chain and postings."""
    handles = shop(db, users=6)  # u1 refers u2 and u3, u2 refers u4 and u5
    later = T + timedelta(days=40)  # the sofa bought below is due by then
    calls: list[dict[str, Any]] = [
        {"user": handles[1], "sku": "tea", "at": T, "key": "a"},
        {"user": handles[2], "sku": "sofa", "at": T, "key": "b"},
        {"user": handles[3], "sku": "tea", "at": T, "key": "c"},  # u1's entries again
        {"user": handles[1], "sku": "rice", "at": T, "key": "d"},  # the same buyer again
        {"user": "nobody", "sku": "tea", "at": T, "key": "e"},
        {"user": handles[2], "sku": "tea", "at": T, "key": "a"},  # a key of this batch
        {"user": handles[4], "sku": "tea", "at": "not a time", "key": "f"},
        {"user": handles[5], "sku": "tea", "at": later, "key": "g"},  # settles the sofa
        {"user": handles[4], "sku": "rice", "at": later},  # no key
        {"user": handles[3], "sku": "sofa", "at": later, "key": "h", "pay_points": "0.10"},
    ]
    warm = {"user": handles[0], "sku": "rice", "at": T, "key": "warm"}
    answers, _sent = batched(db, calls, warm)
    assert answers[4] == ("refused", "unknown_user")
    assert answers[5]["replayed"] is True
    assert verify(db).ok

    serial = make_db("memory")
    shop(serial, users=6)
    same_books(db, serial, calls, warm, answers)
