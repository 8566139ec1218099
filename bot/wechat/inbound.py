"""What a WeChat push asks for, as a conversation's `Request` (or nothing to answer)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from wechatpy import WeChatClient

from handlers.base import Request, Upload

from .messages import DIGITS, scene_of

log = logging.getLogger(__name__)
MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_PHOTO_BYTES = 5 * 1024 * 1024  # what the catalogue keeps (engine/catalogue.py)
CHUNK_BYTES = 64 * 1024  # read a download this much at a time
DOWNLOAD_SECONDS = 30.0  # a download that trickles on longer is given up
TOKEN_ERRORS = {40001, 40014, 42001}  # the access token is stale: fetch one, try once more
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
    One that cannot be fetched, or is larger than MAX_PHOTO_BYTES, comes as no bytes, which
    the catalogue refuses politely in the operator's language (a JPEG, PNG or GIF of at
    most 5 MB)."""
    try:
        content = await asyncio.to_thread(read_media, client, media_id, MAX_PHOTO_BYTES)
    except Exception as exc:  # noqa: BLE001
        log.warning("wechat: downloading an operator's image failed: %s", exc)
        content = b""
    return replace(request, command="photo", upload=Upload(content))


def read_media(client: WeChatClient, media_id: str, limit: int) -> bytes:
    """A temporary media's bytes (`media/get`), read as a stream: b"" when WeChat answers
    with an error, when the body is larger than `limit` (reading stops at the limit, so a
    huge or endless body is never held), or when it takes longer than DOWNLOAD_SECONDS.

    wechatpy's `media.download` reads the whole body before we could look at its size,
    hence this request of our own on the client's HTTP session (its base URL, its token)."""
    deadline = time.monotonic() + DOWNLOAD_SECONDS
    for fresh_token in (False, True):
        if fresh_token:
            client.fetch_access_token()
        with client._http.get(client.API_BASE_URL + "media/get",
                              params={"access_token": client.access_token,
                                      "media_id": media_id},
                              stream=True, timeout=client.timeout or 10) as response:
            response.raise_for_status()
            if not response.headers.get("content-type", "").startswith(
                    ("application/json", "text/")):
                return _bounded(response, limit, deadline)
            errcode = _errcode(response)  # WeChat answers an error as JSON
            if errcode not in TOKEN_ERRORS or fresh_token:
                log.warning("wechat: media/get answered errcode %s", errcode)
                return b""
    return b""  # (not reached: the second try always returns)


def _bounded(response: Any, limit: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        log.warning("wechat: an operator's image of %s bytes refused unread", declared)
        return b""
    content = bytearray()
    for chunk in response.iter_content(CHUNK_BYTES):
        content += chunk
        if len(content) > limit:
            log.warning("wechat: an operator's image over %d bytes; stopped reading", limit)
            return b""
        if time.monotonic() > deadline:
            log.warning("wechat: an operator's image took over %g s; stopped reading",
                        DOWNLOAD_SECONDS)
            return b""
    return bytes(content)


def _errcode(response: Any) -> int | None:
    """The errcode of an error answer (its first 4 KB only)."""
    head = next(response.iter_content(4096), b"")
    try:
        code = json.loads(head).get("errcode")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None
