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
- **The channels' chores** (`Chore`): WeChat Pay's refund sweep (every minute) and pruning
  WeChat's seen messages and nonces (hourly), each first at the start; the bot hands them
  over when it builds the scheduler.
- **Delivery**: every couple of seconds, make sure a delivery loop is draining the outbox
  (engine/outbox.py) through the users' channels, at the channels' rates: the scheduler is
  given its senders (scheduler/delivery.py says what a sender is; bot/senders.py has them)
  and the message catalogue (`renderer`); it imports neither `bot` nor `handlers`.

`clock` (aware datetimes) drives every time these jobs use, and the triggers' start times,
so tests can run the real APScheduler on a controlled clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from engine import checkout, outbox, users
from engine.jobs import RELEASE, last_run, run_release, store_timezone
from engine.money import format_fen, format_micro, parse_rate
from engine.queue import RELEASE_PAGE
from engine.report import write_pool_warnings
from storage import faults
from storage.db import Database

from . import receive
from .delivery import (
    ANY_CHANNEL,
    ButtonMaker,
    ButtonRows,
    Rejected,
    Renderer,
    RetryLater,
    Sender,
    Unreachable,
)

log = logging.getLogger(__name__)

MISFIRE_GRACE = timedelta(hours=12)
DELIVERY_INTERVAL = 2.0
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


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


# -- notifications --------------------------------------------------------------------------

_TITLES = {
    "release_paid": ("返现已到账", "Cashback released"),
    "acceleration": ("推荐加速已到账", "Referral acceleration received"),
    "order_settled": ("订单已结算", "Order settled"),
    "order_refunded": ("订单已退款", "Order refunded"),
    "forced_exit": ("积分已强制出局", "Points forced out"),
    "points_received": ("收到积分", "Points received"),
    "withdrawal_approved": ("提现已批准", "Withdrawal approved"),
    "withdrawal_rejected": ("提现被拒绝，金额已退回钱包", "Withdrawal rejected; back in your wallet"),
    "pool_warning": ("资金池提醒", "Pool warning"),
}
_FEN = {"amount", "paid", "cash", "fee", "total", "points_value"}
_MICRO = {"points", "minted"}


def plain_render(kind: str, params: Mapping[str, Any], lang: str) -> str:
    """A plain rendering, for a deliverer not given the message catalogue (`storefront run`
    and `storefront outbox` give it handlers/notify.py's `render`)."""
    if kind == "broadcast" and isinstance(params.get("text"), str):
        return params["text"]
    zh, en = _TITLES.get(kind, ("通知", "Notice"))
    parts = []
    for key in sorted(params):
        value = params[key]
        if isinstance(value, int) and not isinstance(value, bool):
            value = format_fen(value) if key in _FEN else (
                format_micro(value) if key in _MICRO else value)
        parts.append(f"{key}: {value}")
    title = zh if (lang or "zh").startswith("zh") else en
    return title + ("\n" + "\n".join(parts) if parts else "")


class Deliverer:
    """Drains the outbox through the senders (keyed by the identity prefix they serve; one
    under `ANY_CHANNEL` serves every other prefix): claims a batch (one row per user, none for a
    user who had a message in the last `per_user` seconds), sends them concurrently and
    records each outcome. `kick()` starts a drain unless one is running."""

    def __init__(self, db: Database, senders: Mapping[str, Sender], *, clock: Clock = utc_now,
                 batch: int = 30, per_user: float = 1.0,
                 renderer: Renderer = plain_render, buttons: ButtonMaker | None = None) -> None:
        self.db = db
        self.buttons = buttons
        self.senders = dict(senders)
        self.clock = clock
        self.batch = batch
        self.per_user = per_user
        self.renderer = renderer
        self.totals: Counter[str] = Counter()
        self.currency: str | None = None  # the store's, read at each drain for the texts
        self._recent: dict[int, float] = {}
        self._task: asyncio.Task[Counter[str]] | None = None
        self._stopping = False

    async def tick(self) -> None:
        """The interval job: never blocks, never overlaps a drain already running."""
        self.kick()

    def kick(self) -> asyncio.Task[Counter[str]]:
        if (self._task is None or self._task.done()) and not self._stopping:
            self._task = asyncio.get_running_loop().create_task(self._drain_logged())
        assert self._task is not None
        return self._task

    async def _drain_logged(self) -> Counter[str]:
        try:
            return await self.drain()
        except Exception:  # noqa: BLE001 - the next tick tries again; rows are safe in the db
            log.exception("outbox delivery stopped by an error; retrying at the next tick")
            return Counter()

    async def stop(self) -> None:
        """Stop claiming; let the sends in flight finish and be recorded."""
        self._stopping = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def drain(self) -> Counter[str]:
        """Deliver until nothing is due (or `stop()`); returns outcome counts."""
        stats: Counter[str] = Counter()
        stale = await asyncio.to_thread(self._prepare, self.clock())
        if stale:
            log.warning("outbox: %d notifications were left mid-send by a stopped process; "
                        "marked interrupted, not resent (storefront outbox shows them)", stale)
            stats["interrupted"] += stale
        while not self._stopping:
            batch = await asyncio.to_thread(outbox.claim, self.db, now=self.clock(),
                                            limit=self.batch, busy=self._busy())
            if not batch.claims:
                if not batch.deferred:
                    break
                await asyncio.sleep(self._next_free_in())
                continue
            faults.point("outbox.claimed")
            for result in await asyncio.gather(*(self._deliver(c) for c in batch.claims)):
                stats[result] += 1
        self.totals.update(stats)
        return stats

    def _prepare(self, now: datetime) -> int:
        """Before a drain, in one worker-thread hop: the store's currency for the texts, and
        the rows a stopped process left mid-send."""
        try:
            self.currency = self.db.read(users.store_config).currency
        except Exception:  # noqa: BLE001 - the texts fall back to the default currency
            log.warning("outbox: cannot read the store currency", exc_info=True)
        return outbox.recover_stale(self.db, now=now)

    def _busy(self) -> set[int]:
        cutoff = time.monotonic() - self.per_user
        self._recent = {u: t for u, t in self._recent.items() if t > cutoff}
        return set(self._recent)

    def _next_free_in(self) -> float:
        if not self._recent:
            return 0.05
        return max(0.02, min(self._recent.values()) + self.per_user - time.monotonic())

    async def _deliver(self, c: outbox.Claim) -> str:
        try:
            params = c.params
            if self.currency and "currency" not in params:  # every amount names its currency
                params = {**params, "currency": self.currency}
            text = self.renderer(c.kind, params, c.lang)
            rows: ButtonRows = self.buttons(c.kind, params, c.lang) if self.buttons else ()
        except Exception as exc:  # noqa: BLE001 - a template bug must not stop delivery
            log.exception("outbox %d: cannot render %s", c.id, c.kind)
            return await self._record(outbox.mark_failed, c, error=f"render: {exc}")
        if c.user_id is not None:
            self._recent[c.user_id] = time.monotonic()
        if c.identities and not await asyncio.to_thread(outbox.mark_sending, self.db, c):
            log.warning("outbox %d: taken back before it was sent", c.id)
            return "lost"
        faults.point("outbox.marked_sending")
        unreachable: list[str] = []
        unserved: list[str] = []
        for identity in c.identities:
            sender = self.senders.get(identity.partition(":")[0]) or \
                self.senders.get(ANY_CHANNEL)
            if sender is None:
                unserved.append(identity.partition(":")[0])
                continue
            try:
                if rows and hasattr(sender, "send_buttons"):
                    await sender.send_buttons(identity, text, rows)
                else:
                    await sender.send(identity, text)
            except Unreachable as exc:
                unreachable.append(str(exc))
                continue
            except RetryLater as exc:
                return await self._record(outbox.mark_retry, c, error=str(exc),
                                          after=timedelta(seconds=exc.seconds))
            except Rejected as exc:
                return await self._record(outbox.mark_failed, c, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - transient: network, server errors
                log.warning("outbox %d: %s to %s failed: %s", c.id, c.kind, identity, exc)
                return await self._record(outbox.mark_retry, c,
                                          error=f"{type(exc).__name__}: {exc}")
            faults.point("outbox.after_send")
            return await self._record(outbox.mark_sent, c)
        if unserved:  # another process (or a later configuration) may serve that channel
            why = "; ".join([*unreachable, f"no sender here for {', '.join(unserved)}"])
            return await self._record(outbox.mark_retry, c, error=why)
        why = "; ".join(unreachable) or "the user has no chat identity"
        return await self._record(outbox.mark_unreachable, c, error=why)

    async def _record(self, mark: Callable[..., Any], c: outbox.Claim, **kwargs: Any) -> str:
        """Write the outcome; returns what became of the row (for counts and logs)."""
        outcome = await asyncio.to_thread(mark, self.db, c, now=self.clock(), **kwargs)
        if outcome is False:
            log.warning("outbox %d: changed by someone else before its outcome was recorded",
                        c.id)
            return "lost"
        if mark is outbox.mark_retry:
            return "retry" if outcome == outbox.PENDING else str(outcome)
        return {outbox.mark_sent: outbox.SENT, outbox.mark_failed: outbox.FAILED,
                outbox.mark_unreachable: outbox.UNREACHABLE}[mark]


# -- the scheduler --------------------------------------------------------------------------

class StoreScheduler(AsyncIOScheduler):
    """An AsyncIOScheduler that knows its jobs, so it can stop delivery gracefully."""

    releaser: ReleaseJob
    deliverer: Deliverer

    async def stop(self) -> None:
        """Stop delivering (sends in flight finish and are recorded), ask a running release
        to stop after its current page, then shut down."""
        if self.running:
            self.pause()
        await asyncio.gather(self.releaser.stop(), self.deliverer.stop())
        if self.running:
            self.shutdown(wait=False)


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
    interval after the start; `chores` are the channels' own periodic jobs (WeChat Pay's
    refund sweep, WeChat's seen-message pruning)."""
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
    start = now()
    # On start, and hourly after: a slot missed while the process was down, a late wake-up
    # beyond the grace time, or a run that failed is made up for (a cheap read otherwise).
    scheduler.add_job(scheduler.releaser.catch_up,
                      IntervalTrigger(hours=1, start_date=start, timezone=tz),
                      id="release-catch-up", name="release catch-up", coalesce=True,
                      misfire_grace_time=grace, max_instances=1, next_run_time=start,
                      replace_existing=True)
    scheduler.add_job(scheduler.deliverer.tick,
                      IntervalTrigger(seconds=delivery_interval, start_date=start, timezone=tz),
                      id="outbox-delivery", name="outbox delivery", coalesce=True,
                      misfire_grace_time=max(1, int(delivery_interval * 5)), max_instances=1,
                      next_run_time=start, replace_existing=True)
    # Pool warnings to operators (engine/report.py, issue 6): hourly, in a worker thread; at
    # most one outbox row per condition, operator and store-local day.
    scheduler.add_job(pool_warnings,
                      IntervalTrigger(hours=1, start_date=start, timezone=tz),
                      args=(db, now, settings), id="pool-warnings", name="pool warnings",
                      coalesce=True, misfire_grace_time=grace, max_instances=1,
                      replace_existing=True)
    receive.add_job(scheduler, db, now, settings, start=start, grace=grace)  # docs/delivery.md
    if checkout_sweep:
        scheduler.add_job(sweep_checkouts,
                          IntervalTrigger(seconds=checkout_sweep, start_date=start, timezone=tz),
                          args=(db,), id="checkout-sweep", name="expired checkouts",
                          coalesce=True, misfire_grace_time=max(1, int(checkout_sweep)),
                          max_instances=1, replace_existing=True)
    for chore in chores:
        first = {"next_run_time": start} if chore.at_start else {}
        scheduler.add_job(run_chore,
                          IntervalTrigger(seconds=chore.every, start_date=start, timezone=tz),
                          args=(chore,), id=chore.name, name=chore.name, coalesce=True,
                          misfire_grace_time=max(1, int(chore.every)), max_instances=1,
                          replace_existing=True, **first)
    return scheduler
