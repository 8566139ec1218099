"""Exports (issue 6): what goes out reads back to exactly what the database holds, page by
page, and an exported journal still proves its own hash chain."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import event, select

from bot.cli import main
from engine import export, service
from engine.errors import Refusal
from engine.journal import txn_hash
from engine.money import format_fen, format_micro
from storage.db import Database
from storage.models import Entry, JournalTxn, User
from tests.test_report import busy_shop, local


def read_back(data: bytes, fmt: str) -> list[dict]:
    text = data.decode("utf-8")
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    # CSV cells are text: turn them back into what the JSON form holds.
    for row in rows:
        for k, v in row.items():
            if v == "":
                row[k] = None
            elif k in ("postings", "blocked"):
                row[k] = json.loads(v)
            elif k in ("id", "seq", "order_no"):
                row[k] = int(v)
    return rows


def exported(db: Database, what: str, fmt: str) -> list[dict]:
    out = io.BytesIO()
    n = export.stream(db, what, fmt, out)
    rows = read_back(out.getvalue(), fmt)
    assert n == len(rows)
    return rows


def odd_people(db: Database) -> None:
    """Handles and names that CSV must quote: commas, quotes, newlines, CJK."""
    service.join(db, user='张三,"q"', at=local(0), display_name="line one\nline, two",
                 lang="zh")
    service.join(db, user="E", referrer='张三,"q"', at=local(0))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_users_and_entries_round_trip(db: Database, fmt: str):
    busy_shop(db)
    odd_people(db)
    users = db.read(lambda s: s.execute(select(User).order_by(User.id)).scalars().all())
    handles = {u.id: u.handle for u in users}
    assert exported(db, "users", fmt) == [
        {"id": u.id, "handle": u.handle, "referrer": handles.get(u.referrer_id),
         "lang": u.lang, "display_name": u.display_name,
         "created_at": u.created_at.isoformat(), "wallet": format_fen(u.wallet),
         "held": format_fen(u.held), "points": format_micro(u.points),
         "basis": format_fen(u.basis), "blocked": u.blocked} for u in users]
    entries = db.read(lambda s: s.execute(select(Entry).order_by(Entry.seq)).scalars().all())
    assert exported(db, "entries", fmt) == [
        {"seq": e.seq, "user": handles[e.user_id], "order_no": e.order_no,
         "amount": format_fen(e.amount), "released": format_fen(e.released),
         "remaining": format_fen(e.amount - e.released), "status": e.status,
         "matures_at": e.matures_at.isoformat(), "created_at": e.created_at.isoformat(),
         "released_at": e.released_at.isoformat() if e.released_at else None}
        for e in entries]
    assert len(entries) > 5


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_exported_journal_still_proves_its_hash_chain(db: Database, fmt: str):
    busy_shop(db)
    rows = exported(db, "journal", fmt)
    count = db.read(lambda s: s.execute(select(JournalTxn.id)).all())
    assert [r["id"] for r in rows] == list(range(1, len(count) + 1))
    prev = "0" * 64
    for r in rows:
        lines = [tuple(p) for p in r["postings"]]
        assert r["prev_hash"] == prev
        assert r["hash"] == txn_hash(prev, r["id"], r["key"], r["kind"],
                                     datetime.fromisoformat(r["at"]), r["actor"], r["body"],
                                     r["result"], lines)
        prev = r["hash"]
    assert sum(len(r["postings"]) for r in rows) > 50
    # And a changed amount no longer matches its hash.
    r = next(r for r in rows if r["postings"])
    r["postings"][0][2] += 1
    assert r["hash"] != txn_hash(r["prev_hash"], r["id"], r["key"], r["kind"],
                                 datetime.fromisoformat(r["at"]), r["actor"], r["body"],
                                 r["result"], [tuple(p) for p in r["postings"]])


def test_export_reads_in_bounded_pages(memdb: Database, monkeypatch: pytest.MonkeyPatch):
    """Constant memory: every read is a LIMITed keyset page; small pages give the same rows."""
    busy_shop(memdb)
    whole = {w: exported(memdb, w, "jsonl") for w in export.WHATS}
    monkeypatch.setattr(export, "PAGE", 3)
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(memdb.engine, "before_cursor_execute", seen)
    try:
        for what in export.WHATS:
            assert exported(memdb, what, "jsonl") == whole[what]
    finally:
        event.remove(memdb.engine, "before_cursor_execute", seen)
    for table, what in (("journal", "journal"), ("entries", "entries"), ("users", "users")):
        pages = [s for s in statements if f"FROM {table} " in s and "LIMIT" in s]
        assert len(pages) >= -(-len(whole[what]) // 3) > 1, table
    reads = [s for s in statements if "FROM journal" in s or "FROM entries" in s
             or "FROM users" in s]
    assert [s for s in reads if "LIMIT" not in s] == []
    # Postings are read per page of transactions, by a bounded id range.
    assert all("postings.txn_id >" in s and "postings.txn_id <=" in s
               for s in statements if "FROM postings" in s)


def test_unknown_kind_or_format_is_refused_before_anything_is_written(memdb: Database):
    out = io.BytesIO()
    for what, fmt in (("orders", "csv"), ("users", "xlsx")):
        with pytest.raises(Refusal) as err:
            export.stream(memdb, what, fmt, out)
        assert err.value.code == "invalid_event"
    assert out.getvalue() == b""


def test_export_command_writes_a_file_or_stdout(sqlite_db: Database, tmp_path: Path,
                                                sqlite_url: str,
                                                capsysbinary: pytest.CaptureFixture[bytes]):
    busy_shop(sqlite_db)
    target = tmp_path / "entries.csv"
    assert main(["export", "--db", sqlite_url, "--what", "entries", "--format", "csv",
                 "--out", str(target)]) == 0
    assert read_back(target.read_bytes(), "csv") == exported(sqlite_db, "entries", "csv")
    capsysbinary.readouterr()
    assert main(["export", "--db", sqlite_url, "--what", "users", "--format", "jsonl"]) == 0
    out = capsysbinary.readouterr()
    assert read_back(out.out, "jsonl") == exported(sqlite_db, "users", "jsonl")
    assert b"exported 4 users rows" in out.err
    with pytest.raises(SystemExit):
        main(["export", "--db", sqlite_url, "--what", "secrets", "--format", "csv"])
    assert main(["export", "--db", sqlite_url, "--what", "users", "--format", "csv",
                 "--out", str(tmp_path / "no" / "such" / "dir.csv")]) == 2
