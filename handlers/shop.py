"""Browsing and buying: `/shop`, `/buy`, their buttons, and the payment confirmations the
adapters call (`precheck` before the channel charges, `paid` once it has)."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from datetime import datetime
from typing import Any

from engine import cart, checkout, offer, outlook, service, users
from engine.database import DatabaseUnavailable
from engine.errors import Refusal
from engine.orders import ORDER_REF

from . import i18n
from .base import App, Button, Invoice, Reply
from .parsing import BadInput, callback, echo, points, qty, sku
from .registry import Ctx, button, command

log = logging.getLogger(__name__)

POINTS_WORDS = ("points", "point", "积分")
WALLET_WORDS = ("wallet", "余额", "钱包")
ALL_WORDS = ("all", "全部")
NONCE = re.compile(r"^[A-Za-z0-9_-]{6,16}$")


def scheme_text(c: Ctx, p: dict[str, Any], cat: dict[str, Any]) -> str:
    """A product's rebate in plain words (SPEC §3, §4)."""
    lines = []
    if p["queue"]:
        key = "shop.queue" if p["enters_queue"] else "shop.queue_min"
        lines.append(c.t(key, amount=c.money(p["price"], cat["currency"]),
                         start=i18n.lock_start(c.lang, p["lock_days"]),
                         min=c.money(cat["min_order"], cat["currency"])))
    if p["scheme"] in ("points", "both"):
        lines.append(c.t("shop.points", points=i18n.pts(p["points"]),
                         price=i18n.price(cat["price_micro"])))
    if not lines:
        lines.append(c.t("shop.no_rebate"))
    return "\n".join("   " + line for line in lines)


def parse_buy(args: tuple[str, ...]) -> tuple[str, int, str | None, bool]:
    """`SKU [QTY] [points N|all] [wallet]` → (sku, qty, points or "all" or None, wallet)."""
    if not args:
        raise BadInput("bad.missing")
    product, n, pay_points, wallet = sku(args[0]), 1, None, False
    rest = list(args[1:])
    if rest and rest[0].isdigit():
        n = qty(rest.pop(0))
    while rest:
        word = rest.pop(0).lower()
        if word in POINTS_WORDS and rest:
            amount = rest.pop(0)
            pay_points = "all" if amount.lower() in ALL_WORDS else str(points(amount))
        elif word in WALLET_WORDS:
            wallet = True
        else:
            raise BadInput("bad.word", value=echo(word, 24))
    return product, n, pay_points, wallet


@command("buy", aliases=("购买", "买"), usage_key="usage.buy", purchase=True)
async def buy(c: Ctx) -> Reply:
    product, n, pay_points, wallet = parse_buy(c.args)
    return await _buy(c, product, n, pay_points, wallet)


@button("buy", purchase=True)
async def buy_button(c: Ctx) -> Reply:
    """`buy:v1:SKU:QTY` buys online; `buy:v1:SKU:QTY:w|p|pw:NONCE` with the wallet, with
    points (the rest online) or points and wallet. The nonce makes the button its own
    idempotency key: a double tap records one purchase."""
    if len(c.args) not in (2, 4) or (len(c.args) == 4 and (
            c.args[2] not in ("w", "p", "pw") or not NONCE.match(c.args[3]))):
        raise BadInput("bad.button")
    try:
        product, n = sku(c.args[0]), qty(c.args[1])
    except BadInput:
        raise BadInput("bad.button") from None
    how = c.args[2] if len(c.args) == 4 else ""
    key = f"btn:{c.user_id}:{c.args[3]}" if len(c.args) == 4 else None
    return await _buy(c, product, n, "all" if "p" in how else None, "w" in how, key)


async def _buy(c: Ctx, product: str, n: int, pay_points: str | None, wallet: bool,
               key: str | None = None, replaces: str | None = None) -> Reply:
    use = None if pay_points in (None, "all") else int(pay_points)
    q = await c.call(offer.quote, c.app.db, user=c.handle, sku=product, qty=n,
                     pay_points=use)
    product = q["sku"]
    if pay_points == "all":
        if q["usable_points"] == 0:
            return c.say("buy.no_points")
        use = q["usable_points"]
    if wallet:
        result = await c.call(service.buy, c.app.db, user=c.handle, sku=product, qty=n,
                              pay_points=use, method="wallet",
                              key=f"{key}:buy" if key else c.key("buy"))
        return Reply().text(await receipt(c, result))
    value = q["usable_value"] if pay_points == "all" else q["points_value"]
    if not c.app.takes_payments(c.req.channel) and q["total"] - value > 0:
        return await _no_online_payment(c, q, n)
    method = c.req.channel if c.req.channel in ("telegram", "wechat") else "cash"
    opened = await c.call(checkout.open_checkout, c.app.db, user=c.handle, sku=product, qty=n,
                          pay_points=use, channel=c.req.channel, method=method,
                          key=f"{key}:checkout" if key else c.key("checkout"),
                          replaces=replaces)
    if opened["token"] is None:  # points paid the whole total
        return Reply().text(await receipt(c, opened))
    cur = opened.get("currency") or q["currency"]
    invoice = Invoice(order=opened["order"], token=opened["token"],
                      title=c.t("invoice.title", name=echo(q["name"], 32), qty=n),
                      description=c.t("invoice.description", order=opened["order"],
                                      total=c.money(q["total"], cur),
                                      points=i18n.pts(opened["points_used"]),
                                      cash=c.money(opened["cash"], cur)),
                      amount=opened["cash"], currency=cur)
    cfg = await c.cfg()
    rows: list[tuple[Button, ...]] = []
    # Buttons under an invoice act on its order: pay that very order from the wallet
    if q["wallet"] >= opened["cash"] and (data := callback("pay", opened["order"], "w")):
        rows.append((Button(c.t("pay.wallet_button", order=opened["order"],
                                balance=c.money(q["wallet"], cur)), data),))
    points_rows = _alternatives(c, q, product, n, with_points=use is None, with_wallet=False,
                                replaces=opened["order"])
    rows.extend(points_rows)
    note = c.t("buy.invoice_note", order=opened["order"], cash=c.money(opened["cash"], cur),
               expires=i18n.when(opened["expires_at"], cfg.timezone))
    look = await c.call(outlook.outlook, c.app.db, user=c.handle, order=opened["order"])
    note += "\n" + outlook_text(c.lang, look, cur, points_offered=bool(points_rows))
    reply = Reply(items=[invoice])
    return reply.text(note, tuple(rows))


def outlook_text(lang: str, o: dict[str, Any], currency: str, *,
                 points_offered: bool = False) -> str:
    """What a purchase will and will not earn (`engine.outlook`), said before paying."""
    def m(fen: int) -> str:
        return i18n.money(fen, currency)

    lines = [i18n.t(lang, "outlook.title")]
    if o["queue"]:
        if o["entry"]:
            lines.append(i18n.t(lang, "outlook.entry", amount=m(o["entry"]),
                                matures=i18n.day(o["matures_at"]),
                                lock=i18n.days(lang, o["lock_days"])))
        else:
            lines.append(i18n.t(lang, "outlook.no_entry", cash=m(o["cash"]),
                                min=m(o["min_order"])))
    if o["points"]:
        lines.append(i18n.t(lang, "outlook.points", points=i18n.pts(o["points"]),
                            price=i18n.price(o["price_micro"])))
    if o["scheme"] not in ("queue", "points", "both"):
        lines.append(i18n.t(lang, "outlook.none"))
    if o["accel"]:
        lines.append(i18n.t(lang, "outlook.accel", name=echo(o["referrer"] or "-", 32),
                            amount=m(o["accel"])))
    if o["points_value"]:
        lines.append(i18n.t(lang, "outlook.points_paid", value=m(o["points_value"]),
                            cash=m(o["cash"])))
    elif points_offered and o["scheme"] != "none":
        lines.append(i18n.t(lang, "outlook.points_hint"))
    if o["settles_at"] is not None and o["scheme"] != "none":
        lines.append(i18n.t(lang, "outlook.window", days=o["settle_days"],
                            settles=i18n.day(o["settles_at"])))
    return "\n".join(lines)


def _alternatives(c: Ctx, q: dict[str, Any], product: str, n: int,
                  with_points: bool = True, with_wallet: bool = True,
                  replaces: str | None = None) -> tuple[tuple[Button, ...], ...]:
    """Buttons to pay otherwise. Under an open order (`replaces`) the points button is
    `pay:v1:ORDER:p`: it replaces that order by one paid partly with points."""
    rows: list[tuple[Button, ...]] = []
    nonce = secrets.token_urlsafe(6)
    if with_wallet and q["wallet"] >= q["total"] and (
            data := callback("buy", product, n, "w", nonce)):
        rows.append((Button(c.t("buy.wallet_button",
                                balance=c.money(q["wallet"], q["currency"])), data),))
    if with_points and q["usable_points"] > 0:
        online = c.app.takes_payments(c.req.channel)
        covers = q["usable_value"] >= q["total"]
        rest = q["total"] - q["usable_value"]
        how = "pw" if not online and not covers else "p"
        data = callback("pay", replaces, "p") if replaces and online else \
            callback("buy", product, n, how, nonce)
        if (online or covers or q["wallet"] >= rest) and data:
            rows.append((Button(c.t("buy.points_button", points=i18n.pts(q["usable_points"]),
                                    value=c.money(q["usable_value"], q["currency"])), data),))
    return tuple(rows)


async def _no_online_payment(c: Ctx, q: dict[str, Any], n: int) -> Reply:
    rows = _alternatives(c, q, q["sku"], n)
    text = c.t("buy.no_online", total=c.money(q["total"], q["currency"]),
               wallet=c.money(q["wallet"], q["currency"]), points=i18n.pts(q["points"]),
               sku=q["sku"], qty=n)
    look = await c.call(outlook.outlook, c.app.db, user=c.handle, sku=q["sku"], qty=n)
    points_offered = any(b.data and ":p" in b.data for row in rows for b in row)
    text += "\n" + outlook_text(c.lang, look, q["currency"], points_offered=points_offered)
    return Reply().text(text, rows)


@button("pay", purchase=True)
async def pay_button(c: Ctx) -> Reply:
    """Buttons under an invoice act on its order, never on a new one: `pay:v1:ORDER:w` pays
    that order from the wallet (keyed by the order: a double tap pays once and answers the
    same receipt); `pay:v1:ORDER:p` replaces it by an order paid with points, the rest
    online. Someone else's order, or one no longer awaiting payment, is refused politely."""
    if len(c.args) != 2 or c.args[1] not in ("w", "p") or not ORDER_REF.match(c.args[0]):
        raise BadInput("bad.button")
    ref, how = c.args
    if how == "w":
        result = await c.call(checkout.pay_with_wallet, c.app.db, user=c.handle, order=ref,
                              key=f"btn:{c.user_id}:pay:{ref}:w")
        await tidy_cart(c.app, result)  # the order may be a cart's (docs/cart.md)
        return Reply().text(await receipt(c, result))
    key = f"btn:{c.user_id}:pay:{ref}:p"
    sku_, n, done = await c.call(checkout.open_order_line, c.app.db, user=c.handle,
                                 order=ref, replaced_by=f"{key}:checkout")
    # done: a repeated tap, answered with the same invoice (the points are already spent)
    return await _buy(c, sku_, n, None if done else "all", False, key, replaces=ref)


async def receipt(c: Ctx, result: dict[str, Any]) -> str:
    cfg = await c.cfg()
    return render_receipt(c.lang, result, cfg.currency)


async def receipt_on(app: App, channel: str, result: dict[str, Any]) -> tuple[str, str] | None:
    """The receipt of a payment a channel collected outside a conversation (WeChat Pay's
    notification), for the buyer's first identity on `channel` (`wx`): (identity, text) in
    their language, or None when they have none there."""
    await tidy_cart(app, result)
    identity = await asyncio.to_thread(users.identity_on, app.db, result["user"], channel)
    if identity is None:
        return None
    lang = await asyncio.to_thread(users.lang_of, app.db, identity) or "zh"
    cfg = await asyncio.to_thread(app.db.read, users.store_config)
    return identity, render_receipt(lang, result, cfg.currency)


async def tidy_cart(app: App, result: dict[str, Any]) -> None:
    """A paid order opened from the buyer's cart takes its lines out of the cart now
    (docs/cart.md). Never fails the payment's answer: the next look at the cart does it."""
    try:
        await asyncio.to_thread(cart.tidy, app.db, user=result["user"])
    except Exception:  # noqa: BLE001 - the payment is recorded; the cart can wait
        log.warning("emptying the cart after order %s failed", result.get("order"),
                    exc_info=True)


def render_receipt(lang: str, r: dict[str, Any], currency: str) -> str:
    """What the purchase earned: the queue entry and its maturity, points minted; or, inside
    a return window, when its rebates start (SPEC §8)."""
    def m(fen: int) -> str:
        return i18n.money(fen, currency)

    several = r.get("lines") or []
    if len(several) > 1:  # a cart's order (docs/cart.md): one line each
        lines = [i18n.t(lang, "receipt.lines_head", order=r["order"], count=len(several),
                        total=m(r["total"]))]
        lines += [i18n.t(lang, "receipt.line", sku=x["sku"], qty=x["qty"], total=m(x["total"]))
                  for x in several]
    else:
        lines = [i18n.t(lang, "receipt.head", order=r["order"], sku=r["sku"], qty=r["qty"],
                        total=m(r["total"]))]
    if r.get("points_used"):
        lines.append(i18n.t(lang, "receipt.points_used", points=i18n.pts(r["points_used"]),
                            value=m(r["points_value"]), cash=m(r["cash"])))
    if r["status"] == "settled":
        if r.get("entry"):
            lines.append(i18n.t(lang, "receipt.entry", seq=r["entry"], amount=m(r["cash"]),
                                matures=_iso(r.get("matures_at"))))
        if r.get("minted"):
            lines.append(i18n.t(lang, "receipt.minted", points=i18n.pts(r["minted"])))
        if not r.get("entry") and not r.get("minted"):
            lines.append(i18n.t(lang, "receipt.no_rebate"))
    elif r["status"] == "pending" and not r.get("settles_at"):
        # settle_from=receipt (SPEC §9): no date until the buyer confirms it arrived
        lines.append(i18n.t(lang, "receipt.window_receipt"))
    elif r["status"] == "pending":
        lines.append(i18n.t(lang, "receipt.window", settles=_iso(r.get("settles_at"))))
    return "\n".join(lines)


def _iso(value: str | None) -> str:
    if not value:
        return "-"
    return i18n.when(datetime.fromisoformat(value))


# -- payment confirmations (called by the adapters) ------------------------------------------

async def _lang(app: App, identity: str) -> str:
    try:
        return await asyncio.to_thread(users.lang_of, app.db, identity) or "en"
    except Exception:  # noqa: BLE001 - a language is never worth failing a payment answer
        return "en"


async def precheck(app: App, token: str, amount: int, currency: str,
                   identity: str) -> tuple[bool, str | None]:
    """The channel's last question before it charges: (True, None) or (False, why) with a
    short text in the buyer's language. Never raises."""
    try:
        code = await asyncio.to_thread(checkout.precheck, app.db, token=token, amount=amount,
                                       currency=currency, identity=identity)
    except Exception:
        log.exception("precheck of a checkout failed")
        code = "error"
    if code is None:
        return True, None
    return False, i18n.t(await _lang(app, identity), f"checkout.{code}")


async def paid(app: App, token: str, amount: int, currency: str, charge_id: str, channel: str,
               identity: str, inbox_update: int | None = None) -> Reply:
    """A channel says it charged the buyer: record it exactly once (per charge id) and answer
    with the receipt; a charge that cannot be recorded is flagged to every operator and the
    buyer is told the shop will sort it out. Raises only `DatabaseUnavailable`: the charge is
    real and unrecorded, so the adapter must retry it (and report it loudly if it cannot)."""
    lang = await _lang(app, identity)
    try:
        result = await asyncio.to_thread(
            checkout.record_payment, app.db, channel=channel, token=token,
            charge_id=str(charge_id), amount=amount, currency=currency, buyer=identity,
            operators=app.operators, inbox_update=inbox_update)
        if not result["ok"]:
            log.warning("payment %s on %s refused: %s", charge_id, channel, result["code"])
            return Reply().text(i18n.t(lang, "paid.flagged", order=result["order"] or "-"))
        await tidy_cart(app, result)
        cfg = await asyncio.to_thread(app.db.read, users.store_config)
        return Reply().text(render_receipt(lang, result, cfg.currency))
    except Refusal as exc:
        return Reply().text(i18n.t(lang, f"refusal.{exc.code}"))
    except DatabaseUnavailable:
        raise
    except Exception:
        log.exception("recording payment %s on %s failed", charge_id, channel)
        return Reply().text(i18n.t(lang, "paid.error"))
