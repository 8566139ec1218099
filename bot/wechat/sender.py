"""Talking to WeChat's API: the wechatpy client and `WeChatSender` (messages to users)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatClientException
from wechatpy.session import SessionStorage
from wechatpy.session.memorystorage import MemoryStorage

from bot.senders import Rejected, RetryLater, Unreachable
from bot.settings import Settings
from handlers.registry import last_seen

from .messages import OPENID, Part, menu_link, split_text, xml_safe
from .seen import Seen

log = logging.getLogger(__name__)

CS_WINDOW = timedelta(hours=48)  # customer-service messages reach users active this recently

# WeChat errcodes (Global_Return_Code): what each means for a message we send.
OUT_OF_WINDOW = {45015, 45047}  # no reply window (48 h) / too many messages unanswered
UNREACHABLE = {40003: "invalid openid", 43004: "not subscribed", 43019: "blacklisted us",
               43101: "refused messages"}
SLOW_DOWN = {45009: 3600.0, 45011: 60.0}  # daily / per-minute API quota


class RecipientUnreachable(Unreachable):
    """WeChat will not deliver to this user now (unfollowed, blocked, outside the 48-hour
    window with no template configured). Retrying soon will not help."""


class StorefrontWeChatClient(WeChatClient):
    """`wechatpy.WeChatClient` honouring WECHAT_API_BASE_URL, token fetch included (upstream
    hard-codes api.weixin.qq.com for it)."""

    def __init__(self, appid: str, secret: str, base_url: str | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("timeout", 10)
        super().__init__(appid, secret, **kwargs)
        if base_url:
            self.API_BASE_URL = base_url if base_url.endswith("/") else base_url + "/"

    def fetch_access_token(self) -> dict[str, Any]:
        return self._fetch_access_token(
            url=self.API_BASE_URL + "token",
            params={"grant_type": "client_credential", "appid": self.appid,
                    "secret": self.secret})


_SECRET_IN_URL = re.compile(r"(?i)\b((?:secret|appsecret|access_token|component_access_token)"
                            r"=)[^&\s\"']+")


class _RedactUrls(logging.Filter):
    """urllib3 (under wechatpy's requests) logs every request line at DEBUG, and WeChat's
    API carries the app secret and the access token in the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _SECRET_IN_URL.sub(r"\1<redacted>", message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact_urls_in_logs() -> None:
    """Filters go where records are made: on the loggers that log request URLs."""
    for name in ("urllib3.connectionpool", "wechatpy.client.base"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactUrls) for f in logger.filters):
            logger.addFilter(_RedactUrls())


def client_from_settings(settings: Settings) -> WeChatClient:
    """The client for WECHAT_APP_ID/SECRET; with REDIS_URL its access token lives in Redis,
    so several processes do not keep invalidating each other's token."""
    session = None
    if settings.redis_url:
        import redis
        from wechatpy.session.redisstorage import RedisStorage

        session = RedisOrMemory(RedisStorage(redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=2), prefix="wechatpy"))
    redact_urls_in_logs()
    secret = settings.wechat_app_secret.get_secret_value() if settings.wechat_app_secret else ""
    return StorefrontWeChatClient(settings.wechat_app_id or "", secret,
                                  settings.wechat_api_base_url, session=session)


class RedisOrMemory(SessionStorage):
    """wechatpy's token storage: Redis (shared by every process) while it answers, this
    process's memory while it does not (logged once per outage; Redis is tried again after
    `RETRY_AFTER` seconds). A Redis outage must not stop WeChat messages."""

    RETRY_AFTER = 30.0

    def __init__(self, shared: SessionStorage) -> None:
        self.shared = shared
        self.memory = MemoryStorage()
        self._down_until = 0.0

    def _use_shared(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        if self._down_until == 0.0:
            log.warning("wechat: Redis unavailable (%s); keeping the access token in memory",
                        type(exc).__name__)
        self._down_until = time.monotonic() + self.RETRY_AFTER

    def get(self, key: str, default: Any = None) -> Any:
        if self._use_shared():
            try:
                value = self.shared.get(key, default)
                self._down_until = 0.0
                return value
            except Exception as exc:  # noqa: BLE001 - any Redis failure: use memory
                self._failed(exc)
        return self.memory.get(key, default)

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        self.memory.set(key, value, ttl)
        if self._use_shared():
            try:
                self.shared.set(key, value, ttl)
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)

    def delete(self, key: str) -> None:
        self.memory.delete(key)
        if self._use_shared():
            try:
                self.shared.delete(key)
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)


def _delivery_error(identity: str, exc: WeChatClientException) -> Exception:
    code = exc.errcode
    if code in UNREACHABLE:
        return RecipientUnreachable(f"{identity}: WeChat {code} ({UNREACHABLE[code]})")
    if code in OUT_OF_WINDOW:
        return RecipientUnreachable(f"{identity}: WeChat {code} (outside the 48-hour window)")
    if code in SLOW_DOWN:
        return RetryLater(SLOW_DOWN[code], f"WeChat {code}: quota reached")
    return exc  # anything else is transient: the caller retries with backoff


class WeChatSender:
    """Delivers text to `wx:<openid>` users: the `bot.senders.Sender` protocol (the
    scheduler's notifications) and the adapter's own follow-ups.

    Customer-service messages while the user wrote to us in the last 48 hours (and while
    WeChat accepts them), else a template message (WECHAT_NOTIFY_TEMPLATE_ID, one
    `{{content.DATA}}` field). Raises `RecipientUnreachable` (a `bot.senders.Unreachable`)
    when neither can reach the user, `RetryLater` on quota errors, `Rejected` for an identity
    that is not WeChat's."""

    channel = "wx"

    def __init__(self, client: WeChatClient, db: Any = None,
                 template_id: str | None = None) -> None:
        self.client = client
        self.db = db
        self.template_id = template_id

    @staticmethod
    def openid(identity: str) -> str:
        prefix, _, openid = identity.partition(":")
        if prefix != "wx" or not OPENID.match(openid):
            raise Rejected(f"{identity!r} is not a WeChat identity")
        return openid

    async def _in_window(self, identity: str) -> bool:
        """Whether the user wrote within 48 hours (`Identity.last_seen_at`, which the
        adapter moves on every message); without a database, let WeChat decide."""
        if self.db is None:
            return True
        seen = await asyncio.to_thread(last_seen, self.db, identity)
        return seen is not None and datetime.now(UTC) - seen < CS_WINDOW

    async def send(self, identity: str, text: str) -> None:
        self.openid(identity)  # `Rejected` before anything is read
        await self._send(identity, text, text, await self._in_window(identity))

    async def send_buttons(self, identity: str, text: str,
                           rows: tuple[tuple[tuple[str, str], ...], ...]) -> None:
        """`send` with buttons (rows of (label, callback data), handlers/notify.py
        `buttons`): under a customer-service message as `weixin://bizmsgmenu` links, as the
        adapter's replies have them (bot/wechat/render.py); a tap comes back as a text
        message carrying the link's id, which the adapter turns back into the button's data
        (kept in `Seen`). A template message (outside the 48-hour window) cannot carry
        them: its text goes alone, as it does without a database to keep the links in."""
        openid = self.openid(identity)
        window = await self._in_window(identity)
        if not rows or self.db is None or not window:
            await self._send(identity, text, text, window)
            return
        seen, at = Seen(self.db), datetime.now(UTC)
        links = []
        for row in rows:
            for label, data in row:
                menu_id = str(secrets.randbelow(9 * 10**11) + 10**11)
                await asyncio.to_thread(seen.remember, f"wx:btn:{openid}:{menu_id}", data, at)
                links.append(menu_link(label, menu_id))
        # the text is plain: angle brackets shown as look-alikes, so only our links are links
        plain = text.replace("<", "＜").replace(">", "＞")
        await self._send(identity, plain + "\n" + "\n".join(links), text, window)

    async def _send(self, identity: str, text: str, template_text: str, window: bool) -> None:
        """`text` as customer-service messages inside the window, else (or when WeChat
        closed it early) `template_text` as a template message. Neither carries what XML
        forbids (`xml_safe`): WeChat's API refuses it, and UTF-8 cannot carry a surrogate."""
        openid = self.openid(identity)
        text, template_text = xml_safe(text), xml_safe(template_text)
        if window:
            try:
                for piece in split_text(text):
                    await asyncio.to_thread(self.client.message.send_text, openid, piece)
                return
            except WeChatClientException as exc:
                if exc.errcode not in OUT_OF_WINDOW:
                    raise _delivery_error(identity, exc) from exc
        if not self.template_id:
            raise RecipientUnreachable(f"{identity}: outside the 48-hour window and no "
                                       "WECHAT_NOTIFY_TEMPLATE_ID is configured")
        try:
            await asyncio.to_thread(self.client.message.send_template, openid,
                                    self.template_id,
                                    {"content": {"value": template_text[:1000]}})
        except WeChatClientException as exc:
            raise _delivery_error(identity, exc) from exc

    async def upload_png(self, png: bytes) -> str:
        """A temporary image media (3 days) for image messages and passive replies."""
        media = await asyncio.to_thread(self.client.media.upload, "image",
                                        ("image.png", io.BytesIO(png), "image/png"))
        return str(media["media_id"])

    async def send_part(self, openid: str, part: Part) -> None:
        """One customer-service message (a follow-up to something the user just said)."""
        if part.media_id is not None:
            await asyncio.to_thread(self.client.message.send_image, openid, part.media_id)
        elif part.png is not None:
            media_id = await self.upload_png(part.png)
            await asyncio.to_thread(self.client.message.send_image, openid, media_id)
        else:
            await asyncio.to_thread(self.client.message.send_text, openid, xml_safe(part.text))
