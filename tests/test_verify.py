"""`storefront verify` proves the books and names the transaction that was tampered with."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from engine.replay import Replayer
from engine.verify import verify
from storage.db import Database
from tests.helpers import tamper
from tests.storefront_zygote import storefront
from tests.test_vectors import VECTORS

# What `books` replays after the settle-refund vector: every kind of movement once more.
MORE = [
    '{"op": "join", "user": "C", "referrer": "B"}',
    '{"op": "buy", "user": "C", "sku": "TEA", "qty": 3, "at": "2026-09-01T10:00:00+08:00"}',
    '{"op": "settle", "at": "2026-09-09T00:00:00+08:00"}',
    '{"op": "withdraw_points", "user": "B", "points": "5"}',
    '{"op": "transfer_points", "from": "B", "to": "C", "points": "2.5"}',
    '{"op": "withdraw_cash", "user": "A", "amount": "18.67"}',
    '{"op": "release", "at": "2026-09-30T00:00:00+08:00"}',
]


@pytest.fixture
def books(db: Database) -> Database:
    with open(VECTORS / "settle-refund.jsonl", encoding="utf-8") as fh:
        Replayer(db).run(fh)
    Replayer(db).run(MORE)
    return db


def test_verify_passes_on_untouched_books(books):
    report = verify(books)
    assert report.ok, report.lines()
    assert report.txns > 20


def test_verify_detects_an_altered_amount(books):
    tamper(books, "update postings set amount = amount + 1 "
                  "where id = (select min(id) from postings where amount > 0)")
    report = verify(books)
    assert not report.ok
    assert any("altered" in p for p in report.problems)


def test_verify_detects_an_altered_hash_and_body(books):
    tamper(books, "update journal set body = replace(body, '10000', '10001') where id = 7")
    report = verify(books)
    assert any(p.startswith("transaction 7 ") and "altered" in p for p in report.problems)


def test_verify_detects_a_deleted_transaction(books):
    tamper(books, "delete from postings where txn_id = 9")
    tamper(books, "delete from journal where id = 9")
    problems = verify(books).problems
    assert any("transaction 10 " in p and "removed" in p for p in problems)


def test_verify_detects_the_newest_transaction_removed(books):
    last = books.read(lambda s: s.execute(text("select max(id) from journal")).scalar_one())
    tamper(books, f"delete from postings where txn_id = {last}")
    tamper(books, f"delete from journal where id = {last}")
    assert any("head" in p for p in verify(books).problems)


def test_verify_detects_reordered_transactions(books):
    cols = ("key", "kind", "at", "actor", "body", "result", "prev_hash", "hash")
    with books.engine.begin() as conn:
        rows = {r.id: r for r in conn.execute(
            text(f"select id, {', '.join(cols)} from journal where id in (11, 12)"))}
        conn.execute(text("update journal set key = key || '~' where id in (11, 12)"))
        conn.execute(text("update postings set txn_id = case when txn_id = 11 then 12 else 11 end "
                          "where txn_id in (11, 12)"))
        for here, there in ((11, 12), (12, 11)):
            values = {c: getattr(rows[there], c) for c in cols}
            conn.execute(text(f"update journal set {', '.join(f'{c} = :{c}' for c in cols)} "
                              "where id = :id"), {**values, "id": here})
    problems = verify(books).problems
    assert any(p.startswith("transaction 11 ") for p in problems), problems
    assert any(p.startswith("transaction 12 ") for p in problems), problems


def test_verify_detects_state_that_differs_from_the_postings(books):
    tamper(books, "update users set wallet = wallet + 100 where handle = 'A'")
    assert any("user A: wallet" in p for p in verify(books).problems)
    tamper(books, "update users set wallet = wallet - 100 where handle = 'A'")
    tamper(books, "update pools set balance = balance - 1 where name = 'queue'")
    assert any("queue pool balance" in p for p in verify(books).problems)


def test_verify_detects_an_overpaid_entry(books):
    tamper(books, "update entries set released = amount + 1 where seq = 1")
    assert any("entry 1" in p for p in verify(books).problems)


def test_cli_verify_exits_non_zero_and_names_the_transaction(tmp_path):
    url = f"sqlite:///{tmp_path}/v.db"
    storefront("replay", str(VECTORS / "forced-exit.jsonl"), "--db", url, check=True)
    ok = storefront("verify", "--db", url)
    assert ok.returncode == 0 and "journal OK" in ok.stdout
    db = Database(url)
    tamper(db, "update postings set amount = amount * 2 where txn_id = 8 and amount > 0")
    db.dispose()
    bad = storefront("verify", "--db", url)
    assert bad.returncode == 1 and "transaction 8 " in bad.stdout
