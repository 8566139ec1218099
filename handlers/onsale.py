"""Taking a product off sale and back (operators): `/offsale SKU` (下架), `/onsale SKU`,
`/product SKU off|on` and `上架 SKU`. An off-sale product is hidden from `/shop` and buying it
is refused `product_inactive`; orders already recorded keep their terms. Journaled with the
operator (`service.set_on_sale`). And how many are left: `/stock SKU N|unlimited` (库存)."""

from __future__ import annotations

from engine import service

from .base import Button, Reply
from .parsing import BadInput, callback, echo, sku, whole
from .registry import Ctx, button, command

OFF_WORDS = ("off", "下架")
UNLIMITED_WORDS = ("unlimited", "none", "不限", "无限")
ON_WORDS = ("on", "上架")


async def switch(c: Ctx, raw_sku: str, active: bool) -> Reply:
    r = await c.call(service.set_on_sale, c.app.db, sku=sku(raw_sku), active=active,
                     actor=c.req.identity)
    if not r["changed"]:
        return c.say("sale.already_on" if active else "sale.already_off", sku=r["sku"])
    undo = callback("sale", r["sku"], "0" if active else "1")
    rows = ((Button(c.t("sale.button_off" if active else "sale.button_on", sku=r["sku"]),
                    undo),),) if undo else ()
    return c.say("sale.on" if active else "sale.off", rows, sku=r["sku"],
                 name=echo(r["name"], 40))


@command("offsale", aliases=("下架",), operator=True, usage_key="usage.offsale")
async def offsale(c: Ctx) -> Reply:
    if len(c.args) != 1:
        raise BadInput("bad.missing")
    return await switch(c, c.args[0], False)


@command("onsale", operator=True, usage_key="usage.onsale")
async def onsale(c: Ctx) -> Reply:
    if len(c.args) != 1:
        raise BadInput("bad.missing")
    return await switch(c, c.args[0], True)


@button("sale", operator=True)
async def sale_button(c: Ctx) -> Reply:
    """`sale:v1:SKU:0|1`: the undo button under an on/off reply."""
    if len(c.args) != 2 or c.args[1] not in ("0", "1"):
        raise BadInput("bad.button")
    try:
        code = sku(c.args[0])
    except BadInput:
        raise BadInput("bad.button") from None
    return await switch(c, code, c.args[1] == "1")


@command("stock", aliases=("库存",), operator=True, usage_key="usage.stock")
async def stock(c: Ctx) -> Reply:
    """`/stock SKU N` sets the units left to sell (SPEC §9; a buy asking for more is
    refused `out_of_stock`); `/stock SKU unlimited` lifts the count."""
    if len(c.args) != 2:
        raise BadInput("bad.missing")
    word = c.args[1].lower()
    units = None if word in UNLIMITED_WORDS else \
        whole(c.args[1], "bad.stock", low=0, high=1_000_000_000)
    r = await c.call(service.set_stock, c.app.db, sku=sku(c.args[0]), stock=units,
                     actor=c.req.identity)
    if r["stock"] is None:
        return c.say("stock.unlimited", sku=r["sku"], name=echo(r["name"], 40))
    return c.say("stock.set", sku=r["sku"], name=echo(r["name"], 40), stock=r["stock"])
