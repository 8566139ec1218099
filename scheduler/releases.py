"""Releases (SPEC §3, §8): at each store-local time in `STOREFRONT_RELEASE_TIMES`, and as a
catch-up when the latest scheduled time passed without a release (`ReleaseJob`); each run
is `engine.jobs.run_release` in a worker thread, stopped after a committed page on shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from engine.jobs import RELEASE, last_run, run_release
from engine.queue import RELEASE_PAGE
from storage.db import Database

from .clock import Clock

log = logging.getLogger("scheduler")


def parse_release_times(text: str) -> list[tuple[int, int]]:
    """`"00:05"` or `"00:05,12:30"` → [(0, 5), (12, 30)]; a clear ValueError otherwise."""
    times: set[tuple[int, int]] = set()
    for part in (p.strip() for p in text.split(",")):
        hh, sep, mm = part.partition(":")
        if (not sep or not hh.isdigit() or not mm.isdigit() or len(mm) != 2
                or not 0 <= int(hh) <= 23 or not 0 <= int(mm) <= 59):
            raise ValueError(f"STOREFRONT_RELEASE_TIMES: {part!r} is not a time like 00:05")
        times.add((int(hh), int(mm)))
    return sorted(times)


def latest_slot(triggers: list[CronTrigger], now: datetime) -> datetime | None:
    """The most recent scheduled release time at or before `now` (within two days)."""
    latest: datetime | None = None
    for trigger in triggers:
        fire = trigger.get_next_fire_time(None, now - timedelta(days=2))
        while fire is not None and fire <= now:
            latest = fire if latest is None or fire > latest else latest
            fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return latest


class ReleaseStopped(RuntimeError):
    """The scheduler is shutting down; the release stopped after a committed page."""


class ReleaseJob:
    """The scheduled release and the catch-up; each runs `run_release` in a worker thread."""

    def __init__(self, db: Database, *, clock: Clock, triggers: list[CronTrigger],
                 redis_url: str | None = None) -> None:
        self.db = db
        self.clock = clock
        self.triggers = triggers
        self.redis_url = redis_url
        self.results: list[dict[str, Any]] = []  # the last few, for logs and tests
        self.stopping = threading.Event()  # set on shutdown: stop after the current page
        self.batch = RELEASE_PAGE
        self.checks = 0  # catch-up checks finished (for logs and tests)
        self._running: set[asyncio.Future[dict[str, Any]]] = set()

    async def stop(self) -> None:
        """Ask a running release to stop after its current page, and wait for it to."""
        self.stopping.set()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def scheduled(self) -> dict[str, Any]:
        return await self._run("scheduled")

    async def catch_up(self) -> dict[str, Any] | None:
        """Run now if the latest scheduled time passed without a release as of it."""
        try:
            now = self.clock()
            slot = latest_slot(self.triggers, now)
            last = await asyncio.to_thread(last_run, self.db, RELEASE)
            if slot is None or (last is not None and last >= slot):
                log.debug("release catch-up: nothing missed (last release as of %s)", last)
                return None
            log.warning("release catch-up: last release as of %s, scheduled %s was missed",
                        last, slot)
            return await self._run("catch-up")
        finally:
            self.checks += 1

    async def _run(self, why: str) -> dict[str, Any]:
        at = self.clock()

        def between_pages(paid: int, amount: int) -> None:
            if self.stopping.is_set():
                raise ReleaseStopped(f"stopped for shutdown after {paid} entries")

        work = asyncio.ensure_future(asyncio.to_thread(
            run_release, self.db, at=at, progress=between_pages, redis_url=self.redis_url,
            actor=why, batch=self.batch))
        self._running.add(work)
        try:
            result = await work
        except ReleaseStopped as exc:
            log.warning("%s release as of %s %s; the next run finishes it", why,
                        at.isoformat(), exc)
            result = {"skipped": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - logged here; the next run finishes the work
            log.exception("%s release as of %s failed; the next run finishes it", why,
                          at.isoformat())
            result = {"skipped": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            self._running.discard(work)
        if result.get("skipped"):
            log.info("%s release skipped: another process (%s) is releasing", why,
                     result["holder"])
        self.results = [*self.results[-9:], {"why": why, **result}]
        return result
