"""Senders: how a notification reaches a user's chat (Telegram message, WeChat customer
service or template message), and what each channel's errors mean for the outbox.

A `Sender` sends one plain text to one identity (`tg:<id>`, `wx:<openid>`) and either
returns (delivered) or raises one of:

- `Unreachable`: this identity cannot be reached (blocked the bot, unsubscribed, unknown
  chat); the deliverer tries the user's next identity, then marks the row `unreachable`;
- `RetryLater(seconds)`: the channel asked us to slow down (Telegram `RetryAfter`);
- `Rejected`: this message can never be sent as it is (a permanent error);
- anything else: a transient failure, retried with backoff.

Telegram's limits (30 messages a second overall, one a second per chat) are kept by the
`RateLimiter` each `TelegramSender` owns.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections import deque
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bot.settings import Settings

TELEGRAM_TEXT_LIMIT = 4096
WECHAT_TEXT_LIMIT = 2000


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
    channel: str  # the identity prefix it serves: "tg", "wx"

    async def send(self, identity: str, text: str) -> None: ...


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RateLimiter:
    """At most `overall` sends in any `period` seconds, and one per chat every `per_chat`
    seconds, with a small `margin` so the rate the server measures stays inside the limit
    even when requests are delayed unevenly on the way."""

    def __init__(self, *, overall: int = 30, period: float = 1.0, per_chat: float = 1.0,
                 margin: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self.overall = overall
        self.period = period * (1 + margin)
        self.per_chat = per_chat * (1 + margin)
        self.clock = clock
        self._sent: deque[float] = deque()
        self._last: dict[Hashable, float] = {}
        self._paused_until = 0.0

    def _ready_at(self, chat: Hashable, now: float) -> float:
        while self._sent and self._sent[0] <= now - self.period:
            self._sent.popleft()
        ready = max(now, self._paused_until)
        last = self._last.get(chat)
        if last is not None:
            ready = max(ready, last + self.per_chat)
        if len(self._sent) >= self.overall:
            ready = max(ready, self._sent[0] + self.period)
        return ready

    async def wait(self, chat: Hashable) -> None:
        """Return when a message to `chat` may go, and count it as gone."""
        while True:
            now = self.clock()
            ready = self._ready_at(chat, now)
            if ready <= now:  # no await between the check and the booking: no race
                self._sent.append(now)
                self._last[chat] = now
                if len(self._last) > 10_000:
                    self._forget(now)
                return
            await asyncio.sleep(ready - now)

    def pause(self, seconds: float) -> None:
        """Hold every send for `seconds` (the channel's flood control said so)."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    def _forget(self, now: float) -> None:
        self._last = {c: t for c, t in self._last.items() if t > now - self.per_chat}


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
        from telegram.error import BadRequest, ChatMigrated, Forbidden, RetryAfter

        prefix, _, raw = identity.partition(":")
        try:
            chat_id = int(raw)
        except ValueError:
            raise Rejected(f"not a Telegram chat: {identity}") from None
        if prefix != self.channel:
            raise Rejected(f"not a Telegram identity: {identity}")
        await self.limiter.wait(chat_id)
        try:
            await self.bot.send_message(chat_id=chat_id, text=_clip(text, TELEGRAM_TEXT_LIMIT))
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
_WX_UNREACHABLE = {40003: "invalid openid", 43004: "not subscribed", 43019: "blacklisted us",
                   43101: "refused messages"}
_WX_OUTSIDE_WINDOW = {45015, 45047}  # no reply window (48 h) / too many messages unanswered
_WX_SLOW_DOWN = {45009: 3600.0, 45011: 60.0}  # daily / per-minute API quota


class WeChatSender:
    """Customer-service text messages through a wechatpy `WeChatClient`; outside the 48-hour
    window, a template message when `template_id` is set (the template must have a
    `{{content.DATA}}` field), else the identity is unreachable for now."""

    channel = "wx"

    def __init__(self, client: Any, *, template_id: str | None = None) -> None:
        self.client = client
        self.template_id = template_id

    async def send(self, identity: str, text: str) -> None:
        prefix, _, openid = identity.partition(":")
        if prefix != self.channel or not openid:
            raise Rejected(f"not a WeChat identity: {identity}")
        await asyncio.to_thread(self._send, openid, _clip(text, WECHAT_TEXT_LIMIT))

    def _send(self, openid: str, text: str) -> None:
        from wechatpy.exceptions import WeChatClientException

        try:
            self.client.message.send_text(openid, text)
            return
        except WeChatClientException as exc:
            if exc.errcode not in _WX_OUTSIDE_WINDOW or not self.template_id:
                raise _wechat_error(exc) from exc
        try:
            self.client.message.send_template(openid, self.template_id,
                                              {"content": {"value": text}})
        except WeChatClientException as exc:
            raise _wechat_error(exc) from exc


def _wechat_error(exc: Any) -> Exception:
    code = exc.errcode
    if code in _WX_UNREACHABLE:
        return Unreachable(f"WeChat {code}: {_WX_UNREACHABLE[code]}")
    if code in _WX_OUTSIDE_WINDOW:
        return Unreachable(f"WeChat {code}: outside the customer-service window")
    if code in _WX_SLOW_DOWN:
        return RetryLater(_WX_SLOW_DOWN[code], f"WeChat {code}: quota reached")
    return exc  # network trouble or an unknown code: transient, retried with backoff


def senders_from_settings(settings: Settings, *, telegram_bot: Any = None,
                          wechat_client: Any = None) -> dict[str, Sender]:
    """The senders this process can use: Telegram when a token is set, WeChat when the app
    id and secret are. Pass the running application's own `Bot`/client when there is one."""
    senders: dict[str, Sender] = {}
    if telegram_bot is None and settings.telegram_bot_token is not None:
        from telegram import Bot

        telegram_bot = Bot(settings.telegram_bot_token.get_secret_value(),
                           base_url=settings.telegram_api_base_url)
    if telegram_bot is not None:
        senders["tg"] = TelegramSender(telegram_bot)
    if wechat_client is None and settings.wechat_app_id and settings.wechat_app_secret:
        from wechatpy import WeChatClient

        wechat_client = WeChatClient(settings.wechat_app_id,
                                     settings.wechat_app_secret.get_secret_value())
        if settings.wechat_api_base_url:
            wechat_client.API_BASE_URL = settings.wechat_api_base_url
    if wechat_client is not None:
        senders["wx"] = WeChatSender(
            wechat_client, template_id=getattr(settings, "wechat_notify_template_id", None))
    return senders
