"""`registry.expect_next` kept in the database (`engine.pending`): two `storefront run`
processes on one database (two Apps, two `Database` handles) and a restart see the same wait;
it is taken once, forgotten by a command, and runs out after `pending.TTL`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from engine import pending
from storage.db import Database
from storage.models import PendingInput
from tests.conftest import MakeDb
from tests.handlers_kit import OPERATOR, Chat, text

BUYER = "wx:buyer1"
T0 = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)


def _waits(db: Database) -> int:
    return db.read(lambda s: s.execute(select(func.count()).select_from(PendingInput))
                   .scalar_one())


async def _two_processes(db: Database, db_url: str, make_db: MakeDb) -> tuple[Chat, Chat]:
    first = Chat(db, channel="wechat")
    second = Chat(make_db(db_url), channel="wechat")  # its own engine and pool, as a process
    for who in (OPERATOR, BUYER):
        await first.send(who, "/start")
    return first, second


async def test_the_wait_asked_in_one_process_is_answered_in_the_other(
        db_url: str, db: Database, make_db: MakeDb):
    first, second = await _two_processes(db, db_url, make_db)
    assert "write" in text(await first.send(BUYER, "/support")).lower()
    said = text(await second.send(BUYER, "my code does not work"))
    assert "conversation #1" in said
    assert len(first.outbox("support_message")) == 1
    assert _waits(db) == 0
    # taken once: the same process (or the other) reads the next message as plain text
    again = text(await first.send(BUYER, "hello again"))
    assert "conversation" not in again
    assert len(first.outbox("support_message")) == 1

    # an operator's Reply button in one process, the answer in the other
    await second.send(OPERATOR, callback="sup:v1:reply:1")
    done = text(await first.send(OPERATOR, "Sent again, sorry"))
    assert done == "Answer sent (conversation #1)."
    assert len(first.outbox("support_answer")) == 1


async def test_a_restart_keeps_the_wait(sqlite_url: str, make_db: MakeDb):
    before = make_db(sqlite_url)
    chat = Chat(before, channel="wechat")
    for who in (OPERATOR, BUYER):
        await chat.send(who, "/start")
    await chat.send(BUYER, "/support")
    before.dispose()  # the process ends
    after = Chat(make_db(sqlite_url), channel="wechat")  # a new process, a new App
    assert "conversation #1" in text(await after.send(BUYER, "still waiting for my order"))


async def test_a_command_in_the_other_process_forgets_the_wait(
        db_url: str, db: Database, make_db: MakeDb):
    first, second = await _two_processes(db, db_url, make_db)
    await first.send(BUYER, "/support")
    await second.send(BUYER, "/help")
    assert _waits(db) == 0
    await first.send(BUYER, "not for support")
    assert first.outbox("support_message") == []


def test_expect_and_take_at_the_engine(db: Database):
    pending.expect(db, "tg:7", "codes", ("TEA",), at=T0)
    pending.expect(db, "tg:7", "sup", ("answer", "3"), at=T0)  # replaces the first
    assert _waits(db) == 1
    assert pending.take(db, "tg:7", plain=True, at=T0 + timedelta(seconds=599)) == \
        ("sup", ("answer", "3"))
    assert pending.take(db, "tg:7", plain=True, at=T0) is None  # taken once
    assert pending.take(db, "tg:8", plain=True, at=T0) is None  # nobody waits

    pending.expect(db, "tg:7", "sup", ("write",), at=T0)
    assert pending.take(db, "tg:7", plain=False, at=T0) is None  # a command forgets it
    assert _waits(db) == 0

    pending.expect(db, "tg:7", "sup", ("write",), at=T0)
    assert pending.take(db, "tg:7", plain=True, at=T0 + pending.TTL) is None  # ran out
    assert _waits(db) == 0

    # waits nobody answered are cleared when the next one is asked
    pending.expect(db, "tg:1", "sup", ("write",), at=T0)
    pending.expect(db, "tg:2", "sup", ("write",), at=T0 + pending.TTL + timedelta(seconds=1))
    assert _waits(db) == 1


def test_two_processes_reading_one_wait_at_once_only_one_takes_it(
        db_url: str, db: Database, make_db: MakeDb):
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    other = make_db(db_url)
    for round_ in range(10):
        pending.expect(db, "tg:9", "sup", ("write", str(round_)), at=T0)
        start = Barrier(2)

        def take(handle: Database, start: Barrier = start) -> pending.Waiting | None:
            start.wait()
            return pending.take(handle, "tg:9", plain=True, at=T0)

        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(take, (db, other)))
        assert sorted(got, key=lambda g: g is None) == [("sup", ("write", str(round_))), None]
