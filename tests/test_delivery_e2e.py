"""Delivery end to end over real sockets (docs/delivery.md): the real python-telegram-bot
Application polling the loopback Bot API stand-in, the real conversations and engine. The
payment arrives with the invoice's `order_info`; the operator ships; the buyer confirms with
the button; the order settles from its receipt."""

from __future__ import annotations

from sqlalchemy import select

from engine import service
from storage.models import Order, Outbox, Shipment
from storage.ratelimit import RateLimiter
from tests.test_telegram_e2e import OPERATOR, running_shop, setup_shop

BUYER = 2


async def test_a_parcel_from_telegram_payment_to_receipt(sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        await setup_shop(s)  # TEA: goods (the default kind)
        service.configure(s.app.db, {"store": {"settle_days": "7", "settle_from": "receipt"}})
        await s.say(BUYER, "/start")
        token, amount = await s.buy(BUYER, "TEA")
        assert await s.precheck(BUYER, token, amount) == (True, None)
        receipt = await s.pay_shipped(BUYER, token, amount, "charge-1", name="Zhang San",
                                      phone="+86 138 0000 0000", city="Beijing",
                                      street="1 Example Road", post_code="100000")
        assert "N1" in receipt

        listed = await s.say(OPERATOR, "/orders ship")
        assert "Orders to ship: 1" in listed
        assert "Zhang San, +86 138 0000 0000, 1 Example Road, Beijing, Beijing, 100000, CN" \
            in listed
        assert "marked shipped: SF SF1234567890" in \
            await s.say(OPERATOR, "/ship N1 SF SF1234567890")
        calls = await s.send(BUYER, "/orders")
        markup = calls[0].params["reply_markup"]
        assert "recv:v1:N1" in str(markup)
        assert "Thank you! Order N1 is marked received." in await s.press(BUYER, "recv:v1:N1")

        db = s.app.db
        order = db.read(lambda x: x.execute(select(Order).where(Order.ref == "N1")).scalar_one())
        ship = db.read(lambda x: x.get(Shipment, "N1"))
        assert order.status == "pending" and order.received_at == ship.received_at
        assert (ship.carrier, ship.tracking, ship.received_by) == ("SF", "SF1234567890", "buyer")
        shipped = db.read(lambda x: x.execute(select(Outbox.key).where(
            Outbox.kind == "order_shipped")).scalars().all())
        assert shipped == ["ship:N1"]
        service.settle(db, at=order.settles_at)
        settled = db.read(lambda x: x.execute(select(Order).where(Order.ref == "N1"))
                          .scalar_one())
        assert settled.status == "settled" and settled.entry_seq == 1
