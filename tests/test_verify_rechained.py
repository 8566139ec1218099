"""`storefront verify`'s checks beyond the hash chain, each alone: the books are tampered with and
the whole chain is then hashed again (as a forger who knows the hash would), so only the check
under test can find it. Also: on SQLite the text to hash comes from SQLite's JSON functions, and
a transaction whose SQLite text differs from the engine's encoding is hashed again in Python
before it is reported."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from engine import journal
from engine import verify as verify_module
from engine.replay import Replayer
from engine.verify import at_iso, verify
from tests.test_vectors import VECTORS
from tests.test_verify import MORE


def _replay(db: Any) -> Any:
    with open(VECTORS / "settle-refund.jsonl", encoding="utf-8") as fh:
        Replayer(db).run(fh)
    Replayer(db).run(MORE)
    return db


@pytest.fixture
def books(db: Any) -> Any:
    return _replay(db)


def rechain(db: Any) -> None:
    """Hash every transaction again from the genesis, as stored, and move the head."""
    with db.engine.begin() as conn:
        txns = conn.execute(text("select id, key, kind, at, actor, body, result from journal "
                                 "order by id")).all()
        lines: dict[int, list[tuple[Any, ...]]] = {}
        for txn_id, *line in conn.execute(text(
                "select txn_id, account, unit, amount, ref from postings order by txn_id, id")):
            lines.setdefault(txn_id, []).append(tuple(line))
        prev = journal.GENESIS
        for txn_id, key, kind, at, actor, body, result in txns:
            digest = verify_module._engine_hash(prev, txn_id, key, kind, at_iso(at), actor, body,
                                                result, lines.get(txn_id, []))
            conn.execute(text("update journal set prev_hash = :p, hash = :h where id = :i"),
                         {"p": prev, "h": digest, "i": txn_id})
            prev = digest
        conn.execute(text("update head set last_hash = :h where id = 1"), {"h": prev})


def postings(db: Any, where: str) -> list[Any]:
    return db.read(lambda s: s.execute(text(
        f"select id, txn_id, account, unit, amount from postings where {where} "
        "order by txn_id, id")).all())


def test_rechained_books_still_pass(books):
    rechain(books)
    report = verify(books)
    assert report.ok, report.lines()


def test_an_unbalanced_transaction_is_named_by_the_balance_check(books):
    victim = postings(books, "amount > 0 and unit = 'fen'")[3]
    with books.engine.begin() as conn:
        conn.execute(text("update postings set amount = amount + 1 where id = :i"),
                     {"i": victim.id})
    rechain(books)
    problems = verify(books).problems
    assert any(p.startswith(f"transaction {victim.txn_id} ") and "do not balance" in p
               and "'fen': 1" in p for p in problems), problems
    assert not any("altered" in p or "prev_hash" in p for p in problems), problems


def test_a_pool_below_zero_is_named(books):
    first = postings(books, f"account = '{journal.QUEUE_POOL}' and amount > 0")[0]
    with books.engine.begin() as conn:  # the whole transaction backwards: it still balances
        conn.execute(text("update postings set amount = -amount where txn_id = :t"),
                     {"t": first.txn_id})
    rechain(books)
    problems = verify(books).problems
    assert any(p.startswith(f"transaction {first.txn_id} ")
               and f"{journal.QUEUE_POOL} went below zero" in p for p in problems), problems
    assert not any("altered" in p or "do not balance" in p for p in problems), problems


def test_a_falling_points_price_is_named(books):
    """A transaction that issues points and pays the points pool, its pool share moved to the
    transaction's other fen posting: the supply grows, the pool does not, the price falls."""
    issued = {p.txn_id for p in postings(books, f"account = '{journal.POINTS_ISSUED}' "
                                                "and amount < 0")}
    paying = [p for p in postings(books, f"account = '{journal.POINTS_POOL}' and amount > 0")
              if p.txn_id in issued]
    assert len(paying) >= 2
    victim = paying[1]  # a price was already set by an earlier one
    other = next(p for p in postings(books, f"txn_id = {victim.txn_id} and unit = 'fen'")
                 if p.id != victim.id)
    with books.engine.begin() as conn:
        conn.execute(text("update postings set amount = amount + :a where id = :i"),
                     {"a": victim.amount, "i": other.id})
        conn.execute(text("update postings set amount = 0 where id = :i"), {"i": victim.id})
    rechain(books)
    problems = verify(books).problems
    assert any(p.startswith(f"transaction {victim.txn_id} ") and "points price fell" in p
               for p in problems), problems
    assert not any("altered" in p or "do not balance" in p for p in problems), problems


def test_an_overpaid_entry_in_the_postings_is_named(books):
    paid = postings(books, "ref like 'entry:%' and account like '%\\:wallet' and amount > 0")[0]
    other = next(p for p in postings(books, f"txn_id = {paid.txn_id} and unit = 'fen'")
                 if p.id != paid.id)
    with books.engine.begin() as conn:  # the wallet paid 1 more, balanced by its counterpart
        conn.execute(text("update postings set amount = amount + 1 where id = :i"),
                     {"i": paid.id})
        conn.execute(text("update postings set amount = amount - 1 where id = :i"),
                     {"i": other.id})
    rechain(books)
    problems = verify(books).problems
    assert any(p.startswith("entry ") and "differs from postings" in p for p in problems), \
        problems
    assert not any("altered" in p or "do not balance" in p for p in problems), problems


def count_rehashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The transactions verify hashes again in Python (`_rehash`), as it asks."""
    calls: list[int] = []
    rehash = verify_module._rehash
    monkeypatch.setattr(verify_module, "_rehash",
                        lambda cursor, txn_id: calls.append(txn_id) or rehash(cursor, txn_id))
    return calls


def test_sqlite_text_that_differs_is_hashed_again_before_it_is_reported(sqlite_db, monkeypatch):
    """Every transaction's SQLite text spoiled: each is hashed again in Python, so untouched
    books still pass and an altered row is still named."""
    db = _replay(sqlite_db)
    spoiled = verify_module._PAGE_SQL.replace("json_array(id, key,", "json_array(id, key, 1,")
    assert spoiled != verify_module._PAGE_SQL
    monkeypatch.setattr(verify_module, "_PAGE_SQL", spoiled)
    calls = count_rehashes(monkeypatch)
    report = verify(db)
    assert report.ok, report.lines()
    assert len(calls) == report.txns
    with db.engine.begin() as conn:
        conn.execute(text("update journal set body = replace(body, '10000', '10001') "
                          "where id = 7"))
    assert any(p.startswith("transaction 7 ") and "altered" in p
               for p in verify(db).problems)


def test_sqlite_spells_the_text_as_the_engine_hashes_it(sqlite_db, monkeypatch):
    """Untouched books on SQLite: no transaction needs hashing again in Python, awkward
    characters (quotes, backslashes, control characters, non-ASCII) included."""
    db = _replay(sqlite_db)
    with db.engine.begin() as conn:
        conn.execute(text("update journal set actor = :a where id = 5"),
                     {"a": 'tg:1 "é" \\ \n\t\x01\x1f\x7f \u2028 茶 😀'})
    rechain(db)
    calls = count_rehashes(monkeypatch)
    report = verify(db)
    assert report.ok, report.lines()
    assert calls == []
