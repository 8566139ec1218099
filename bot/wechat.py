"""The WeChat Official Account adapter (wechatpy 1.8): `GET`/`POST /wechat` and sending.

Inbound, in this order, each step refusing before the next looks at anything:
1. the query `signature` against WECHAT_TOKEN (403), before the body is parsed;
2. the body (at most 64 KiB, bot/http.py) parsed with defusedxml: no DTD, no entities, no
   external references (400);
3. safe mode (`encrypt_type=aes`): `msg_signature` checked and the message decrypted with
   wechatpy.crypto (403/400);
4. dedupe: a `MsgId` (or, for events, sender + time + event) already seen is answered with
   the stored reply, never processed twice (`SeenMessage`);
5. the message becomes a `handlers.base.Request` (`wx:<openid>`), `handlers.dispatch`
   answers it, and the reply goes back as a passive XML reply within WeChat's 5 seconds.
   What does not fit one passive reply (a second message, a picture, a slow answer) follows
   as customer-service messages.

Outbound (`WeChatSender`): customer-service messages inside the 48-hour window, template
messages outside it (WECHAT_NOTIFY_TEMPLATE_ID, one `content` field), `RecipientUnreachable`
when neither can reach the user. See docs/wechat.md for the decisions behind each rule.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from wechatpy import WeChatClient
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException, WeChatClientException
from wechatpy.utils import check_signature

from bot.senders import Rejected, RetryLater, Unreachable
from bot.settings import Settings
from handlers.base import App, Document, Invoice, Photo, Progress, Reply, Request, Text
from storage.db import DatabaseUnavailable
from storage.models import Identity, SeenMessage, User

log = logging.getLogger(__name__)

PASSIVE_BUDGET = 4.0  # seconds; WeChat waits 5 for a passive reply, the network takes some
MAX_TEXT_BYTES = 2000  # WeChat's text messages carry at most 2048 bytes
CS_WINDOW = timedelta(hours=48)  # customer-service messages reach users active this recently
SEEN_KEEP = timedelta(days=3)
INVITE_QR_SECONDS = 30 * 24 * 3600  # the longest a temporary parametric QR code lives  # WeChat retries within 15 s; buttons stay usable this long
_OPENID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DIGITS = re.compile(r"^\d{1,32}$")
_NO_REPLY = (200, b"success", "text/plain")
# WeChat errcodes (Global_Return_Code): what each means for a message we send.
OUT_OF_WINDOW = {45015, 45047}  # no reply window (48 h) / too many messages unanswered
UNREACHABLE = {40003: "invalid openid", 43004: "not subscribed", 43019: "blacklisted us",
               43101: "refused messages"}
SLOW_DOWN = {45009: 3600.0, 45011: 60.0}  # daily / per-minute API quota


class RecipientUnreachable(Unreachable):
    """WeChat will not deliver to this user now (unfollowed, blocked, outside the 48-hour
    window with no template configured). Retrying soon will not help."""


def _delivery_error(identity: str, exc: WeChatClientException) -> Exception:
    code = exc.errcode
    if code in UNREACHABLE:
        return RecipientUnreachable(f"{identity}: WeChat {code} ({UNREACHABLE[code]})")
    if code in OUT_OF_WINDOW:
        return RecipientUnreachable(f"{identity}: WeChat {code} (outside the 48-hour window)")
    if code in SLOW_DOWN:
        return RetryLater(SLOW_DOWN[code], f"WeChat {code}: quota reached")
    return exc  # anything else is transient: the caller retries with backoff


class BadXml(ValueError):
    pass


# -- the wechatpy client --------------------------------------------------------------------


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


def client_from_settings(settings: Settings) -> WeChatClient:
    session = None
    if settings.redis_url:
        import redis
        from wechatpy.session.redisstorage import RedisStorage

        # Shared tokens: several processes must not keep invalidating each other's.
        session = RedisStorage(redis.Redis.from_url(settings.redis_url), prefix="wechatpy")
    secret = settings.wechat_app_secret.get_secret_value() if settings.wechat_app_secret else ""
    return StorefrontWeChatClient(settings.wechat_app_id or "", secret,
                                  settings.wechat_api_base_url, session=session)


# -- XML ------------------------------------------------------------------------------------


def parse_xml(data: bytes | str) -> dict[str, str]:
    """`<xml><A>1</A>…</xml>` → {"A": "1", …}, refusing DTDs, entities and anything that is
    not one flat WeChat push. Raises `BadXml`."""
    try:
        root = safe_fromstring(data, forbid_dtd=True, forbid_entities=True,
                               forbid_external=True)
    except (ParseError, DefusedXmlException, ValueError, TypeError) as exc:
        raise BadXml(f"not acceptable XML: {type(exc).__name__}") from None
    if root.tag != "xml":
        raise BadXml("root element is not <xml>")
    out: dict[str, str] = {}
    for child in root:
        if len(child) == 0 and isinstance(child.tag, str):
            out[child.tag] = child.text or ""
    return out


def _cdata(text: str) -> str:
    # "]]>" cannot appear inside one CDATA section (wechatpy's own templates miss this).
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_reply(to_user: str, from_user: str, kind: str, value: str, now: int) -> str:
    """A passive reply: `text` (value = content) or `image` (value = media id)."""
    body = (f"<Content>{_cdata(value)}</Content>" if kind == "text"
            else f"<Image><MediaId>{_cdata(value)}</MediaId></Image>")
    return (f"<xml><ToUserName>{_cdata(to_user)}</ToUserName>"
            f"<FromUserName>{_cdata(from_user)}</FromUserName><CreateTime>{now}</CreateTime>"
            f"<MsgType>{_cdata(kind)}</MsgType>{body}</xml>")


# -- replies as WeChat messages ------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One WeChat message: text, or an image (PNG bytes)."""

    text: str = ""
    png: bytes | None = None


def split_text(text: str, limit: int = MAX_TEXT_BYTES) -> list[str]:
    """Split at line ends so each piece fits one WeChat text message."""
    pieces: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line.encode()) > limit:  # one very long line: cut it by characters
            cut = len(line.encode()[:limit].decode("utf-8", "ignore"))
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:cut])
            line = line[cut:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate.encode()) > limit:
            pieces.append(current)
            current = line
        else:
            current = candidate
    if current.strip():
        pieces.append(current)
    return pieces or [""]


def _attr(text: str) -> str:
    """Text safe inside a double-quoted href of a WeChat text message."""
    return re.sub(r"[\"'<>&\s]+", " ", text).strip()[:60]


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
        if prefix != "wx" or not _OPENID.match(openid):
            raise Rejected(f"{identity!r} is not a WeChat identity")
        return openid

    async def _in_window(self, identity: str) -> bool:
        if self.db is None:
            return True

        def last_seen(s: Session) -> datetime | None:
            return s.execute(select(Identity.last_seen_at).where(
                Identity.identity == identity)).scalar_one_or_none()

        seen = await asyncio.to_thread(self.db.read, last_seen)
        return seen is not None and datetime.now(UTC) - seen < CS_WINDOW

    async def send(self, identity: str, text: str) -> None:
        openid = self.openid(identity)
        if await self._in_window(identity):
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
                                    self.template_id, {"content": {"value": text[:1000]}})
        except WeChatClientException as exc:
            raise _delivery_error(identity, exc) from exc

    async def upload_png(self, png: bytes) -> str:
        media = await asyncio.to_thread(self.client.media.upload, "image",
                                        ("image.png", io.BytesIO(png), "image/png"))
        return str(media["media_id"])

    async def send_part(self, openid: str, part: Part) -> None:
        if part.png is not None:
            media_id = await self.upload_png(part.png)
            await asyncio.to_thread(self.client.message.send_image, openid, media_id)
        else:
            await asyncio.to_thread(self.client.message.send_text, openid, part.text)


@dataclass(frozen=True)
class Inbound:
    key: str  # the dedupe key, also the request id
    request: Request
    menu_id: str | None = None  # a clicked `weixin://bizmsgmenu` link


class WeChatAdapter:
    """`GET`/`POST /wechat`: verification, messages and events, replies and follow-ups."""

    def __init__(self, app: App, client: WeChatClient, *, token: str, appid: str,
                 aes_key: str | None = None, template_id: str | None = None,
                 pay: Any = None, passive_budget: float = PASSIVE_BUDGET,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.client = client
        self.token = token
        self.appid = appid
        self.crypto = WeChatCrypto(token, aes_key, appid) if aes_key else None
        self.sender = WeChatSender(client, app.db, template_id)
        self.pay = pay
        self.passive_budget = passive_budget
        self.clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, app: App, *, client: Any = None) -> WeChatAdapter:
        token = settings.wechat_token.get_secret_value() if settings.wechat_token else ""
        aes = (settings.wechat_encoding_aes_key.get_secret_value()
               if settings.wechat_encoding_aes_key else None)
        return cls(app, client or client_from_settings(settings), token=token,
                   appid=settings.wechat_app_id or "", aes_key=aes,
                   template_id=settings.wechat_notify_template_id)

    # -- GET /wechat ------------------------------------------------------------------------
    def _signed(self, query: dict[str, str]) -> bool:
        try:
            check_signature(self.token, query.get("signature", ""), query.get("timestamp", ""),
                            query.get("nonce", ""))
        except InvalidSignatureException:
            return False
        return bool(self.token)

    def verify_get(self, query: dict[str, str]) -> tuple[int, str]:
        echostr = query.get("echostr", "")
        if not self._signed(query) or not echostr or len(echostr) > 128 \
                or not echostr.isprintable():
            return 403, "forbidden"
        return 200, echostr

    # -- POST /wechat -----------------------------------------------------------------------
    async def handle_post(self, query: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        if not self._signed(query):
            return 403, b"forbidden", "text/plain"
        try:
            outer = parse_xml(body)
            encrypted = query.get("encrypt_type") == "aes" or "Encrypt" in outer
            if encrypted:
                plain = self._decrypt(outer, query)
                if plain is None:
                    return 403, b"forbidden", "text/plain"
                msg = parse_xml(plain)
            else:
                msg = outer
        except BadXml as exc:
            log.info("wechat: refusing a body: %s", exc)
            return 400, b"bad request", "text/plain"
        openid, ours = msg.get("FromUserName", ""), msg.get("ToUserName", "")
        if not _OPENID.match(openid) or not ours or not msg.get("MsgType"):
            return 400, b"bad request", "text/plain"
        inbound = await self._inbound(msg, openid)
        if inbound is None:
            return _NO_REPLY
        xml = await self._answer(inbound, openid, ours)
        if not xml:
            return _NO_REPLY
        if encrypted and self.crypto is not None:
            xml = self.crypto.encrypt_message(xml, query.get("nonce", ""),
                                              query.get("timestamp", ""))
        return 200, xml.encode("utf-8"), "application/xml"

    def _decrypt(self, outer: dict[str, str], query: dict[str, str]) -> str | None:
        """The plaintext of a safe-mode message; None when its signature is wrong."""
        if self.crypto is None or not outer.get("Encrypt"):
            raise BadXml("a safe-mode message needs <Encrypt> and WECHAT_ENCODING_AES_KEY")
        try:
            return str(self.crypto.decrypt_message(
                {"Encrypt": outer["Encrypt"]}, query.get("msg_signature", ""),
                query.get("timestamp", ""), query.get("nonce", "")))
        except InvalidSignatureException:
            return None
        except Exception as exc:  # noqa: BLE001 - bad base64, padding, app id: a bad body
            raise BadXml(f"cannot decrypt: {type(exc).__name__}") from None

    async def _inbound(self, msg: dict[str, str], openid: str) -> Inbound | None:
        """What the push asks for, as a Request; None for what needs no answer."""
        identity = f"wx:{openid}"
        kind = msg["MsgType"].lower()
        msg_id = msg.get("MsgId", "")
        if kind == "event":
            event = msg.get("Event", "")
            created = msg.get("CreateTime", "")
            if not _DIGITS.match(created):
                return None
            key = f"wx:evt:{openid}:{created}:{event[:32]}"
            scene = _scene(event, msg.get("EventKey", ""))
            if event.lower() in ("subscribe", "scan"):
                return Inbound(key, Request(channel="wechat", identity=identity, request_id=key,
                                            command="start", start_payload=scene))
            if event.lower() == "click" and msg.get("EventKey"):
                return Inbound(key, Request(channel="wechat", identity=identity, request_id=key,
                                            text=msg["EventKey"][:64]))
            return None  # unsubscribe, VIEW, LOCATION, TEMPLATESENDJOBFINISH, …
        if not _DIGITS.match(msg_id):
            return None
        key = f"wx:{msg_id}"
        if kind == "text":
            menu = msg.get("bizmsgmenuid")
            return Inbound(key, Request(channel="wechat", identity=identity, request_id=key,
                                        text=msg.get("Content", "")),
                           menu_id=menu if menu and _DIGITS.match(menu) else None)
        if kind == "voice" and msg.get("Recognition"):
            return Inbound(key, Request(channel="wechat", identity=identity, request_id=key,
                                        text=msg["Recognition"]))
        if kind in ("image", "voice", "video", "shortvideo", "location", "link"):
            # Known kinds we cannot read: the conversation answers with how to talk to us.
            return Inbound(key, Request(channel="wechat", identity=identity, request_id=key,
                                        text=""))
        return None  # a type neither WeChat's docs nor we know: "success", nothing else

    # -- answering ------------------------------------------------------------------------
    async def _answer(self, inbound: Inbound, openid: str, ours: str) -> str:
        """The passive reply XML ("" for none); never processes one message twice."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        try:
            seen, stored = await asyncio.to_thread(self._claim, inbound.key,
                                                   f"wx:{openid}", now)
        except DatabaseUnavailable:
            return ""  # WeChat retries; by then the database may answer
        if seen:
            return stored or ""
        request = inbound.request
        if inbound.menu_id is not None:
            data = await asyncio.to_thread(self._button_data, openid, inbound.menu_id)
            if data is not None:
                request = Request(channel="wechat", identity=request.identity,
                                  request_id=request.request_id, callback=data)
        task = asyncio.create_task(self._parts(request, openid))
        done, _ = await asyncio.wait({task}, timeout=self.passive_budget)
        if task not in done:
            # Too slow for a passive reply: answer now, follow up as customer service.
            self._background(self._follow_up(task, openid))
            await asyncio.to_thread(self._remember, inbound.key, "")
            return ""
        parts = task.result()
        if self.pay is not None and request.identity in self.app.operators:
            self._background(self.pay.sweep_refunds())  # e.g. after 退款: return the cash now
        xml, rest = await self._passive(parts, openid, ours)
        await asyncio.to_thread(self._remember, inbound.key, xml)
        if rest:
            self._background(self._deliver(openid, rest))
        return xml

    async def _passive(self, parts: list[Part], openid: str, ours: str) -> tuple[str, list[Part]]:
        """The first message as a passive reply, the rest for customer service."""
        if not parts:
            return "", []
        first, rest = parts[0], parts[1:]
        now = int(self.clock())
        if first.png is None:
            return render_reply(openid, ours, "text", first.text, now), rest
        try:
            media_id = await asyncio.wait_for(self.sender.upload_png(first.png), 2.0)
        except Exception as exc:  # noqa: BLE001 - send it later as customer service instead
            log.warning("wechat: image upload for a passive reply failed: %s", exc)
            return "", parts
        return render_reply(openid, ours, "image", media_id, now), rest

    async def _parts(self, request: Request, openid: str) -> list[Part]:
        """Dispatch and render; never raises (a failure becomes an apology)."""
        import handlers

        try:
            reply = await handlers.dispatch(self.app, request)
            return await self.render(reply, request, openid)
        except Exception:
            log.exception("wechat: answering %s failed", request.request_id)
            return [Part(text="抱歉，出了点问题，请稍后再试。\nSorry, something went wrong; "
                              "please try again later.")]

    async def render(self, reply: Reply, request: Request, openid: str) -> list[Part]:
        parts: list[Part] = []
        for item in reply.items:
            if isinstance(item, Text):
                text = item.text + await self._buttons(item, openid)
                parts.extend(Part(text=t) for t in split_text(text))
            elif isinstance(item, Photo):
                parts.append(Part(png=item.png))
                if item.caption:
                    parts.extend(Part(text=t) for t in split_text(item.caption))
            elif isinstance(item, Document):
                parts.extend(Part(text=t) for t in split_text(_document_text(item)))
            elif isinstance(item, Invoice):
                parts.append(Part(text=self._invoice_text(item)))
            elif isinstance(item, Progress):
                parts.append(Part(text=item.initial))
                self._background(self._run_job(item, request, openid))
        # Consecutive texts travel together: one passive reply says as much as it can.
        merged: list[Part] = []
        for part in parts:
            if merged and part.png is None and merged[-1].png is None and len(
                    (merged[-1].text + "\n\n" + part.text).encode()) <= MAX_TEXT_BYTES:
                merged[-1] = Part(text=merged[-1].text + "\n\n" + part.text)
            else:
                merged.append(part)
        return merged

    def _invoice_text(self, item: Invoice) -> str:
        if self.pay is None:
            return "微信支付暂不可用。\nWeChat Pay is not available."
        url = self.pay.config.checkout_url(item.token)
        from engine.money import format_fen

        amount = f"{format_fen(item.amount)} {item.currency}"
        return (f"{item.title}\n{item.description}\n"
                f"<a href=\"{url}\">微信支付 Pay {amount}</a>\n{url}")

    async def _buttons(self, item: Text, openid: str) -> str:
        """Buttons as links: URLs as they are, button data as `weixin://bizmsgmenu` links
        whose click comes back as a text message carrying the link's id."""
        lines = []
        for row in item.buttons:
            for b in row:
                if b.url:
                    lines.append(f"<a href=\"{_attr(b.url)}\">{_attr(b.label)}</a>")
                elif b.data:
                    menu_id = str(secrets.randbelow(9 * 10**11) + 10**11)
                    await asyncio.to_thread(self._remember,
                                            f"wx:btn:{openid}:{menu_id}", b.data)
                    label = _attr(b.label)
                    lines.append(f"<a href=\"weixin://bizmsgmenu?msgmenucontent={label}"
                                 f"&msgmenuid={menu_id}\">{label}</a>")
        return ("\n" + "\n".join(lines)) if lines else ""

    async def _run_job(self, item: Progress, request: Request, openid: str) -> None:
        import handlers

        run_job = getattr(handlers, "run_job", None)
        if run_job is None:
            return
        try:
            final = await run_job(self.app, item.job, request, lambda _text: None)
        except Exception:
            log.exception("wechat: job %s failed", item.job)
            return
        if isinstance(final, Reply):
            await self._deliver(openid, await self.render(final, request, openid))

    async def _follow_up(self, task: asyncio.Task[list[Part]], openid: str) -> None:
        await self._deliver(openid, await task)

    async def _deliver(self, openid: str, parts: list[Part]) -> None:
        for part in parts:
            try:
                await self.sender.send_part(openid, part)
            except Exception as exc:  # noqa: BLE001 - one lost follow-up must not stop the rest
                log.warning("wechat: customer-service message to %s failed: %s", openid, exc)

    async def after_payment(self, result: dict[str, Any]) -> None:
        """Tell a WeChat buyer their payment arrived (the receipt), as customer service."""
        from engine import users
        from handlers.shop import render_receipt

        def find(s: Session) -> str | None:
            return s.execute(select(Identity.identity).join(User, User.id == Identity.user_id)
                             .where(User.handle == result["user"],
                                    Identity.identity.like("wx:%"))
                             .order_by(Identity.identity).limit(1)).scalar_one_or_none()

        identity = await asyncio.to_thread(self.app.db.read, find)
        if identity is None:
            return
        lang = await asyncio.to_thread(users.lang_of, self.app.db, identity) or "zh"
        cfg = await asyncio.to_thread(self.app.db.read, users.store_config)
        await self.sender.send(identity, render_receipt(lang, result, cfg.currency))

    async def invite_qr(self, code: str) -> bytes | None:
        """The invite as a parametric QR code (scene = the invite code), made through
        wechatpy's QR API: 30 days, temporary codes have no quota (docs/wechat.md)."""
        from handlers.referral import qr_png

        try:
            qr = await asyncio.to_thread(self.client.qrcode.create, {
                "expire_seconds": INVITE_QR_SECONDS, "action_name": "QR_STR_SCENE",
                "action_info": {"scene": {"scene_str": code}}})
        except Exception as exc:  # noqa: BLE001 - the invite still has its code in words
            log.warning("wechat: parametric QR code for an invite failed: %s", exc)
            return None
        url = qr.get("url") if isinstance(qr, dict) else None
        return await asyncio.to_thread(qr_png, url) if url else None

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for follow-ups in flight (tests; shutdown)."""
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))

    async def aclose(self) -> None:
        await self.drain()
        for task in list(self._tasks):
            task.cancel()

    # -- storage (each a pure function of the session) ---------------------------------
    def _claim(self, key: str, identity: str, now: datetime) -> tuple[bool, str | None]:
        """(seen before?, stored reply). Claims the key and marks the user active (the
        48-hour customer-service window counts from here)."""
        def work(s: Session) -> tuple[bool, str | None]:
            row = s.get(SeenMessage, key)
            if row is not None:
                return True, row.reply
            s.add(SeenMessage(key=key, reply=None, created_at=now))
            s.execute(update(Identity).where(Identity.identity == identity)
                      .values(last_seen_at=now))
            s.flush()
            return False, None

        try:
            return self.app.db.run(work)
        except IntegrityError:
            return True, None  # the same message, claimed a moment ago by a retry

    def _remember(self, key: str, reply: str) -> None:
        try:
            self._store(key, reply)
        except DatabaseUnavailable:
            # The answer still goes out; a retry of this message would find it unanswered
            # and get "success", while the money it moved is keyed by its id anyway.
            log.warning("wechat: could not store the reply to %s", key)

    def _store(self, key: str, reply: str) -> None:
        now = datetime.fromtimestamp(self.clock(), UTC)

        def work(s: Session) -> None:
            row = s.get(SeenMessage, key)
            if row is None:
                s.add(SeenMessage(key=key, reply=reply, created_at=now))
            else:
                row.reply = reply

        self.app.db.run(work)

    def _button_data(self, openid: str, menu_id: str) -> str | None:
        return self.app.db.read(lambda s: s.execute(select(SeenMessage.reply).where(
            SeenMessage.key == f"wx:btn:{openid}:{menu_id}")).scalar_one_or_none())

    async def prune_seen(self) -> int:
        cutoff = datetime.fromtimestamp(self.clock(), UTC) - SEEN_KEEP

        def work(s: Session) -> int:
            result = s.execute(delete(SeenMessage).where(SeenMessage.created_at < cutoff,
                                                         SeenMessage.key.like("wx:%")))
            return int(getattr(result, "rowcount", 0) or 0)

        return await asyncio.to_thread(self.app.db.run, work)


def _scene(event: str, key: str) -> str | None:
    """The invite scene of a `subscribe` (`qrscene_<scene>`) or `SCAN` (`<scene>`) event."""
    if event.lower() == "subscribe":
        if not key.startswith("qrscene_"):
            return None
        key = key[len("qrscene_"):]
    return key if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key) else None


def _document_text(item: Document) -> str:
    """WeChat cannot carry files to a chat: small text files come as text, others not."""
    head = item.caption or item.filename
    try:
        body = item.content.decode("utf-8")
    except UnicodeDecodeError:
        body = None
    if body is not None and len(item.content) <= 1500:
        return f"{head}\n{body}"
    digest = hashlib.sha256(item.content).hexdigest()[:12]
    return (f"{head}\n文件 {item.filename}（{len(item.content)} 字节）请在 Telegram 或命令行获取。"
            f"\nThe file {item.filename} ({len(item.content)} bytes, {digest}) is available on "
            "Telegram or the command line.")
