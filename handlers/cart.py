"""The cart (docs/cart.md): `/cart` (购物车), its buttons, and one checkout for all of it.

Buttons, all validated here and again by the engine:
- `cart:v1:add:SKU` — the catalogue's "Add to cart" (one unit);
- `cart:v1:inc:SKU` / `cart:v1:dec:SKU` / `cart:v1:del:SKU` — the +/−/✖ beside a line;
- `cart:v1:show` (look again), `cart:v1:clear` (empty it);
- `cartpay:v1:HOW:NONCE` — check out the whole cart: `c` online (one invoice), `p` points
  first and the rest online, `w` from the wallet, `pw` points and the wallet. The nonce makes
  the button its own idempotency key: a double tap opens one order.
Typed, for chats without buttons: `/cart`, `/cart add SKU [QTY]`, `/cart del SKU`,
`/cart clear`, `/cart pay [points] [wallet]`.
"""

from __future__ import annotations

import secrets
from typing import Any

from engine import cart, cart_checkout
from engine.errors import Refusal
from engine.orders import ORDER_REF

from . import i18n
from .base import Button, Invoice, Reply
from .catalogue import product_name
from .parsing import BadInput, callback, echo, qty, sku
from .registry import Ctx, button, command
from .shop import NONCE, POINTS_WORDS, WALLET_WORDS, receipt

BUTTON_LINES = 20  # lines with their own +/−/✖ buttons (Telegram keeps keyboards small)
ADD_WORDS = ("add", "加", "添加")
DEL_WORDS = ("del", "remove", "删除", "删")
CLEAR_WORDS = ("clear", "empty", "清空")
PAY_WORDS = ("pay", "checkout", "结算", "付款")
HOWS = ("c", "p", "w", "pw")


@command("cart", aliases=("购物车", "basket"), usage_key="usage.cart")
async def cart_command(c: Ctx) -> Reply:
    if not c.args:
        return await _show(c, await c.call(cart.view, c.app.db, user=c.handle))
    word, rest = c.args[0].lower(), c.args[1:]
    if word in ADD_WORDS and 1 <= len(rest) <= 2:
        n = qty(rest[1]) if len(rest) == 2 else 1
        return await _added(c, sku(rest[0]), n)
    if word in DEL_WORDS and len(rest) == 1:
        return await _show(c, await c.call(cart.remove, c.app.db, user=c.handle,
                                           sku=sku(rest[0])))
    if word in CLEAR_WORDS and not rest:
        return await _show(c, await c.call(cart.empty, c.app.db, user=c.handle))
    if word in PAY_WORDS:
        words = {w.lower() for w in rest}
        if not words <= set(POINTS_WORDS) | set(WALLET_WORDS):
            raise BadInput("bad.word", value=echo(" ".join(rest), 24))
        how = ("p" if words & set(POINTS_WORDS) else "") + \
            ("w" if words & set(WALLET_WORDS) else "")
        return await _checkout(c, how or "c", c.key("cart"))
    raise BadInput("bad.word", value=echo(word, 24))


@button("cart")
async def cart_button(c: Ctx) -> Reply:
    """`cart:v1:add|inc|dec|del:SKU`, `cart:v1:show`, `cart:v1:clear`."""
    if c.args in (("show",), ("clear",)):
        fn = cart.view if c.args[0] == "show" else cart.empty
        return await _show(c, await c.call(fn, c.app.db, user=c.handle))
    if len(c.args) != 2 or c.args[0] not in ("add", "inc", "dec", "del"):
        raise BadInput("bad.button")
    try:
        product = sku(c.args[1])
    except BadInput:
        raise BadInput("bad.button") from None
    what = c.args[0]
    if what == "add":
        return await _added(c, product, 1)
    if what == "del":
        return await _show(c, await c.call(cart.remove, c.app.db, user=c.handle, sku=product))
    seen = await c.call(cart.change, c.app.db, user=c.handle, sku=product,
                        delta=1 if what == "inc" else -1)
    return await _show(c, seen)


@button("cartpay", purchase=True)
async def cart_pay_button(c: Ctx) -> Reply:
    """`cartpay:v1:HOW:NONCE`: check out the whole cart (see the module's docstring)."""
    if len(c.args) != 2 or c.args[0] not in HOWS or not NONCE.match(c.args[1]):
        raise BadInput("bad.button")
    return await _checkout(c, c.args[0], f"btn:{c.user_id}:{c.args[1]}")


async def _added(c: Ctx, product: str, n: int) -> Reply:
    seen = await c.call(cart.add, c.app.db, user=c.handle, sku=product, qty=n)
    line = next((x for x in seen["lines"] if x["sku"].lower() == product.lower()), None)
    head = c.t("cart.added", name=echo(product_name(c.lang, line) if line else product, 40),
               qty=n)
    return await _show(c, seen, head)


async def _show(c: Ctx, seen: dict[str, Any], head: str | None = None) -> Reply:
    """The cart: its lines with their buttons, the total and what it earns, and the ways to
    pay for all of it."""
    text = [head] if head else []
    if not seen["lines"]:
        text.append(c.t("cart.empty"))
        return Reply().text("\n".join(text))
    cur = seen["currency"]
    text.append(c.t("cart.title", count=seen["count"]))
    rows: list[tuple[Button, ...]] = []
    for n, line in enumerate(seen["lines"], 1):
        text.append(c.t("cart.line", n=n, name=echo(product_name(c.lang, line), 40),
                        sku=line["sku"],
                        qty=line["qty"], total=c.money(line["total"], cur)))
        if line["problem"] == "product_inactive":
            text.append(c.t("cart.line_inactive"))
        elif line["problem"] == "out_of_stock":
            text.append(c.t("cart.line_out_of_stock", stock=line["stock"]))
        if n <= BUTTON_LINES:
            rows.append(_line_buttons(c, line))
    if seen["count"] > BUTTON_LINES:
        text.append(c.t("cart.more_lines", n=BUTTON_LINES))
    text.append(c.t("cart.total", total=c.money(seen["total"], cur)))
    text.append(earns_text(c.lang, seen))
    if seen["goods"]:
        text.append(c.t("cart.ships"))
    if seen["paused"]:
        text.append(c.t("refusal.sales_paused"))
    elif seen["ready"]:
        rows.extend(_pay_rows(c, seen))
    else:
        text.append(c.t("cart.fix_first"))
    if data := callback("cart", "clear"):
        rows.append((Button(c.t("cart.clear_button"), data),))
    return Reply().text("\n".join(text), tuple(rows))


def _line_buttons(c: Ctx, line: dict[str, Any]) -> tuple[Button, ...]:
    out = []
    name = echo(product_name(c.lang, line), 16)
    for what, label in (("dec", c.t("cart.minus", name=name, qty=line["qty"])),
                        ("inc", "➕"), ("del", "✖")):
        if data := callback("cart", what, line["sku"]):
            out.append(Button(label, data))
    return tuple(out)


def _pay_rows(c: Ctx, seen: dict[str, Any]) -> list[tuple[Button, ...]]:
    """Pay for the whole cart: online, from the wallet, with points (the rest online, or
    from the wallet where nothing can be collected online)."""
    cur, nonce = seen["currency"], secrets.token_urlsafe(6)
    online = c.app.takes_payments(c.req.channel)
    rows: list[tuple[Button, ...]] = []
    if online and (data := callback("cartpay", "c", nonce)):
        rows.append((Button(c.t("cart.checkout_button",
                                total=c.money(seen["total"], cur)), data),))
    if seen["wallet"] >= seen["total"] and (data := callback("cartpay", "w", nonce)):
        rows.append((Button(c.t("buy.wallet_button",
                                balance=c.money(seen["wallet"], cur)), data),))
    if seen["usable_points"] > 0:
        rest = seen["total"] - seen["usable_value"]
        how = "p" if online or rest == 0 else "pw"
        if (online or rest == 0 or seen["wallet"] >= rest) and \
                (data := callback("cartpay", how, nonce)):
            rows.append((Button(c.t("buy.points_button",
                                    points=i18n.pts(seen["usable_points"]),
                                    value=c.money(seen["usable_value"], cur)), data),))
    return rows


def earns_text(lang: str, seen: dict[str, Any]) -> str:
    """What paying the cart in cash earns at today's settings (SPEC §9), said before paying."""
    earns, cur = seen["earns"], seen["currency"]
    lines = []
    if earns["queue_cash"]:
        if earns["entry"]:
            lines.append(i18n.t(lang, "cart.earns_entry", amount=i18n.money(earns["entry"], cur)))
        else:
            lines.append(i18n.t(lang, "cart.earns_no_entry",
                                cash=i18n.money(earns["queue_cash"], cur),
                                min=i18n.money(earns["min_order"], cur)))
    if earns["points"]:
        lines.append(i18n.t(lang, "cart.earns_points", points=i18n.pts(earns["points"]),
                            price=i18n.price(earns["price_micro"])))
    if not lines:
        lines.append(i18n.t(lang, "cart.earns_none"))
    return "\n".join(lines)


async def _checkout(c: Ctx, how: str, key: str) -> Reply:
    """One order for the whole cart: from the wallet at once, or one invoice (Telegram's
    asks for name, phone and address when a line ships; WeChat Pay's is one pay link)."""
    seen = await c.call(cart.view, c.app.db, user=c.handle)
    use = None
    # an empty cart goes on to the engine: a repeated tap is answered with its order there,
    # anything else is refused `cart_empty`
    if "p" in how and seen["lines"]:
        if seen["usable_points"] == 0:
            return c.say("buy.no_points")
        use = seen["usable_points"]
    if "w" in how:
        result = await c.call(cart_checkout.pay_from_wallet, c.app.db, user=c.handle,
                              pay_points=use, key=f"{key}:buy")
        return Reply().text(await receipt(c, result))
    if not c.app.takes_payments(c.req.channel) and seen["total"] - (
            seen["usable_value"] if use else 0) > 0:
        return Reply().text(c.t("cart.no_online"), tuple(_pay_rows(c, seen)))
    method = c.req.channel if c.req.channel in ("telegram", "wechat") else "cash"
    opened = await c.call(cart_checkout.open_checkout, c.app.db, user=c.handle,
                          pay_points=use, channel=c.req.channel, method=method,
                          key=f"{key}:checkout")
    if opened["status"] == "cancelled":  # a repeated tap on an invoice since replaced
        raise Refusal("not_payable", opened["order"])
    if opened["token"] is None or opened["status"] != "awaiting_payment":
        return Reply().text(await receipt(c, opened))  # points paid it all, or a repeat
    return await _invoice(c, seen, opened, offer_points=use is None)


async def _invoice(c: Ctx, seen: dict[str, Any], opened: dict[str, Any], *,
                   offer_points: bool) -> Reply:
    cur = opened.get("currency") or seen["currency"]
    lines = opened.get("lines") or seen["lines"]
    names = {x["sku"]: product_name(c.lang, x) for x in seen["lines"]}
    items = "; ".join(c.t("cart.invoice_line", name=echo(names.get(x["sku"], x["sku"]), 24),
                          qty=x["qty"], total=c.money(x["total"], cur)) for x in lines)
    goods = bool(opened.get("goods"))
    invoice = Invoice(order=opened["order"], token=opened["token"],
                      title=c.t("cart.invoice_title", count=sum(x["qty"] for x in lines)),
                      description=c.t("cart.invoice_description", order=opened["order"],
                                      items=items, cash=c.money(opened["cash"], cur)),
                      amount=opened["cash"], currency=cur, need_name=goods,
                      need_phone_number=goods, need_shipping_address=goods)
    cfg = await c.cfg()
    note = c.t("cart.invoice_note", order=opened["order"], cash=c.money(opened["cash"], cur),
               expires=i18n.when(opened["expires_at"], cfg.timezone))
    rows: list[tuple[Button, ...]] = []
    # buttons under an invoice act on its order (the shop's `pay:v1:ORDER:w`), or replace it
    if seen["wallet"] >= opened["cash"] and ORDER_REF.match(opened["order"]) and \
            (data := callback("pay", opened["order"], "w")):
        rows.append((Button(c.t("pay.wallet_button", order=opened["order"],
                                balance=c.money(seen["wallet"], cur)), data),))
    if offer_points and seen["usable_points"] > 0 and \
            (data := callback("cartpay", "p", secrets.token_urlsafe(6))):
        rows.append((Button(c.t("buy.points_button", points=i18n.pts(seen["usable_points"]),
                                value=c.money(seen["usable_value"], cur)), data),))
    return Reply(items=[invoice]).text(note, tuple(rows))
