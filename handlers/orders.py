"""`/orders` (订单): the buyer's latest orders — paid, shipped and how, received, settled,
refunded — and when each one's rebates come, with a receipt button under each shipped order;
`/orders ship` (operators): the paid goods orders waiting to be shipped, with their address.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from engine import delivery_views
from engine.delivery import PAID

from . import i18n
from .base import Reply
from .delivery import address_text, receive_buttons
from .parsing import BadInput, echo
from .registry import Ctx, command

SHIP_WORDS = ("ship", "发货", "待发货")
SHIP_PAGE = 20


def _lines(lines: list[tuple[str, int]]) -> str:
    return ", ".join(f"{sku} ×{qty}" for sku, qty in lines[:5]) + \
        (" …" if len(lines) > 5 else "")


@command("orders", aliases=("订单", "我的订单"), usage_key="usage.orders")
async def orders(c: Ctx) -> Reply:
    if c.args:
        if len(c.args) == 1 and c.args[0].lower() in SHIP_WORDS:
            return await _to_ship(c)
        raise BadInput("bad.missing")
    view = await c.call(delivery_views.buyer_orders, c.app.db, user=c.handle)
    if not view["orders"]:
        return c.say("orders.empty")
    tz = view["timezone"]
    out = [c.t("orders.title")]
    for o in view["orders"]:
        head = c.t("orders.head", order=o["order"], lines=_lines(o["lines"]),
                   total=c.money(o["total"], o["currency"]))
        out.append(c.t("orders.row", line=head, detail=_detail(c, o, tz)))
        if (stage := _delivery(c, o, tz)) is not None:
            out.append("   " + stage)
    rows = receive_buttons(c, view["orders"])
    if rows:
        out.append(c.t("orders.confirm_hint"))
    return Reply().text("\n".join(out), rows)


def _detail(c: Ctx, o: dict[str, Any], tz: ZoneInfo) -> str:
    """Where the order's money stands and when its rebates come: what it earned once
    settled, the day they start, or so long after receipt (`settle_from = receipt`)."""
    status = o["status"]
    if status == "settled":
        earned = []
        if o["entry"]:
            earned.append(c.t("orders.entry", seq=o["entry"],
                              matures=i18n.when(o["matures_at"], tz)))
        if o["minted"]:
            earned.append(c.t("orders.minted", points=i18n.pts(o["minted"])))
        return c.t("orders.settled_with", parts=c.t("list.sep").join(earned)) if earned \
            else c.t("orders.settled")
    if status == "pending" and o["settles_at"] is None:
        return c.t("orders.pending_receipt", days=i18n.days(c.lang, o["settle_days"]))
    if status == "pending":
        return c.t("orders.pending", settles=i18n.when(o["settles_at"], tz))
    return c.t(f"orders.{status}") if i18n.has(f"orders.{status}") else status


def _delivery(c: Ctx, o: dict[str, Any], tz: ZoneInfo) -> str | None:
    """Where the parcel is (goods, paid): to be shipped, shipped how, or received."""
    if o["received_at"] is not None:
        return c.t("orders.received", at=i18n.when(o["received_at"], tz))
    if o["status"] not in PAID or not o["goods"]:
        return None
    if o["shipped_at"] is not None:
        return c.t("orders.shipped", carrier=echo(o["carrier"] or "-", 40),
                   tracking=echo(o["tracking"] or "-", 64), at=i18n.when(o["shipped_at"], tz))
    return c.t("orders.to_ship") if o["address"] else c.t("orders.no_address")


async def _to_ship(c: Ctx) -> Reply:
    if not c.operator:
        return c.say("operator_only")
    view = await c.call(delivery_views.to_ship, c.app.db, limit=SHIP_PAGE)
    if not view["orders"]:
        return c.say("ship.none")
    tz = view["timezone"]
    out = [c.t("ship.title", count=view["count"])]
    for o in view["orders"]:
        where = address_text(o) if o["address"] else c.t("ship.no_address")
        out.append(c.t("ship.row", order=o["order"], lines=_lines(o["lines"]),
                       user=echo(o["display_name"] or o["user"], 32),
                       paid=i18n.when(o["paid_at"], tz), where=where))
        if o["held"]:
            out.append("   " + c.t("ship.held"))
    if view["count"] > len(view["orders"]):
        out.append(c.t("ship.more", n=view["count"] - len(view["orders"])))
    out.append(c.t("ship.how"))
    return Reply().text("\n".join(out))
