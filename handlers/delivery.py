"""Delivery in chat (docs/delivery.md): the buyer's address (`/address`, 收货地址), the
operator's `/ship ORDER CARRIER NUMBER` and `/hold ORDER [off]`, the buyer's receipt
(the `recv:v1:ORDER` button, `/receive`, 确认收货), and `shipping_details`, which the
Telegram adapter calls with a payment's `order_info` before it records the payment."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from engine import delivery, delivery_views
from engine.errors import Refusal
from engine.orders import ORDER_REF

from . import i18n
from .base import App, Button, Reply
from .parsing import BadInput, callback, echo, normalise
from .registry import Ctx, button, command

log = logging.getLogger(__name__)


def address_text(a: dict[str, Any]) -> str:
    return f"{echo(a['name'], 64)}, {echo(a['phone'], 32)}, {echo(a['address'], 400)}"


def _order_arg(text: str) -> str:
    ref = normalise(text)
    if not ORDER_REF.match(ref):
        raise BadInput("bad.order", value=echo(text, 32))
    return ref


@command("address", aliases=("收货地址", "地址", "addr"), usage_key="usage.address")
async def address(c: Ctx) -> Reply:
    """`/address` shows the saved address; `/address NAME PHONE ADDRESS…` confirms a new one,
    kept for next time and attached to paid goods orders that have none yet."""
    if not c.args:
        saved = await c.call(delivery.saved_address, c.app.db, user=c.handle)
        if saved is None:
            return c.say("address.none")
        return c.say("address.current", address=address_text(saved))
    if len(c.args) < 3:
        raise BadInput("bad.address")
    name, phone, rest = c.args[0], normalise(c.args[1]), " ".join(c.args[2:])
    try:
        saved = await c.call(delivery.save_address, c.app.db, user=c.handle, name=name,
                             phone=phone, address=rest)
    except Refusal as exc:
        if exc.code == "invalid_address":
            raise BadInput("bad.address") from None
        raise
    text = c.t("address.saved", address=address_text(saved))
    if saved["attached"]:
        text += "\n" + c.t("address.attached", orders=", ".join(saved["attached"]))
    return Reply().text(text)


@command("ship", aliases=("发货",), operator=True, usage_key="usage.ship")
async def ship(c: Ctx) -> Reply:
    """`/ship ORDER CARRIER NUMBER`: the order is shipped, its buyer told (outbox)."""
    if len(c.args) != 3:
        raise BadInput("bad.missing")
    ref, carrier, number = _order_arg(c.args[0]), normalise(c.args[1]), normalise(c.args[2])
    if not delivery.CARRIER.match(carrier) or not delivery.TRACKING.match(number):
        raise BadInput("bad.tracking", value=echo(f"{carrier} {number}", 48))
    r = await c.call(delivery.ship, c.app.db, order=ref, carrier=carrier, tracking=number,
                     actor=c.req.identity)
    key = "ship.again" if r.get("replayed") else "ship.done"
    return c.say(key, order=r["order"], carrier=echo(r["carrier"], 40),
                 tracking=echo(r["tracking"], 64), user=echo(r.get("user", "-"), 32))


@command("hold", aliases=("暂停收货",), operator=True, usage_key="usage.hold")
async def hold(c: Ctx) -> Reply:
    """`/hold ORDER` holds the order's automatic receipt (the buyer complained);
    `/hold ORDER off` releases it."""
    if not 1 <= len(c.args) <= 2 or (len(c.args) == 2 and c.args[1].lower() not in
                                     ("off", "取消")):
        raise BadInput("bad.missing")
    on = len(c.args) == 1
    r = await c.call(delivery.hold, c.app.db, order=_order_arg(c.args[0]), on=on,
                     actor=c.req.identity)
    text = c.t("hold.on" if on else "hold.off", order=r["order"])
    if r["received"]:
        text += "\n" + c.t("hold.received", order=r["order"])
    return Reply().text(text)


@command("receive", aliases=("确认收货", "收货", "received"), usage_key="usage.receive")
async def receive(c: Ctx) -> Reply:
    """`/receive ORDER` (确认收货 ORDER) confirms an order arrived; without an order, a
    button for each shipped order still waiting for it."""
    if len(c.args) > 1:
        raise BadInput("bad.missing")
    if c.args:
        return await _confirm(c, _order_arg(c.args[0]))
    view = await c.call(delivery_views.buyer_orders, c.app.db, user=c.handle, limit=20)
    rows = receive_buttons(c, view["orders"])
    if not rows:
        return c.say("receive.nothing")
    return c.say("receive.choose", rows)


def receive_buttons(c: Ctx, orders: list[dict[str, Any]]) -> tuple[tuple[Button, ...], ...]:
    """A `recv:v1:ORDER` button for each order the buyer can confirm: goods shipped and not
    received; a pending order with nothing to ship whose window waits for its receipt."""
    rows = []
    for o in orders:
        if o["received_at"] is not None or o["status"] not in delivery.PAID:
            continue
        waiting = o["shipped_at"] is not None if o["goods"] else \
            o["status"] == "pending" and o["settles_at"] is None
        if waiting and (data := callback("recv", o["order"])):
            rows.append((Button(c.t("receive.button", order=o["order"]), data),))
    return tuple(rows)


@button("recv")
async def receive_button(c: Ctx) -> Reply:
    """`recv:v1:ORDER`: never trusted — the order must be the tapper's own and shipped."""
    if len(c.args) != 1 or not ORDER_REF.match(c.args[0]):
        raise BadInput("bad.button")
    return await _confirm(c, c.args[0])


async def _confirm(c: Ctx, ref: str) -> Reply:
    r = await c.call(delivery.confirm_receipt, c.app.db, order=ref, user=c.handle)
    tz = (await c.cfg()).timezone
    if r["already"]:
        return c.say("receive.already", order=r["order"], at=i18n.when(r["received_at"], tz))
    text = c.t("receive.done", order=r["order"])
    if r["status"] == "settled":
        text += "\n" + c.t("receive.settled")
    elif r["settles_at"] is not None:
        text += "\n" + c.t("receive.settles", settles=i18n.when(r["settles_at"], tz))
    return Reply().text(text)


# -- called by the Telegram adapter ---------------------------------------------------------

def one_line_address(parts: dict[str, Any]) -> str:
    """Telegram's `ShippingAddress` fields as one line, street first."""
    order = ("street_line1", "street_line2", "city", "state", "post_code", "country_code")
    return ", ".join(str(parts[k]).strip() for k in order if parts.get(k))


async def shipping_details(app: App, *, token: str, identity: str, name: str | None,
                           phone: str | None, address: dict[str, Any] | None,
                           at: datetime | None = None) -> bool:
    """A Telegram payment's `order_info` for the checkout named `token`, recorded before the
    payment itself (`delivery.record_checkout_address`). True when recorded; never raises:
    an address that cannot be kept must not stop the money being recorded — the order then
    shows "no address yet" to the operator and asks the buyer for `/address`."""
    if not name or not phone or not address:
        return False
    try:
        await asyncio.to_thread(delivery.record_checkout_address, app.db, token=token,
                                identity=identity, name=name, phone=phone,
                                address=one_line_address(address), at=at)
    except Exception as exc:  # noqa: BLE001 - logged; the payment goes on
        log.warning("shipping details of checkout for %s not recorded: %s", identity, exc)
        return False
    return True
