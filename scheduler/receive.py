"""Auto-receive (SPEC §9, docs/delivery.md): a shipped order its buyer has not confirmed
within `STOREFRONT_AUTO_RECEIVE_DAYS` (default 10) days of shipping, and that no operator
holds (`/hold ORDER`: the buyer complained), counts as received — under
`store.settle_from = receipt` its return window starts then. Hourly, in a worker thread;
each order is its own transaction (`engine.delivery.auto_receive_due`), the buyer told
through the outbox in it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.interval import IntervalTrigger

from engine import delivery
from storage.db import Database

log = logging.getLogger(__name__)

DEFAULT_DAYS = 10
EVERY = timedelta(hours=1)


def days_of(settings: Any) -> int:
    """`settings.auto_receive_days` (STOREFRONT_AUTO_RECEIVE_DAYS), else 10."""
    days = getattr(settings, "auto_receive_days", DEFAULT_DAYS)
    return days if isinstance(days, int) and days >= 0 else DEFAULT_DAYS


async def auto_receive(db: Database, clock: Callable[[], datetime], days: int) -> list[str]:
    """One run: every order due received; a failure is logged and the next run retries."""
    try:
        done = await asyncio.to_thread(delivery.auto_receive_due, db, at=clock(), days=days)
    except Exception:  # noqa: BLE001 - the next run tries again
        log.exception("auto-receive failed")
        return []
    if done:
        log.info("auto-received %d shipped orders after %d days: %s", len(done), days,
                 ", ".join(done[:20]))
    return done


def add_job(scheduler: BaseScheduler, db: Database, clock: Callable[[], datetime],
            settings: Any, *, start: datetime, grace: int, every: timedelta = EVERY) -> None:
    """Register the hourly auto-receive on `scheduler` (build_scheduler calls this)."""
    scheduler.add_job(auto_receive, IntervalTrigger(seconds=every.total_seconds(),
                                                    start_date=start,
                                                    timezone=scheduler.timezone),
                      args=(db, clock, days_of(settings)), id="auto-receive",
                      name="auto-receive shipped orders", coalesce=True,
                      misfire_grace_time=grace, max_instances=1, replace_existing=True)
