"""A conversation's `Reply` as WeChat messages (`Part`s), and the first of them as the
passive reply: texts with their buttons as links, pictures as image messages, invoices as
pay links, product cards as their photo (a permanent image, uploaded once through
`material/add_material` and its media id kept) followed by their text (docs/catalogue.md).
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from wechatpy import WeChatClient

from handlers.base import (
    App,
    Card,
    Document,
    Invoice,
    MediaRef,
    Photo,
    Progress,
    Reply,
    Request,
    Text,
)
from handlers.catalogue import photo_bytes, remember_photo
from handlers.i18n import money

from .messages import Part, document_text, link, menu_link, merge_texts, render_reply, split_text
from .seen import Seen
from .sender import WeChatSender

log = logging.getLogger(__name__)

NO_PAY = "微信支付暂不可用。\nWeChat Pay is not available right now."
PASSIVE_UPLOAD_SECONDS = 2.0  # an image for the passive reply must be uploaded in this time


def inert(text: str) -> str:
    """A conversation's text is plain (handlers/base.py), but WeChat reads `<a href>` in a
    text message as a link: angle brackets become full-width look-alikes, so nothing a user
    typed (echoed back, or their name) can become a link. The adapter's own links are
    added after this."""
    return text.replace("<", "＜").replace(">", "＞")


@dataclass(eq=False)
class Renderer:
    """Turns replies into `Part`s for one account. `on_progress(item, request, openid)` runs
    a `Progress` item's job (the adapter's: WeChat cannot edit a message, so only the outcome
    follows); `pay` is the WeChat Pay gateway once bot.http configures one."""

    app: App
    client: WeChatClient
    sender: WeChatSender
    seen: Seen
    now: Callable[[], datetime]
    on_progress: Callable[[Progress, Request, str], None]
    pay: Any = field(default=None, init=False)

    async def render(self, reply: Reply, request: Request, openid: str) -> list[Part]:
        """A conversation's reply as WeChat messages."""
        parts: list[Part] = []
        for item in reply.items:
            if isinstance(item, Card):
                parts.extend(await self._card(item, openid))
            elif isinstance(item, Text):
                text = inert(item.text) + await self._buttons(item, openid)
                parts.extend(Part(text=t) for t in split_text(text))
            elif isinstance(item, Photo):
                parts.append(Part(png=item.png))
                if item.caption:
                    parts.extend(Part(text=t) for t in split_text(inert(item.caption)))
            elif isinstance(item, Document):
                parts.extend(Part(text=t) for t in split_text(inert(document_text(item))))
            elif isinstance(item, Invoice):
                parts.append(Part(text=self._invoice_text(item)))
            elif isinstance(item, Progress):
                parts.append(Part(text=inert(item.initial)))
                self.on_progress(item, request, openid)
        return merge_texts(parts)

    async def passive(self, parts: list[Part], openid: str, ours: str,
                      now: int) -> tuple[str, list[Part]]:
        """The first message as a passive reply XML, the rest for customer service."""
        if not parts:
            return "", []
        first, rest = parts[0], parts[1:]
        if first.media_id is not None:
            return render_reply(openid, ours, "image", first.media_id, now), rest
        if first.png is None:
            return render_reply(openid, ours, "text", first.text, now), rest
        try:
            media_id = await asyncio.wait_for(self.sender.upload_png(first.png),
                                              PASSIVE_UPLOAD_SECONDS)
        except Exception as exc:  # noqa: BLE001 - send it later as customer service instead
            log.warning("wechat: image upload for a passive reply failed: %s", exc)
            return "", parts
        return render_reply(openid, ours, "image", media_id, now), rest

    # -- the kinds of item ----------------------------------------------------------------
    async def _card(self, item: Card, openid: str) -> list[Part]:
        """A product: its photo as an image message, then its text with the buttons."""
        parts: list[Part] = []
        if item.photo is not None and (media_id := await self.photo_media_id(item.photo)):
            parts.append(Part(media_id=media_id))
        text = inert(item.text) + await self._buttons(item, openid)
        if text.strip():
            parts.extend(Part(text=t) for t in split_text(text))
        return parts

    async def photo_media_id(self, ref: MediaRef) -> str | None:
        """The stored photo's permanent media id: the one kept, else the bytes uploaded once
        (`material/add_material`) and the id kept for every later card. None when it cannot
        be had now (the card's text still goes)."""
        if ref.wechat:
            return ref.wechat
        content = await photo_bytes(self.app, ref.sha256)
        if content is None:
            return None
        try:
            got = await asyncio.to_thread(self.client.material.add, "image",
                                          ("photo", io.BytesIO(content), "image/jpeg"))
            media_id = str(got["media_id"])
        except Exception as exc:  # noqa: BLE001 - the product is shown without its photo
            log.warning("wechat: uploading a product photo failed: %s", exc)
            return None
        await remember_photo(self.app, ref.sha256, "wechat", media_id)
        return media_id

    def _invoice_text(self, item: Invoice) -> str:
        """The pay link: the checkout page makes a JSAPI order inside WeChat and shows a
        Native QR code anywhere else (bot/wechatpay)."""
        if self.pay is None:
            return NO_PAY
        url = self.pay.config.checkout_url(item.token)
        amount = money(item.amount, item.currency)
        return (f"{inert(item.title)}\n{inert(item.description)}\n"
                f"{link(url, f'微信支付 Pay {amount}')}\n{url}")

    async def _buttons(self, item: Text, openid: str) -> str:
        """Buttons as links: URLs as they are; button data as `weixin://bizmsgmenu` links
        whose tap comes back as a text message carrying the link's id (kept in `Seen`)."""
        lines = []
        for row in item.buttons:
            for button in row:
                if button.url:
                    lines.append(link(button.url, button.label))
                elif button.data:
                    menu_id = str(secrets.randbelow(9 * 10**11) + 10**11)
                    await asyncio.to_thread(self.seen.remember, f"wx:btn:{openid}:{menu_id}",
                                            button.data, self.now())
                    lines.append(menu_link(button.label, menu_id))
        return ("\n" + "\n".join(lines)) if lines else ""
