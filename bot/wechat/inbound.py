"""What a WeChat push asks for, as a conversation's `Request` (or nothing to answer)."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, replace
from typing import Any

from wechatpy import WeChatClient

from handlers.base import Request, Upload

from .messages import DIGITS, scene_of

log = logging.getLogger(__name__)
MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_PHOTO_BYTES = 5 * 1024 * 1024  # what the catalogue keeps (engine/catalogue.py)
UNREADABLE_KINDS = ("image", "voice", "video", "shortvideo", "location", "link")


@dataclass(frozen=True)
class Inbound:
    key: str  # the dedupe key, also the request id
    request: Request
    menu_id: str | None = None  # the id of a tapped `weixin://bizmsgmenu` link
    image: str | None = None  # an image message's (temporary) MediaId


def inbound_of(msg: dict[str, str], openid: str) -> Inbound | None:
    """What the push asks for, as a Request; None for what needs no answer."""
    def req(key: str, **kw: Any) -> Request:
        return Request(channel="wechat", identity=f"wx:{openid}", request_id=key, **kw)

    kind = msg["MsgType"].lower()
    if kind == "event":
        event, created = msg.get("Event", ""), msg.get("CreateTime", "")
        if not DIGITS.match(created):
            return None
        key = f"wx:evt:{openid}:{created}:{event[:32]}"  # WeChat's advice: sender + time
        if event.lower() in ("subscribe", "scan"):
            scene = scene_of(event, msg.get("EventKey", ""))
            return Inbound(key, req(key, command="start", start_payload=scene))
        if event.lower() == "click" and msg.get("EventKey"):
            return Inbound(key, req(key, text=msg["EventKey"][:64]))
        return None  # unsubscribe, VIEW, LOCATION, TEMPLATESENDJOBFINISH, …
    msg_id = msg.get("MsgId", "")
    if not DIGITS.match(msg_id):
        return None
    key = f"wx:{msg_id}"
    if kind == "text":
        menu = msg.get("bizmsgmenuid", "")
        return Inbound(key, req(key, text=msg.get("Content", "")),
                       menu_id=menu if DIGITS.match(menu) else None)
    if kind == "voice" and msg.get("Recognition"):
        return Inbound(key, req(key, text=msg["Recognition"]))
    if kind == "image" and MEDIA_ID.match(msg.get("MediaId", "")):
        # Read only for operators (the catalogue's photos): `operator_photo`.
        return Inbound(key, req(key, text=""), image=msg["MediaId"])
    if kind in UNREADABLE_KINDS:
        # Known kinds we cannot read: the conversation answers with how to talk to us.
        return Inbound(key, req(key, text=""))
    return None  # a type neither WeChat's documentation nor we know: "success"


async def operator_photo(client: WeChatClient, request: Request, media_id: str) -> Request:
    """An operator's image message as `/photo` with the image attached (`media/get`): it
    goes to the product they named last (`图片 SKU`, or a product just listed with `上架`).
    One that cannot be fetched comes as no bytes, which the catalogue refuses politely."""
    try:
        response = await asyncio.to_thread(client.media.download, media_id)
        content = bytes(response.content)
        if response.headers.get("content-type", "").startswith(("application/json", "text/")):
            content = b""  # WeChat answers an error as JSON
    except Exception as exc:  # noqa: BLE001
        log.warning("wechat: downloading an operator's image failed: %s", exc)
        content = b""
    if len(content) > MAX_PHOTO_BYTES:
        content = b""
    return replace(request, command="photo", upload=Upload(content))
