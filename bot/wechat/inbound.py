"""What a WeChat push asks for, as a conversation's `Request` (or nothing to answer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from handlers.base import Request

from .messages import DIGITS, scene_of

UNREADABLE_KINDS = ("image", "voice", "video", "shortvideo", "location", "link")


@dataclass(frozen=True)
class Inbound:
    key: str  # the dedupe key, also the request id
    request: Request
    menu_id: str | None = None  # the id of a tapped `weixin://bizmsgmenu` link


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
    if kind in UNREADABLE_KINDS:
        # Known kinds we cannot read: the conversation answers with how to talk to us.
        return Inbound(key, req(key, text=""))
    return None  # a type neither WeChat's documentation nor we know: "success"
