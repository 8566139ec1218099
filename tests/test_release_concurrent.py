"""Releases at once: two processes on PostgreSQL pay each entry once (one works, the other
skips and says who holds the lock); even with no lock at all the database pays each entry
once; the CLI's contract; and a release reads matured entries in keyset pages."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import event, func, select

from bot.cli import main
from engine import service
from engine.jobs import last_run, run_release
from engine.verify import verify
from storage.db import Database
from storage.models import Entry, JournalTxn, Outbox, User
from tests.conftest import MakeDb
from tests.release_helpers import MATURED, ROOT, bulk_entries, cli, make_shop, paid_entries

AT = MATURED.isoformat()


def assert_paid_once(db: Database, entries: int) -> None:
    rows = paid_entries(db)
    assert [status for _s, _r, status in rows] == ["released"] * entries
    assert all(released == 10000 for _s, released, _st in rows)
    counted = db.read(lambda s: (
        s.execute(select(func.count()).where(JournalTxn.kind == "release")).scalar_one(),
        s.execute(select(func.count()).where(Outbox.kind == "release_paid")).scalar_one(),
        s.execute(select(func.sum(User.wallet))).scalar_one()))
    assert counted == (entries, entries, entries * 10000)
    assert verify(db).ok


@pytest.mark.slow  # two `storefront release` processes racing on PostgreSQL
def test_two_processes_releasing_at_once_on_postgres_pay_each_entry_once(
        pg_db: Database, pg_url: str) -> None:
    entries = 120
    make_shop(pg_db, entries=entries, users=6)
    # The first process is frozen (SIGSTOP) right after its first page, lock held, while the
    # second runs from start to end: the overlap is certain, not a race of start-up times.
    # (Its second page pauses 3 s, so it cannot finish between our reading and freezing it.)
    args = [sys.executable, "-m", "bot.cli", "release", "--db", pg_url, "--at", AT,
            "--batch", "10"]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True,
                             env={**_env(), "STOREFRONT_FAULT": "release.after_page:2:sleep3"})
    assert first.stderr is not None
    before: list[str] = []
    while not before or not before[-1].startswith("released 10 entries"):  # page 1 is paid
        line = first.stderr.readline()
        assert line, "the first release ended before its first page: " + "".join(before)
        before.append(line)
    first_line = "".join(before)
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True,
                                timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    procs = [first, second]
    outs = [(out, first_line + err), (second.stdout, second.stderr)]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 75], outs
    results = {p.returncode: json.loads(out) for p, (out, _err) in zip(procs, outs, strict=True)}
    worker, skipper = results[0], results[75]
    assert worker["paid"] == entries and worker["amount"] == "12000.00"
    assert skipper["skipped"] is True and skipper["holder"] == worker["holder"]
    skipped_err = outs[[p.returncode for p in procs].index(75)][1]
    assert "another release is running" in skipped_err and worker["holder"] in skipped_err
    assert_paid_once(pg_db, entries)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items()
            if k not in ("STOREFRONT_FAULT", "REDIS_URL", "DATABASE_URL")}


def test_even_without_the_lock_postgres_pays_each_entry_once(pg_db: Database) -> None:
    """The lock saves work; correctness rests on row locks and per-entry keys."""
    entries = 80
    make_shop(pg_db, entries=entries, users=5)
    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(3)

    def release() -> None:
        barrier.wait()
        results.append(service.release(pg_db, at=MATURED, batch=7))

    threads = [threading.Thread(target=release) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(r["paid"] for r in results) == entries
    assert_paid_once(pg_db, entries)


def test_release_cli_settles_first_then_pays_and_records_the_run(sqlite_db: Database,
                                                                 sqlite_url: str) -> None:
    make_shop(sqlite_db, entries=4, late=2, settle_days=3)
    assert sqlite_db.read(lambda s: s.execute(select(func.count(Entry.seq))).scalar_one()) == 0
    run = cli("release", "--db", sqlite_url, "--at", AT)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert (out["settled"], out["paid"], out["amount"], out["blocked"]) == \
        (6, 4, "400.00", False)
    assert "settled 6 orders, paid 4 entries, 400.00" in run.stderr
    assert [st for _s, _r, st in paid_entries(sqlite_db)] == ["released"] * 4 + ["waiting"] * 2
    assert last_run(sqlite_db) == MATURED


def test_release_cli_refuses_bad_input_politely(sqlite_url: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in [
        (["--at", "tomorrow"], "--at must be an ISO 8601 time with an offset"),
        (["--at", "2026-08-16T00:05:00"], "--at must be an ISO 8601 time with an offset"),
        (["--batch", "0"], "--batch must be between 1 and 10000"),
    ]:
        assert main(["release", "--db", sqlite_url, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_release_stops_at_the_first_entry_the_pool_cannot_pay(memdb: Database) -> None:
    make_shop(memdb, entries=5, pool="250.00")
    result = run_release(memdb, at=MATURED, batch=2)
    assert (result["paid"], result["amount"], result["blocked"]) == (2, 20000, True)
    assert [st for _s, _r, st in paid_entries(memdb)] == ["released"] * 2 + ["waiting"] * 3


def test_release_reads_matured_entries_in_keyset_pages(sqlite_db: Database) -> None:
    """Never `SELECT` all matured entries: every read of `entries` is one bounded page that
    starts after the last `seq` paid, so memory stays flat however many are due."""
    make_shop(sqlite_db, entries=95, users=7)
    reads: list[tuple[str, Any]] = []

    @event.listens_for(sqlite_db.engine, "before_cursor_execute")
    def spy(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM entries" in statement:
            reads.append((statement, params))

    try:
        result = run_release(sqlite_db, at=MATURED, batch=20)
    finally:
        event.remove(sqlite_db.engine, "before_cursor_execute", spy)
    assert result["paid"] == 95
    pages = [(s, p) for s, p in reads if "seq > ?" in s]
    assert len(pages) == 5 and len(pages) == len(reads)
    assert all("LIMIT ?" in s for s, _p in pages)
    assert [p[0] for _s, p in pages] == [0, 20, 40, 60, 80]  # keyset: after the last seq
    assert all(p[-1] == 20 for _s, p in pages)  # the page size


def test_release_holds_one_page_at_a_time_however_many_entries_are_due(make_db: MakeDb) -> None:
    """What a release holds does not grow with the entries due: 8× the entries is 8× the
    pages, each read one page (LIMIT 50) and committed before the next is read. (Its peak
    memory is measured, not asserted here: `make bench`, the release row, docs/perf.md.)"""
    shapes = []
    for n in (60, 480):
        db = make_db("sqlite")
        bulk_entries(db, n)
        log: list[str] = []

        def spy(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT") and "FROM entries" in statement:
                log.append(f"read {params[-1]}")  # noqa: B023 - called within this iteration

        event.listen(db.engine, "before_cursor_execute", spy)
        event.listen(db.engine, "commit", lambda _conn: log.append("commit"))  # noqa: B023
        assert run_release(db, at=MATURED, batch=50)["paid"] == n
        pages = [x for x in log if x.startswith("read")]
        assert pages == ["read 50"] * -(-n // 50), (n, log)  # ceil(n / 50) pages of 50
        # a commit between each read and the next: no page is held past the next read
        reads_at = [i for i, x in enumerate(log) if x.startswith("read")]
        assert all("commit" in log[a:b] for a, b in pairwise(reads_at)), log
        shapes.append(len(pages))
    assert shapes == [2, 10]
