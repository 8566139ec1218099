"""Senders: how a notification reaches a user's chat (Telegram message, WeChat customer
service or template message). They implement the scheduler's contract
(scheduler/delivery.py: `Sender`, and `Unreachable` / `RetryLater` / `Rejected` for what a
channel's error means for the outbox).

Telegram's limits (30 messages a second overall, one a second per chat) are kept by the
`RateLimiter` each `TelegramSender` owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections.abc import AsyncIterator, Callable, Hashable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.settings import Settings

# The sender contract and its errors are the scheduler's (scheduler/delivery.py): the
# scheduler is given senders; these are the channels' implementations of it.
from scheduler.delivery import (  # noqa: F401 - re-exported for the channels
    ANY_CHANNEL,
    DeliveryError,
    Rejected,
    RetryLater,
    Sender,
    Unreachable,
)

TELEGRAM_TEXT_LIMIT = 4096


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RateLimiter:
    """At most `overall` messages in any `period` seconds and one per chat every `per_chat`
    seconds, as the *server* counts them.

    A request may reach the server any time between its start and its answer, so a send is
    counted from when its answer came back: the next one that would exceed a limit starts at
    least a full period after that. Uneven delays on the way can then never squeeze more
    than the limit into a server-side second; the cost is one round trip of throughput."""

    def __init__(self, *, overall: int = 30, period: float = 1.0, per_chat: float = 1.0,
                 margin: float = 0.02, clock: Callable[[], float] = time.monotonic) -> None:
        self.overall = overall
        self.period = period * (1 + margin)
        self.per_chat = per_chat * (1 + margin)
        self.clock = clock
        self._sends: list[_Send] = []  # recent and in-flight sends
        self._last: dict[Hashable, _Send] = {}
        self._paused_until = 0.0

    def _ready_at(self, chat: Hashable, now: float) -> float | None:
        """When a send to `chat` may start; None while it depends on an unanswered send."""
        self._sends = [x for x in self._sends if x.end is None or x.end > now - self.period]
        ready = max(now, self._paused_until)
        last = self._last.get(chat)
        if last is not None:
            if last.end is None:
                return None
            ready = max(ready, last.end + self.per_chat)
        if len(self._sends) >= self.overall:
            ends = sorted(x.end for x in self._sends if x.end is not None)
            excess = len(self._sends) - self.overall  # this many must age out first
            if len(ends) <= excess:
                return None
            ready = max(ready, ends[excess] + self.period)
        return ready

    @contextlib.asynccontextmanager
    async def slot(self, chat: Hashable) -> AsyncIterator[None]:
        """Wait until a message to `chat` may go; count it until its answer is back."""
        while True:
            now = self.clock()
            ready = self._ready_at(chat, now)
            if ready is not None and ready <= now:
                break  # no await between the check and the booking: no race
            await asyncio.sleep(0.01 if ready is None else ready - now)
        send = _Send()
        self._sends.append(send)
        self._last[chat] = send
        try:
            yield
        finally:
            send.end = self.clock()
            if len(self._last) > 10_000:
                cutoff = send.end - self.per_chat
                self._last = {c: x for c, x in self._last.items()
                              if x.end is None or x.end > cutoff}

    def pause(self, seconds: float) -> None:
        """Hold every send for `seconds` (the channel's flood control said so)."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)


class _Send:
    __slots__ = ("end",)

    def __init__(self) -> None:
        self.end: float | None = None  # when the answer came back


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


class TelegramSender:
    """Plain-text messages through a python-telegram-bot `Bot` (its owner initialises it)."""

    channel = "tg"

    def __init__(self, bot: Any, *, limiter: RateLimiter | None = None) -> None:
        self.bot = bot
        self.limiter = limiter or RateLimiter()

    async def send(self, identity: str, text: str) -> None:
        await self.send_buttons(identity, text, ())

    async def send_buttons(self, identity: str, text: str,
                           rows: tuple[tuple[tuple[str, str], ...], ...]) -> None:
        """`send` with inline buttons under the text: rows of (label, callback data)."""
        from telegram import InlineKeyboardButton, InlineKeyboardMarkup
        from telegram.error import BadRequest, ChatMigrated, Forbidden, RetryAfter

        markup = InlineKeyboardMarkup([[InlineKeyboardButton(label, callback_data=data)
                                        for label, data in row] for row in rows]) if rows else None
        prefix, _, raw = identity.partition(":")
        try:
            chat_id = int(raw)
        except ValueError:
            raise Rejected(f"not a Telegram chat: {identity}") from None
        if prefix != self.channel:
            raise Rejected(f"not a Telegram identity: {identity}")
        try:
            async with self.limiter.slot(chat_id):
                await self.bot.send_message(chat_id=chat_id,
                                            text=_clip(text, TELEGRAM_TEXT_LIMIT),
                                            reply_markup=markup)
        except RetryAfter as exc:
            with warnings.catch_warnings():  # PTB 22 warns about the int/timedelta switch
                warnings.simplefilter("ignore")
                seconds = _seconds(exc.retry_after)
            self.limiter.pause(seconds)
            raise RetryLater(seconds, f"Telegram flood control: {exc}") from exc
        except Forbidden as exc:
            raise Unreachable(f"Telegram: {exc}") from exc
        except BadRequest as exc:
            message = str(exc).lower()
            if "chat not found" in message or "deactivated" in message:
                raise Unreachable(f"Telegram: {exc}") from exc
            raise Rejected(f"Telegram: {exc}") from exc
        except ChatMigrated as exc:
            raise Rejected(f"Telegram: {exc}") from exc


# WeChat errcodes (https://developers.weixin.qq.com/doc/offiaccount/Getting_Started/Global_Return_Code.html)
def senders_from_settings(settings: Settings, *, telegram_bot: Any = None,
                          wechat_sender: Sender | None = None) -> dict[str, Sender]:
    """The senders this process can use: Telegram when a token is set, WeChat when the app
    id and secret are. Pass the running application's own `Bot`, and the WeChat adapter's
    sender when there is one (it knows each user's 48-hour window); otherwise a plain
    `WeChatSender` is made from the settings."""
    senders: dict[str, Sender] = {}
    if telegram_bot is None and settings.telegram_bot_token is not None:
        from telegram import Bot

        telegram_bot = Bot(settings.telegram_bot_token.get_secret_value(),
                           base_url=settings.telegram_api_base_url)
    if telegram_bot is not None:
        senders["tg"] = TelegramSender(telegram_bot)
    if wechat_sender is None and settings.wechat_app_id and settings.wechat_app_secret:
        # The adapter's own sender and client: the same base URL, token storage and rules.
        from bot.wechat import WeChatSender, client_from_settings

        wechat_sender = WeChatSender(client_from_settings(settings),
                                     template_id=settings.wechat_notify_template_id)
    if wechat_sender is not None:
        senders["wx"] = wechat_sender
    return senders
