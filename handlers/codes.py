"""Digital goods' codes (engine/codes.py, docs/digital.md).

- Operators: `/codes` (卡密) lists the digital products with their codes; `/codes SKU` then
  one code a line — in the same message, or the next one, or a text file sent as a document
  (with the caption `/codes SKU`, or after `/codes SKU`) — adds codes.
- Operators: `/kind SKU digital` (商品类型) makes a product digital (or `goods`, `service`).
- Buyers: `/mycodes` (我的卡密) shows the codes they were given (their receipt's copy).
"""

from __future__ import annotations

from engine import codes as engine_codes
from engine.errors import Refusal

from . import i18n
from .base import Reply
from .parsing import BadInput, echo, sku
from .registry import Ctx, button, command, expect_next

MAX_FILE = 512 * 1024  # bytes of a codes file
SHOWN = 20


def _after_first_line(c: Ctx) -> str:
    """The codes written with the command: the lines after its first, or on one line the
    words after the sku."""
    head, newline, rest = c.req.text.partition("\n")
    if newline:
        return rest
    return "\n".join(c.args[1:])


def _file_text(c: Ctx) -> str:
    """A codes file sent as a document: UTF-8 text (a BOM allowed), at most 512 KB."""
    content = c.req.document
    if content is None:
        return ""
    if len(content) > MAX_FILE:
        raise BadInput("codes.file_too_big", limit=MAX_FILE // 1024)
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput("codes.file_not_text") from None


async def _upload(c: Ctx, product: str, text: str) -> Reply:
    found = engine_codes.parse(text)
    if not found:
        await expect_next(c, "codes", product)
        return c.say("codes.none_found", sku=product)
    r = await c.call(engine_codes.upload, c.app.db, sku=product, codes=found,
                     actor=c.req.identity, key=c.key("codes"))
    return c.say("codes.added", sku=r["sku"], added=r["added"], repeated=r["repeated"],
                 filled=r["filled"], stock=r["stock"])


@command("codes", aliases=("卡密",), operator=True, usage_key="usage.codes")
async def codes_cmd(c: Ctx) -> Reply:
    if not c.args and c.req.document is None:
        return await _summary(c)
    if not c.args:
        raise BadInput("bad.missing")
    product = sku(c.args[0])
    text = _after_first_line(c) + "\n" + _file_text(c)
    if not text.strip():
        await _check_digital(c, product)
        await expect_next(c, "codes", product)
        return c.say("codes.prompt", sku=product)
    return await _upload(c, product, text)


async def _check_digital(c: Ctx, product: str) -> None:
    """Before asking for the codes: the sku is a digital product (said now, not after)."""
    listed = {p["sku"] for p in await c.call(engine_codes.summary, c.app.db)}
    if product not in listed:
        raise Refusal("not_digital", product)


@button("codes", operator=True)
async def codes_followup(c: Ctx) -> Reply:
    """The message after `/codes SKU`: its lines (or its file) are the codes."""
    if c.req.callback is not None or len(c.args) != 1:
        raise BadInput("bad.button")
    return await _upload(c, sku(c.args[0]), c.req.text + "\n" + _file_text(c))


async def _summary(c: Ctx) -> Reply:
    products = await c.call(engine_codes.summary, c.app.db)
    if not products:
        return c.say("codes.no_products")
    lines = [c.t("codes.summary")]
    for p in products:
        lines.append(c.t("codes.summary_line", sku=p["sku"], name=echo(p["name"], 40),
                         unused=p["unused"], given=p["given"], owed=p["owed"],
                         stock="-" if p["stock"] is None else p["stock"]))
    lines.append(c.t("usage.codes"))
    return Reply().text("\n".join(lines))


@command("mycodes", aliases=("我的卡密",))
async def mycodes(c: Ctx) -> Reply:
    r = await c.call(engine_codes.mine, c.app.db, user_id=c.user_id, limit=SHOWN)
    if not r["codes"] and not r["owed"]:
        return c.say("codes.mine_none")
    tz = (await c.cfg()).timezone
    lines = [c.t("codes.mine")]
    for item in r["codes"]:
        lines.append(c.t("codes.mine_line", order=item["order"], sku=item["sku"],
                         code=item["code"], when=i18n.when(item["at"], tz)))
    if r["owed"]:
        lines.append(c.t("codes.owed", count=r["owed"]))
    return Reply().text("\n".join(lines))


KIND_WORDS = {"goods": "goods", "实物": "goods", "digital": "digital", "数字": "digital",
              "service": "service", "服务": "service"}


@command("kind", aliases=("商品类型",), operator=True, usage_key="usage.kind")
async def kind_cmd(c: Ctx) -> Reply:
    if len(c.args) != 2:
        raise BadInput("bad.missing")
    product = sku(c.args[0])
    kind = KIND_WORDS.get(c.args[1].lower())
    if kind is None:
        raise BadInput("bad.kind", value=echo(c.args[1], 16))
    r = await c.call(engine_codes.change_kind, c.app.db, sku=product, kind=kind,
                     actor=c.req.identity)
    return c.say("kind.done" if r["changed"] else "kind.same", sku=r["sku"],
                 kind=c.t(f"kind.{r['kind']}"))
