"""The shop window: `/shop` (categories as buttons, then pages of product cards), search
(`/shop tea`, `/search tea`, `搜索 茶`) and each product's card — its photo, names and
description in the reader's language, price, what it earns (queue entry and lock, points),
stock ("only 3 left", sold out) and its Add to cart / Buy buttons. docs/catalogue.md.

Button data: `shop:v1:PAGE` (every product), `cat:v1:CAT:PAGE` (one category: `CAT` is a
short hash of its name, `-` for products without one), `shop:v1:c` (the categories).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from engine import catalogue

from .base import App, Button, Card, MediaRef, Reply, Text
from .parsing import BadInput, callback, echo, normalise, sku, whole
from .registry import Ctx, button, command
from .shop import scheme_text

NO_CATEGORY = "-"
MAX_QUERY = 64


def category_key(name: str | None) -> str:
    """A category's name as button data (names are Chinese, English, anything): 8 hex."""
    if name is None:
        return NO_CATEGORY
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def product_name(lang: str, p: dict[str, Any]) -> str:
    """The product's name in `lang`: `name` is the shop's own (Chinese) name, `name_en` the
    English one; either stands in for the other."""
    if lang == "en" and p.get("name_en"):
        return str(p["name_en"])
    return str(p["name"])


def description(lang: str, p: dict[str, Any]) -> str | None:
    first, other = ("description_en", "description") if lang == "en" else \
        ("description", "description_en")
    return p.get(first) or p.get(other)


@command("shop", aliases=("商品", "products", "catalogue", "商店"), usage_key="usage.shop")
async def shop(c: Ctx) -> Reply:
    """`/shop`: the categories (when the shop has any), else the first page of products;
    `/shop PAGE`: that page of every product; `/shop WORDS`: search. With a web page
    (docs/web.md), plain `/shop` also offers it ("Open shop": Telegram's Mini App)."""
    reply = await _shop(c)
    if c.app.channels.web_app and not c.args:
        reply.text(c.t("shop.open_app"), ((Button(c.t("shop.open_app_button"),
                                                  url=c.app.channels.web_app, web_app=True),),))
    return reply


async def _shop(c: Ctx) -> Reply:
    if c.args and normalise(c.args[0]).isdigit():
        return await _page(c, None, whole(c.args[0], "bad.page", low=1, high=100_000) - 1)
    if c.args:
        return await _search(c, " ".join(c.args))
    cats = await c.call(catalogue.categories, c.app.db)
    if any(cat["name"] is not None for cat in cats):
        return _categories(c, cats)
    return await _page(c, None, 0)


@command("search", aliases=("搜索", "查找"), usage_key="usage.search")
async def search(c: Ctx) -> Reply:
    if not c.args:
        raise BadInput("bad.missing")
    return await _search(c, " ".join(c.args))


@button("shop")
async def shop_button(c: Ctx) -> Reply:
    """`shop:v1:PAGE` (0-based) or `shop:v1:c` (the categories)."""
    if c.args == ("c",):
        return _categories(c, await c.call(catalogue.categories, c.app.db))
    if len(c.args) != 1 or not c.args[0].isdigit() or len(c.args[0]) > 6:
        raise BadInput("bad.button")
    return await _page(c, None, int(c.args[0]))


@button("cat")
async def category_button(c: Ctx) -> Reply:
    """`cat:v1:CAT:PAGE`: a page of one category (looked up by its key: never trusted)."""
    if len(c.args) != 2 or not c.args[1].isdigit() or len(c.args[1]) > 6:
        raise BadInput("bad.button")
    cats = await c.call(catalogue.categories, c.app.db)
    found = [cat for cat in cats if category_key(cat["name"]) == c.args[0]]
    if not found:
        return c.say("catalogue.category_gone")
    return await _page(c, found[0], int(c.args[1]))


def _categories(c: Ctx, cats: list[dict[str, Any]]) -> Reply:
    rows: list[tuple[Button, ...]] = []
    for cat in cats:
        label = c.t("catalogue.category_button",
                    name=echo(cat["name"], 24) if cat["name"] is not None
                    else c.t("catalogue.uncategorised"), count=cat["count"])
        if data := callback("cat", category_key(cat["name"]), 0):
            rows.append((Button(label, data),))
    rows.append((Button(c.t("catalogue.all_button"), "shop:v1:0"),))
    return c.say("catalogue.categories", tuple(rows))


async def _page(c: Ctx, cat: dict[str, Any] | None, page: int) -> Reply:
    kw: dict[str, Any] = {}
    if cat is not None:
        kw = {"uncategorised": True} if cat["name"] is None else {"category": cat["name"]}
    view = await c.call(catalogue.page, c.app.db, page=page, **kw)
    if not view["products"]:
        return c.say("shop.empty")
    title = c.t("catalogue.all_title") if cat is None else \
        echo(cat["name"], 40) if cat["name"] is not None else c.t("catalogue.uncategorised")
    key = None if cat is None else category_key(cat["name"])

    def turn(to: int) -> str | None:
        return callback("shop", to) if key is None else callback("cat", key, to)

    return _cards(c, view, title, turn)


async def _search(c: Ctx, words: str) -> Reply:
    query = " ".join(normalise(words).split())[:MAX_QUERY]
    view = await c.call(catalogue.page, c.app.db, query=query, page=0)
    if not view["products"]:
        return c.say("catalogue.not_found", query=echo(query, 32))
    reply = _cards(c, view, "", lambda _to: None)
    reply.items[0] = Text(c.t("catalogue.found", query=echo(query, 32), count=view["count"]))
    if view["pages"] > 1:
        reply.text(c.t("catalogue.more_found", count=view["count"] - len(view["products"])))
    return reply


def _cards(c: Ctx, view: dict[str, Any], title: str, turn: Any) -> Reply:
    if view["pages"] > 1:
        title = c.t("catalogue.page", title=title, page=view["page"] + 1, pages=view["pages"])
    else:
        title = c.t("catalogue.title", title=title)
    reply = Reply().text(title)
    for p in view["products"]:
        reply.items.append(product_card(c, p, view))
    notes: list[str] = []
    if view["settle_days"]:
        notes.append(c.t("shop.return_window", days=view["settle_days"]))
    if view["paused"]:
        notes.append(c.t("refusal.sales_paused"))
    notes.append(c.t("shop.how_to_buy"))
    nav: list[Button] = []
    if view["page"] > 0 and (data := turn(view["page"] - 1)):
        nav.append(Button(c.t("shop.prev"), data))
    if view["page"] + 1 < view["pages"] and (data := turn(view["page"] + 1)):
        nav.append(Button(c.t("shop.next"), data))
    rows: list[tuple[Button, ...]] = [tuple(nav)] if nav else []
    if view["categorised"]:
        rows.append((Button(c.t("catalogue.categories_button"), "shop:v1:c"),))
    return reply.text("\n".join(notes), tuple(rows))


def card_text(c: Ctx, p: dict[str, Any], view: dict[str, Any], *, all_photos: bool = False
              ) -> str:
    cur = view["currency"]
    lines = [c.t("shop.item", name=echo(product_name(c.lang, p), 40), sku=p["sku"],
                 price=c.money(p["price"], cur))]
    about = description(c.lang, p)
    if about:
        lines.append(echo(about, 600))
    lines.append(scheme_text(c, p, view))
    state = p["stock_state"]
    if state == "sold_out":
        lines.append(c.t("catalogue.sold_out"))
    elif state == "low":
        lines.append(c.t("catalogue.only_left", count=p["stock"]))
    if len(p["photos"]) > 1 and not all_photos:  # /item shows them
        lines.append(c.t("catalogue.more_photos", count=len(p["photos"]) - 1, sku=p["sku"]))
    return "\n".join(lines)


def product_card(c: Ctx, p: dict[str, Any], view: dict[str, Any], *,
                 all_photos: bool = False) -> Card:
    """One product as a `Card`: photo, text, and Buy / Add to cart (none when sold out)."""
    rows: list[tuple[Button, ...]] = []
    if p["stock_state"] != "sold_out":
        name = echo(product_name(c.lang, p), 20)
        buy = callback("buy", p["sku"], 1)
        cart = callback("cart", "add", p["sku"])
        row = []
        if buy:
            row.append(Button(c.t("shop.buy_button", name=name,
                                  price=c.money(p["price"], view["currency"])), buy))
        if cart:
            row.append(Button(c.t("catalogue.cart_button"), cart))
        if row:
            rows.append(tuple(row))
    first = p["photos"][0] if p["photos"] else None
    photo = MediaRef(first["sha256"], first["telegram"], first["wechat"]) if first else None
    return Card(card_text(c, p, view, all_photos=all_photos), tuple(rows), photo=photo)


@command("item", aliases=("详情",), usage_key="usage.item")
async def item(c: Ctx) -> Reply:
    """`/item SKU`: one product with all its photos."""
    if len(c.args) != 1:
        raise BadInput("bad.missing")
    p = await c.call(catalogue.card, c.app.db, sku(c.args[0]))
    if not p["active"]:
        return c.say("refusal.product_inactive")
    reply = Reply(items=[product_card(c, p, p, all_photos=True)])
    for extra in p["photos"][1:]:
        reply.items.append(Card("", (), photo=MediaRef(extra["sha256"], extra["telegram"],
                                                       extra["wechat"])))
    return reply


# -- for the adapters: stored photos ---------------------------------------------------------

async def photo_bytes(app: App, sha256: str) -> bytes | None:
    """A stored photo's bytes, for an adapter with no id of its own for it yet."""
    return await asyncio.to_thread(catalogue.media_content, app.db, sha256)


async def remember_photo(app: App, sha256: str, channel: str, channel_id: str) -> None:
    """The id `channel` gave a stored photo it uploaded: re-sent instead of the bytes."""
    await asyncio.to_thread(catalogue.remember_channel_id, app.db, sha256=sha256,
                            channel=channel, channel_id=channel_id)


__all__ = ["description", "photo_bytes", "product_card", "product_name", "remember_photo"]
