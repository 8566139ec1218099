"""The invite as an official-account parametric QR code (scene = the invite code): what
`Channels.invite_qr` is on WeChat (bot/app.py binds it to the shop's one WeChat client)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

INVITE_QR_SECONDS = 30 * 24 * 3600  # the longest a temporary parametric QR code lives


async def invite_qr(client: Any, code: str) -> bytes | None:
    """Made through wechatpy's QR API, temporary (30 days: no quota) and drawn here from the
    URL WeChat returns; None when WeChat says no (the invite still has its code in words)."""
    from handlers.referral import qr_png

    try:
        qr = await asyncio.to_thread(client.qrcode.create, {
            "expire_seconds": INVITE_QR_SECONDS, "action_name": "QR_STR_SCENE",
            "action_info": {"scene": {"scene_str": code}}})
    except Exception as exc:  # noqa: BLE001 - the invite still has its code in words
        log.warning("wechat: parametric QR code for an invite failed: %s", exc)
        return None
    url = qr.get("url") if isinstance(qr, dict) else None
    return await asyncio.to_thread(qr_png, url) if url else None
