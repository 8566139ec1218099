"""scheduler.py: the real APScheduler 3 jobs, run on a controlled clock.

The clock is a real-time clock started at a chosen instant (and able to jump); APScheduler's
own `datetime.now` is pointed at it, so its timers, misfire checks and coalescing behave as
they would on that day."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import apscheduler.executors.base
import apscheduler.schedulers.base
import pytest
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select, update

from bot.settings import Settings
from engine import service
from engine.jobs import RELEASE, last_run, record_run, run_release
from handlers.notify import render
from scheduler import (
    MISFIRE_GRACE,
    Deliverer,
    StoreScheduler,
    build_scheduler,
    latest_slot,
    parse_release_times,
)
from storage import faults
from storage.db import Database
from storage.migrate import migrate
from storage.models import Identity, Lease, Outbox, User
from tests.release_helpers import SHANGHAI, bulk_entries, make_shop, paid_entries

ENTRIES = 6


class FakeClock:
    """Real time, started at `start`; `jump` moves it forward at once."""

    def __init__(self, start: datetime) -> None:
        self.base, self.t0 = start, time.monotonic()

    def now(self) -> datetime:
        return self.base + timedelta(seconds=time.monotonic() - self.t0)

    def jump(self, delta: timedelta) -> None:
        self.base += delta


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(datetime(2000, 1, 1, tzinfo=SHANGHAI))

    class ClockedDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return fake.now().astimezone(tz)

    monkeypatch.setattr(apscheduler.schedulers.base, "datetime", ClockedDatetime)
    monkeypatch.setattr(apscheduler.executors.base, "datetime", ClockedDatetime)
    return fake


@pytest.fixture
def shop(sqlite_db: Database) -> Database:
    make_shop(sqlite_db, entries=ENTRIES, late=2, users=3)
    return sqlite_db


def settings(times: str = "00:05") -> Settings:
    return Settings.model_validate({"STOREFRONT_RELEASE_TIMES": times, "REDIS_URL": None})


def local(day: int, hh: int, mm: int, ss: float = 0) -> datetime:
    return datetime(2026, 8, day, hh, mm, tzinfo=SHANGHAI) + timedelta(seconds=ss)


def scheduler_at(shop: Database, clock: FakeClock, now: datetime, *,
                 last_release: datetime | None = None) -> StoreScheduler:
    """The scheduler built at `now` by `clock`, the last release (if any) as of
    `last_release`."""
    if last_release is not None:
        record_run(shop, RELEASE, last_release, "test", {})
    clock.base = now
    return build_scheduler(settings(), shop, {}, clock=clock.now)


@asynccontextmanager
async def running(scheduler: StoreScheduler) -> AsyncIterator[None]:
    """The scheduler started in this event loop, and stopped however the block ends."""
    scheduler.start()
    try:
        yield
    finally:
        await scheduler.stop()


async def wait_until(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def released(db: Database) -> int:
    return sum(1 for _s, _r, status in paid_entries(db) if status == "released")


async def test_the_release_job_fires_at_the_configured_store_local_time(
        shop: Database, clock: FakeClock) -> None:
    # yesterday's run happened
    scheduler = scheduler_at(shop, clock, local(16, 0, 4, 59.6), last_release=local(15, 0, 5))
    async with running(scheduler):
        await wait_until(lambda: scheduler.releaser.results)
        [run] = scheduler.releaser.results
        at = datetime.fromisoformat(run["at"])
        # at its slot, not early; the upper bound only says "this slot, not a later one"
        assert run["why"] == "scheduled" and local(16, 0, 5) <= at < local(16, 0, 6)
        assert run["paid"] == ENTRIES  # the two entries maturing on the 17th wait
        assert released(shop) == ENTRIES
        job = scheduler.get_job("release@00:05")
        assert job.next_run_time == local(17, 0, 5)
        assert last_run(shop) == at


async def test_a_late_wakeup_runs_once_coalesced_within_the_grace_time(
        shop: Database, clock: FakeClock) -> None:
    scheduler = scheduler_at(shop, clock, local(14, 12, 0), last_release=local(14, 0, 5))
    job = scheduler.get_job("release@00:05")
    assert job.coalesce is True and job.misfire_grace_time == 12 * 3600 == \
        MISFIRE_GRACE.total_seconds() and job.max_instances == 1
    scheduler.remove_job("release-catch-up")  # this test is about the cron job alone
    async with running(scheduler):
        await asyncio.sleep(0.1)
        clock.jump(timedelta(days=1, hours=15))  # the event loop slept through two slots
        scheduler.wakeup()
        await wait_until(lambda: scheduler.releaser.results)
        await asyncio.sleep(0.3)
        [run] = scheduler.releaser.results  # once, not once per missed slot
        assert run["why"] == "scheduled" and run["paid"] == ENTRIES
        assert scheduler.get_job("release@00:05").next_run_time == local(17, 0, 5)


async def test_a_slot_missed_beyond_the_grace_time_is_made_up_by_the_catch_up(
        shop: Database, clock: FakeClock) -> None:
    scheduler = scheduler_at(shop, clock, local(15, 12, 0), last_release=local(15, 0, 5))
    async with running(scheduler):
        await wait_until(lambda: scheduler.releaser.checks >= 1)  # the start-up check is over
        assert scheduler.releaser.results == []  # nothing missed at start
        clock.jump(timedelta(hours=25))  # 16th, 13:00: the 00:05 run is 13 h late
        scheduler.wakeup()
        await wait_until(lambda: scheduler.releaser.results)
        await asyncio.sleep(0.3)
        [run] = scheduler.releaser.results
        assert run["why"] == "catch-up" and run["paid"] == ENTRIES


async def test_catch_up_on_start_when_the_last_release_is_older_than_the_latest_slot(
        shop: Database, clock: FakeClock) -> None:
    # never released; today's 00:05 slot has passed
    scheduler = scheduler_at(shop, clock, local(16, 10, 0))
    async with running(scheduler):
        await wait_until(lambda: scheduler.releaser.results)
        [run] = scheduler.releaser.results
        assert run["why"] == "catch-up" and run["paid"] == ENTRIES
        assert local(16, 10, 0) <= datetime.fromisoformat(run["at"]) < local(16, 10, 1)


async def test_no_catch_up_when_the_last_release_covers_the_latest_slot(
        shop: Database, clock: FakeClock) -> None:
    scheduler = scheduler_at(shop, clock, local(16, 10, 0), last_release=local(16, 0, 5))
    async with running(scheduler):
        await wait_until(lambda: scheduler.releaser.checks >= 1)  # the start-up check is over
        assert scheduler.releaser.results == [] and released(shop) == 0


class Recorder:
    channel = "tg"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float]] = []

    async def send(self, identity: str, text: str) -> None:
        self.sent.append((identity, text, time.monotonic()))


async def test_the_delivery_job_sends_what_the_release_wrote(
        shop: Database, clock: FakeClock) -> None:
    def link(session: Any) -> None:
        for user in session.execute(select(User)).scalars():
            session.add(Identity(identity=f"tg:{100 + user.id}", user_id=user.id,
                                 created_at=local(1, 9, 0)))

    shop.run(link)
    record_run(shop, RELEASE, local(15, 0, 5), "test", {})
    # Only the release's own notifications matter here.
    shop.run(lambda s: s.execute(update(Outbox).values(status="sent")))
    clock.base = local(16, 0, 4, 59.5)
    sender = Recorder()
    scheduler = build_scheduler(settings(), shop, {"tg": sender}, clock=clock.now,
                                delivery_interval=0.5, renderer=render)
    stamps: dict[str, list[float]] = {}  # when the deliverer let each user's message go

    async def send_stamped(identity: str, text: str) -> None:
        user_id = int(identity.partition(":")[2]) - 100
        stamps.setdefault(identity, []).append(scheduler.deliverer._recent[user_id])
        sender.sent.append((identity, text, 0.0))

    sender.send = send_stamped  # type: ignore[method-assign]
    async with running(scheduler):
        await wait_until(lambda: len(sender.sent) == ENTRIES)
        rows = shop.read(lambda s: s.execute(select(Outbox.kind, Outbox.params, Outbox.lang)
                                             .where(Outbox.kind == "release_paid")).all())
        expected = sorted(render(k, json.loads(p), lang) for k, p, lang in rows)
        assert len(expected) == ENTRIES
        assert sorted(text for _i, text, _t in sender.sent) == expected
        # one message a second per user at most, on the deliverer's own stamps (a send's
        # own moment also carries the event loop's delays, which a loaded machine varies)
        assert len(stamps) == 3
        for times in stamps.values():
            assert all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False)), times
    assert scheduler.deliverer.totals["sent"] == ENTRIES


async def test_stop_lets_sends_in_flight_finish(shop: Database) -> None:
    class Slow(Recorder):
        """Sends that are all in flight, unfinished, when `stop` is called."""

        def __init__(self) -> None:
            super().__init__()
            self.started: list[str] = []
            self.go = asyncio.Event()

        async def send(self, identity: str, text: str) -> None:
            self.started.append(identity)
            await self.go.wait()
            await super().send(identity, text)

    def link(session: Any) -> None:
        for user in session.execute(select(User)).scalars():
            session.add(Identity(identity=f"tg:{user.id}", user_id=user.id,
                                 created_at=local(1, 9, 0)))

    shop.run(link)
    sender = Slow()
    deliverer = Deliverer(shop, {"tg": sender})
    deliverer.kick()
    await wait_until(lambda: len(sender.started) == 3)  # the first batch is in flight
    stopping = asyncio.ensure_future(deliverer.stop())
    await asyncio.sleep(0)  # stop() has begun: nothing more will be claimed
    sender.go.set()
    await stopping
    assert len(sender.sent) == 3  # the first batch, one per user, all recorded
    assert deliverer.totals["sent"] == 3


async def test_stopping_the_scheduler_stops_a_release_after_its_current_page(
        sqlite_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(sqlite_url)
    migrate(db)
    bulk_entries(db, 200)
    clock.base = local(16, 10, 0)  # never released: the catch-up starts one at once
    scheduler = build_scheduler(settings(), db, {}, clock=clock.now)
    scheduler.releaser.batch = 20
    # After its second page the release waits until the shutdown has been asked for, so the
    # stop lands between pages 2 and 3 whatever the machine's load.
    real, pages = faults.point, [0]

    def point(name: str) -> None:
        if name == "release.after_page":
            pages[0] += 1
            if pages[0] == 2:
                assert scheduler.releaser.stopping.wait(120), "the stop never came"
        real(name)

    monkeypatch.setattr(faults, "point", point)
    scheduler.start()
    await wait_until(lambda: pages[0] == 2)
    await scheduler.stop()
    [run] = scheduler.releaser.results
    assert run["error"].startswith("stopped for shutdown after")
    done = released(db)
    assert done == 40  # whole pages only: the two committed before the stop
    assert db.read(lambda s: s.get(Lease, "release")) is None and last_run(db) is None
    assert run_release(db, at=local(16, 10, 1))["paid"] == 200 - done
    db.dispose()


def test_release_times_are_parsed_strictly() -> None:
    assert parse_release_times("00:05") == [(0, 5)]
    assert parse_release_times("12:30, 00:05,00:05") == [(0, 5), (12, 30)]
    for bad in ("", "24:00", "7", "00:5", "aa:bb", "00:05;12:00", "-1:00"):
        with pytest.raises(ValueError, match="STOREFRONT_RELEASE_TIMES"):
            parse_release_times(bad)


def test_bad_release_times_stop_the_scheduler_from_being_built(memdb: Database) -> None:
    with pytest.raises(ValueError, match="not a time like 00:05"):
        build_scheduler(settings("midnight"), memdb, {})


def test_latest_slot_is_the_most_recent_scheduled_time() -> None:
    triggers = [CronTrigger(hour=h, minute=m, timezone=SHANGHAI) for h, m in [(0, 5), (12, 30)]]
    assert latest_slot(triggers, local(16, 12, 0)) == local(16, 0, 5)
    assert latest_slot(triggers, local(16, 12, 30)) == local(16, 12, 30)
    assert latest_slot(triggers, local(16, 0, 4)) == local(15, 12, 30)


def test_jobs_run_in_the_stores_timezone(memdb: Database) -> None:
    service.configure(memdb, {"store": {"timezone": "Europe/Berlin"}})
    scheduler = build_scheduler(settings("00:05,13:00"), memdb, {})
    ids = {job.id for job in scheduler.get_jobs()}
    assert {"outbox-delivery", "release-catch-up", "release@00:05", "release@13:00"} <= ids
    assert not any(i.startswith("release@") for i in ids - {"release@00:05", "release@13:00"})
    trigger = scheduler.get_job("release@13:00").trigger
    assert trigger.timezone == ZoneInfo("Europe/Berlin")
    assert str(trigger) == "cron[hour='13', minute='0']"
