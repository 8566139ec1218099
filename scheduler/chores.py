"""The periodic jobs beside releases and delivery: pool warnings to operators, the sweep of
expired checkouts, and the channels' own `Chore`s (Telegram's charge spool replay, WeChat
Pay's refund sweep, WeChat's seen-message pruning) that the bot hands over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from engine import checkout
from engine.money import parse_rate
from engine.report import write_pool_warnings
from storage.db import Database

from .clock import Clock

log = logging.getLogger("scheduler")


def pool_warnings(db: Database, clock: Clock, settings: Any) -> int:
    """The hourly job: `engine.report.write_pool_warnings` with the operators and thresholds
    of `settings` (`operator_ids()`, `coverage_warning` as a decimal string,
    `matured_wait_warning_days`). Settings without operators warn nobody."""
    operators = getattr(settings, "operator_ids", None)
    identities = frozenset(operators()) if callable(operators) else frozenset()
    if not identities:
        return 0
    threshold = parse_rate(str(getattr(settings, "coverage_warning", "0.50")))
    days = int(getattr(settings, "matured_wait_warning_days", 7))
    return write_pool_warnings(db, clock(), identities, threshold, days)


@dataclass(frozen=True)
class Chore:
    """A periodic job a channel hands the scheduler (bot/app.py collects them): `run()` every
    `every` seconds, the first time at the start when `at_start`. A failure is logged and the
    next run tries again."""

    name: str
    every: float
    run: Callable[[], Awaitable[Any]]
    at_start: bool = True


async def run_chore(chore: Chore) -> None:
    try:
        await chore.run()
    except Exception:  # noqa: BLE001 - a background chore must not die
        log.exception("background job %s failed", chore.name)


async def sweep_checkouts(db: Database) -> int:
    """Cancel unpaid orders whose checkout expired (`engine.checkout.expire_due`): the points
    they spent go back to the buyer's wallet as their value. A failure is logged; the next
    run tries again."""
    try:
        n = await asyncio.to_thread(checkout.expire_due, db)
    except Exception:  # noqa: BLE001 - try again next time
        log.exception("checkout sweep failed")
        return 0
    if n:
        log.info("cancelled %d unpaid orders whose checkout expired", n)
    return n
