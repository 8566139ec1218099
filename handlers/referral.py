"""`/invite`: the user's invite link and QR code, who joined through it, what it earned.

The referrer itself is fixed at first contact, in `engine.users.resolve` (SPEC §5)."""

from __future__ import annotations

import io

import qrcode
import qrcode.image.pure

from engine import users

from . import i18n
from .base import Photo, Reply
from .parsing import echo
from .registry import Ctx, command


def qr_png(data: str) -> bytes:
    """A QR code as PNG, drawn by pypng (no Pillow needed)."""
    image = qrcode.make(data, image_factory=qrcode.image.pure.PyPNGImage)
    out = io.BytesIO()
    image.save(out)
    return out.getvalue()


def invite_link(bot_username: str | None, code: str) -> str | None:
    """`https://t.me/<bot>?start=<code>` (Telegram's deep link), when the bot is known."""
    return f"https://t.me/{bot_username}?start={code}" if bot_username else None


@command("invite", aliases=("邀请", "推荐", "referral"))
async def invite(c: Ctx) -> Reply:
    code = await c.call(users.invite_code, c.app.db, c.user_id)
    who = await c.call(users.invitees, c.app.db, c.user_id)
    cfg = await c.cfg()
    link = invite_link(c.app.channels.bot_username, code)
    lines = [c.t("invite.title")]
    if link and c.req.channel != "wechat":
        lines.append(c.t("invite.link", link=link))
    lines.append(c.t("invite.code", code=code))
    if c.req.channel == "wechat":
        lines.append(c.t("invite.wechat"))
    lines.append(c.t("invite.rule", rate=i18n.percent(cfg.raw["queue.accel_rate"])))
    if who["count"]:
        lines.append(c.t("invite.joined", count=who["count"],
                         earned=c.money(who["earned"], cfg.currency)))
        for p in who["people"]:
            lines.append(c.t("invite.person", name=echo(p["name"], 32),
                             joined=i18n.day(p["joined_at"], cfg.timezone),
                             earned=c.money(p["earned"], cfg.currency)))
        if who["count"] > len(who["people"]):
            lines.append(c.t("more", count=who["count"] - len(who["people"])))
    else:
        lines.append(c.t("invite.nobody"))
    reply = Reply().text("\n".join(lines))
    if c.req.channel == "wechat":
        # WeChat joins through the official account's parametric QR code (scene = code),
        # which only the adapter can ask WeChat for.
        make_qr = c.app.channels.invite_qr
        png = await make_qr(code) if make_qr else None
    else:
        png = await c.call(qr_png, link or code)
    if png:
        reply.items.append(Photo(png, c.t("invite.qr_caption")))
    return reply
