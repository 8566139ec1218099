"""The scheduler `storefront run` starts in the bot's event loop (APScheduler 3, asyncio).

- **Releases** (SPEC §3, §8): at each store-local time in `STOREFRONT_RELEASE_TIMES`
  (default `00:05`), settle what is due and pay matured entries (`engine.jobs.run_release`,
  in a worker thread). Coalesced, with a misfire grace of hours: a late wake-up still runs
  once instead of being silently skipped. On start (and hourly), a catch-up run goes when
  the last recorded release is older than the latest scheduled time (the process was down,
  or a run failed).
  APScheduler runs these in every process that starts a scheduler; the release lock
  (storage/locks.py) lets one of them work and the others skip.
- **Expired checkouts** (`storefront run`): every minute, unpaid orders whose checkout
  expired are cancelled (`engine.checkout.expire_due`).
- **The channels' chores** (`Chore`): replaying Telegram's charge spool (every 5 s:
  charges the database could not record, bot/charge_spool.py), WeChat Pay's refund sweep
  (every minute) and pruning WeChat's seen messages and nonces (hourly), each first at the
  start; the bot hands them over when it builds the scheduler.
- **Delivery**: every couple of seconds, make sure a delivery loop is draining the outbox
  (engine/outbox.py) through the users' channels, at the channels' rates: the scheduler is
  given its senders (scheduler/delivery.py says what a sender is; bot/senders.py has them)
  and the message catalogue (`renderer`); it imports neither `bot` nor `handlers`.

`clock` (aware datetimes) drives every time these jobs use, and the triggers' start times,
so tests can run the real APScheduler on a controlled clock.

Modules: releases.py (`ReleaseJob`), delivery.py (the sender contract and the `Deliverer`),
chores.py (pool warnings, the checkout sweep, `Chore`), clock.py; this one builds the
scheduler. A module's periodic job is one line in `build_scheduler`:
`scheduler.every(seconds, job, *args, name=...)`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from engine.jobs import store_timezone
from storage.db import Database

from . import receive
from .chores import Chore, pool_warnings, run_chore, sweep_checkouts
from .clock import Clock, utc_now
from .delivery import ButtonMaker, Deliverer, Renderer, Sender, plain_render
from .releases import ReleaseJob, ReleaseStopped, latest_slot, parse_release_times

__all__ = ["MISFIRE_GRACE", "Chore", "Clock", "Deliverer", "ReleaseJob", "ReleaseStopped",
           "StoreScheduler", "build_scheduler", "latest_slot", "parse_release_times",
           "plain_render", "pool_warnings", "run_chore", "sweep_checkouts", "utc_now"]

log = logging.getLogger(__name__)

MISFIRE_GRACE = timedelta(hours=12)
DELIVERY_INTERVAL = 2.0


class StoreScheduler(AsyncIOScheduler):
    """An AsyncIOScheduler that knows its jobs, so it can stop delivery gracefully."""

    releaser: ReleaseJob
    deliverer: Deliverer
    zone: Any  # the store's timezone (triggers fire in store-local time)
    started_at: datetime  # by the scheduler's clock, when it was built

    def every(self, seconds: float, job: Callable[..., Any], *args: Any, name: str,
              job_id: str | None = None, at_start: bool = False,
              grace: float | None = None) -> None:
        """Run `job(*args)` every `seconds` (the first time at the start when `at_start`,
        else one interval after it): coalesced, one at a time, a late run still made within
        `grace` seconds (default: one interval). A module's periodic job is one line."""
        first = {"next_run_time": self.started_at} if at_start else {}
        self.add_job(job, IntervalTrigger(seconds=seconds, start_date=self.started_at,
                                          timezone=self.zone),
                     args=args, id=job_id or name, name=name, coalesce=True,
                     misfire_grace_time=max(1, int(grace or seconds)), max_instances=1,
                     replace_existing=True, **first)

    async def stop(self) -> None:
        """Stop delivering (sends in flight finish and are recorded), ask a running release
        to stop after its current page, then shut down."""
        if self.running:
            self.pause()
        await asyncio.gather(self.releaser.stop(), self.deliverer.stop())
        if self.running:
            self.shutdown(wait=False)


def build_scheduler(settings: Any, db: Database, senders: Mapping[str, Sender],
                    clock: Clock | None = None, *,
                    delivery_interval: float = DELIVERY_INTERVAL,
                    renderer: Renderer = plain_render,
                    buttons: ButtonMaker | None = None,
                    checkout_sweep: float | None = None,
                    chores: Sequence[Chore] = ()) -> StoreScheduler:
    """The release job(s), the start-up catch-up and the delivery job; call `.start()` in
    the running event loop, and `await .stop()` before the loop ends. The scheduler is given
    what it must not import: the channels' `senders` and the message catalogue
    (`renderer`, handlers/notify.py's `render` when the bot builds it; `buttons`, its
    `buttons`). With
    `checkout_sweep` (seconds) expired checkouts are swept that often, the first time one
    interval after the start; `chores` are the channels' own periodic jobs (Telegram's
    charge spool replay, WeChat Pay's refund sweep, WeChat's seen-message pruning)."""
    now = clock or utc_now
    tz = store_timezone(db)
    times = parse_release_times(settings.release_times)
    triggers = [CronTrigger(hour=h, minute=m, timezone=tz) for h, m in times]
    grace = int(MISFIRE_GRACE.total_seconds())
    scheduler = StoreScheduler(timezone=tz, job_defaults={
        "coalesce": True, "max_instances": 1, "misfire_grace_time": grace})
    scheduler.releaser = ReleaseJob(db, clock=now, triggers=triggers,
                                    redis_url=getattr(settings, "redis_url", None))
    scheduler.deliverer = Deliverer(db, senders, clock=now, renderer=renderer,
                                    buttons=buttons)
    for (h, m), trigger in zip(times, triggers, strict=True):
        scheduler.add_job(scheduler.releaser.scheduled, trigger, id=f"release@{h:02d}:{m:02d}",
                          name=f"release at {h:02d}:{m:02d} {tz.key}", coalesce=True,
                          misfire_grace_time=grace, max_instances=1, replace_existing=True)
    scheduler.zone, scheduler.started_at = tz, now()
    hour = 3600.0
    # On start, and hourly after: a slot missed while the process was down, a late wake-up
    # beyond the grace time, or a run that failed is made up for (a cheap read otherwise).
    scheduler.every(hour, scheduler.releaser.catch_up, name="release catch-up",
                    job_id="release-catch-up", at_start=True, grace=grace)
    scheduler.every(delivery_interval, scheduler.deliverer.tick, name="outbox delivery",
                    job_id="outbox-delivery", at_start=True, grace=delivery_interval * 5)
    # Pool warnings to operators (engine/report.py, issue 6): hourly, in a worker thread; at
    # most one outbox row per condition, operator and store-local day.
    scheduler.every(hour, pool_warnings, db, now, settings, name="pool warnings",
                    job_id="pool-warnings", grace=grace)
    receive.add_job(scheduler, db, now, settings, start=scheduler.started_at,
                    grace=grace)  # docs/delivery.md
    if checkout_sweep:
        scheduler.every(checkout_sweep, sweep_checkouts, db, name="expired checkouts",
                        job_id="checkout-sweep")
    for chore in chores:
        scheduler.every(chore.every, run_chore, chore, name=chore.name, at_start=chore.at_start)
    return scheduler
