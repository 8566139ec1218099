"""Delivery of the outbox: what the deliverer asks of a sender, what a sender's errors mean
for the outbox, and the `Deliverer` that drains it through the senders.

The scheduler is given its senders (`build_scheduler(settings, db, senders)`); the channels'
senders (bot/senders.py, bot/wechat/sender.py, the console's) implement this contract. A
`Sender` sends one plain text to one identity (`tg:<id>`, `wx:<openid>`) and either returns
(delivered) or raises one of:

- `Unreachable`: this identity cannot be reached (blocked the bot, unsubscribed, unknown
  chat); the deliverer tries the user's next identity, then marks the row `unreachable`;
- `RetryLater(seconds)`: the channel asked us to slow down (Telegram `RetryAfter`);
- `Rejected`: this message can never be sent as it is (a permanent error);
- anything else: a transient failure, retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from engine import outbox, users
from engine.money import format_fen, format_micro
from storage import faults
from storage.db import Database

from .clock import Clock, utc_now

log = logging.getLogger("scheduler")

# The key of a sender that serves every identity no other sender serves (the console, which
# prints every user's notifications into its chat).
ANY_CHANNEL = "*"

# kind, params, lang → the text a user reads (bot gives handlers.notify.render)
Renderer = Callable[[str, Mapping[str, Any], str], str]
# Inline buttons under a message: rows of (label, callback data)
ButtonRows = tuple[tuple[tuple[str, str], ...], ...]
# kind, params, lang → the buttons under it, usually none (bot gives handlers.notify.buttons).
# A sender that can show them has `send_buttons(identity, text, rows)`; the others are sent
# the text alone, which then says what to type instead (WeChat).
ButtonMaker = Callable[[str, Mapping[str, Any], str], ButtonRows]


class DeliveryError(Exception):
    """A send did not go through; the subclass says what to do about it."""


class Unreachable(DeliveryError):
    """This identity cannot be reached; try another, never this one again for this row."""


class RetryLater(DeliveryError):
    def __init__(self, seconds: float, detail: str = "") -> None:
        super().__init__(detail or f"retry after {seconds:g} s")
        self.seconds = seconds


class Rejected(DeliveryError):
    """Permanent: the channel will never accept this message."""


class Sender(Protocol):
    channel: str  # the identity prefix it serves: "tg", "wx" (or ANY_CHANNEL)

    async def send(self, identity: str, text: str) -> None: ...


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
