"""Operator commands over the whole store: look up a user, broadcast to everyone, pause and
resume checkouts, verify the books, export. Operators only, like handlers/admin.py's; every
action passes `actor=<identity>` to the engine. Also the catalogue's product texts and photos
(`/describe`, `/photo`, and the photo sent with `/product`: docs/catalogue.md)."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

from engine import catalogue, service, users
from engine import export as exporting
from engine.verify import verify as verify_books

from . import i18n
from .base import Button, Document, Reply, Text, Upload
from .parsing import BadInput, echo, sku
from .registry import Ctx, button, command

MAX_BROADCAST = 3000
BROADCAST_TTL = 600.0
# Broadcasts waiting for their operator's confirmation: id → (identity, text, made at).
# In-process on purpose: a confirmation is a moment's decision, and a restart just asks the
# operator to send the command again.
_pending_broadcasts: dict[str, tuple[str, str, float]] = {}


@command("user", aliases=("用户",), operator=True, usage_key="usage.user")
async def user(c: Ctx) -> Reply:
    if len(c.args) != 1:
        raise BadInput("bad.missing")
    u = await c.call(users.lookup, c.app.db, c.args[0])
    if u is None:
        raise BadInput("bad.user", value=echo(c.args[0], 32))
    cfg = await c.cfg()
    return c.say("user.view", id=u["id"], handle=echo(u["handle"], 40),
                 name=echo(u["name"] or "-", 40),
                 identities=c.t("list.sep").join(echo(i, 40) for i in u["identities"]) or "-",
                 wallet=c.money(u["wallet"], cfg.currency), held=c.money(u["held"], cfg.currency),
                 points=i18n.pts_exact(u["points"]), basis=c.money(u["basis"], cfg.currency),
                 orders=u["orders"], invited=u["invited"],
                 referrer=echo(u["referrer"] or "-", 40),
                 joined=i18n.when(u["created_at"], cfg.timezone), language=u["lang"] or "-",
                 blocked=c.t("yes") if u["blocked"] else c.t("no"))


def _broadcast_text(c: Ctx) -> str:
    raw = c.req.text.strip()
    if raw and c.req.callback is None:
        first, _, rest = raw.partition(" ") if " " in raw else (raw, "", "")
        word = first.lstrip("/").split("@", 1)[0].lower()
        if word in ("broadcast", "群发", "广播"):
            return rest.strip()
        for alias in ("群发", "广播"):
            if raw.startswith(alias):
                return raw[len(alias):].strip()
    return " ".join(c.args).strip()


@command("broadcast", aliases=("群发", "广播"), operator=True, usage_key="usage.broadcast")
async def broadcast(c: Ctx) -> Reply:
    text = _broadcast_text(c)
    if not text:
        raise BadInput("bad.missing")
    if len(text) > MAX_BROADCAST:
        raise BadInput("bad.too_long", limit=MAX_BROADCAST)
    now = time.monotonic()
    for k, (_who, _t, made) in list(_pending_broadcasts.items()):
        if now - made > BROADCAST_TTL:
            _pending_broadcasts.pop(k, None)
    bid = secrets.token_hex(6)
    _pending_broadcasts[bid] = (c.req.identity, text, now)
    rows = ((Button(c.t("broadcast.send"), f"bc:v1:{bid}:y"),
             Button(c.t("broadcast.cancel"), f"bc:v1:{bid}:n")),)
    return c.say("broadcast.confirm", rows, text=text)


@button("bc", operator=True)
async def broadcast_button(c: Ctx) -> Reply:
    if len(c.args) != 2 or c.args[1] not in ("y", "n"):
        raise BadInput("bad.button")
    pending = _pending_broadcasts.get(c.args[0])
    if pending is None or pending[0] != c.req.identity or \
            time.monotonic() - pending[2] > BROADCAST_TTL:
        return c.say("broadcast.expired")
    _pending_broadcasts.pop(c.args[0], None)
    if c.args[1] == "n":
        return c.say("broadcast.cancelled")
    r = await c.call(users.broadcast, c.app.db, text=pending[1], actor=c.req.identity,
                     key=f"broadcast:{c.args[0]}")
    return c.say("broadcast.queued", count=r["recipients"])


async def _set_paused(c: Ctx, paused: bool) -> Reply:
    await c.call(service.configure, c.app.db, {"store": {"paused": "1" if paused else "0"}},
                 actor=c.req.identity)
    return c.say("pause.done" if paused else "resume.done")


@command("pause", aliases=("暂停",), operator=True)
async def pause(c: Ctx) -> Reply:
    return await _set_paused(c, True)


@command("resume", aliases=("恢复",), operator=True)
async def resume(c: Ctx) -> Reply:
    return await _set_paused(c, False)


@command("verify", aliases=("校验",), operator=True)
async def verify(c: Ctx) -> Reply:
    books = await c.call(verify_books, c.app.db)
    lines = list(books.lines())
    head = c.t("verify.ok") if books.ok else c.t("verify.failed")
    body = "\n".join(lines[:30])
    if len(lines) > 30:
        body += "\n" + c.t("more", count=len(lines) - 30)
    return Reply().text(head + "\n" + body)


EXPORT_WHATS = ("journal", "entries", "users")


@command("export", aliases=("导出",), operator=True, usage_key="usage.export")
async def export(c: Ctx) -> Reply:
    what = c.args[0].lower() if c.args else "journal"
    fmt = c.args[1].lower() if len(c.args) > 1 else "csv"
    if what not in EXPORT_WHATS or fmt not in ("csv", "jsonl") or len(c.args) > 2:
        raise BadInput("bad.export")

    def run() -> tuple[bytes, int]:
        import io

        out = io.BytesIO()
        n = exporting.stream(c.app.db, what, fmt, out)
        return out.getvalue(), n

    content, n = await c.call(run)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Reply(items=[Document(content, f"{what}-{stamp}.{fmt}",
                                 c.t("export.caption", what=what, rows=n))])


# -- the catalogue: texts, categories and photos (docs/catalogue.md) --------------------------

DESCRIBE_FIELDS = {"name_en": "name_en", "英文名": "name_en", "zh": "description",
                   "desc": "description", "description": "description", "描述": "description",
                   "en": "description_en", "desc_en": "description_en",
                   "英文描述": "description_en", "category": "category", "分类": "category"}
CLEAR_WORDS = ("clear", "清除")


@command("describe", aliases=("描述",), operator=True, usage_key="usage.describe")
async def describe(c: Ctx) -> Reply:
    """`/describe SKU FIELD [TEXT…]`: the English name, a description (zh or en) or the
    category; no text clears it."""
    if len(c.args) < 2:
        raise BadInput("bad.missing")
    field = DESCRIBE_FIELDS.get(c.args[1].lower())
    if field is None:
        raise BadInput("catalogue.bad_field", value=echo(c.args[1], 16))
    text = " ".join(c.args[2:])
    limit = catalogue.TEXT_FIELDS[field]
    if len(text) > limit:
        raise BadInput("bad.too_long", limit=limit)
    r = await c.call(catalogue.describe, c.app.db, sku=sku(c.args[0]), field=field,
                     text=text, actor=c.req.identity)
    if not r["value"]:
        return c.say("catalogue.cleared", sku=r["sku"], field=c.t(f"catalogue.field.{field}"))
    return c.say("catalogue.described", sku=r["sku"], field=c.t(f"catalogue.field.{field}"),
                 value=echo(r["value"], 200))


async def attach_photo(c: Ctx, code: str, upload: Upload) -> Reply:
    """Add the photo the operator sent to `code`, stored once (by its sha256). Their next
    photos without a caption go to the same product (the rest of a Telegram album)."""
    if catalogue.photo_type(upload.content) is None or \
            len(upload.content) > catalogue.MAX_PHOTO_BYTES:
        raise BadInput("catalogue.bad_photo")
    r = await c.call(catalogue.add_photo, c.app.db, sku=code, content=upload.content,
                     channel=c.req.channel, channel_id=upload.channel_id, actor=c.req.identity)
    await c.call(catalogue.wait_for_photo, c.app.db, identity=c.req.identity, sku=r["sku"])
    return c.say("catalogue.photo_added", sku=r["sku"], name=echo(r["name"], 40),
                 count=r["photos"])


async def after_product(c: Ctx, code: str, reply: Reply) -> Reply:
    """After `/product …`: a photo sent with it goes to the product; on WeChat, where a
    photo is a message of its own, the operator's next image does."""
    if c.req.upload is not None:
        added = _said(await attach_photo(c, code, c.req.upload))
    elif c.req.channel == "wechat":
        r = await c.call(catalogue.wait_for_photo, c.app.db, identity=c.req.identity, sku=code)
        added = c.t("catalogue.send_photo", sku=r["sku"], minutes=r["minutes"])
    else:
        return reply
    return Reply().text(_said(reply) + "\n" + added)  # one message


def _said(reply: Reply) -> str:
    return "\n".join(i.text for i in reply.items if isinstance(i, Text))


@command("photo", aliases=("图片",), operator=True, usage_key="usage.photo")
async def photo(c: Ctx) -> Reply:
    """`/photo SKU` with (or in reply to) a photo adds it; without one, the next photo the
    operator sends within ten minutes goes to SKU; `/photo SKU clear` removes them all. A
    photo with no SKU goes where the last `/photo SKU` pointed."""
    if len(c.args) == 2 and c.args[1].lower() in CLEAR_WORDS:
        r = await c.call(catalogue.clear_photos, c.app.db, sku=sku(c.args[0]),
                         actor=c.req.identity)
        return c.say("catalogue.photos_cleared", sku=r["sku"], count=r["removed"])
    if len(c.args) > 1:
        raise BadInput("bad.missing")
    if not c.args:
        if c.req.upload is None:
            raise BadInput("bad.missing")
        waiting = await c.call(catalogue.take_wait, c.app.db, identity=c.req.identity)
        if waiting is None:
            return c.say("catalogue.which_product")
        return await attach_photo(c, waiting, c.req.upload)
    code = sku(c.args[0])
    if c.req.upload is not None:
        return await attach_photo(c, code, c.req.upload)
    r = await c.call(catalogue.wait_for_photo, c.app.db, identity=c.req.identity, sku=code)
    return c.say("catalogue.send_photo", sku=r["sku"], minutes=r["minutes"])
