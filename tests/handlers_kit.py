"""A chat harness for the conversation tests: send text, press buttons, pay invoices."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import func, select

import handlers
from engine.state import snapshot
from handlers import shop
from handlers.base import App, Button, Channels, Invoice, Photo, Reply, Request, Text
from storage.db import Database
from storage.models import JournalTxn, Outbox
from storage.ratelimit import RateLimiter

OPERATOR = "tg:1"


class Chat:
    def __init__(self, db: Database, *, operators: tuple[str, ...] = (OPERATOR,),
                 channel: str = "telegram", payments: bool = True, **app: Any) -> None:
        self.db = db
        self.channel = channel
        self.app = App(db=db, operators=frozenset(operators),
                       channels=Channels(payments=frozenset({channel} if payments else ()),
                                         bot_username="shop_bot"),
                       limiter=app.pop("limiter", RateLimiter.disabled()), **app)
        self._ids = itertools.count(1)
        self._charges = itertools.count(1)

    async def send(self, identity: str, text: str = "", *, callback: str | None = None,
                   command: str | None = None, args: tuple[str, ...] = (),
                   lang: str | None = "en", payload: str | None = None,
                   request_id: str | None = None, name: str | None = None) -> Reply:
        request = Request(channel=self.channel, identity=identity,  # type: ignore[arg-type]
                          request_id=request_id or f"r{next(self._ids)}", command=command,
                          args=args, text=text, callback=callback, lang=lang,
                          display_name=name, start_payload=payload)
        reply = await handlers.dispatch(self.app, request)
        assert isinstance(reply, Reply)
        return reply

    async def pay(self, identity: str, reply: Reply, *, amount: int | None = None,
                  charge: str | None = None) -> Reply:
        inv = invoice(reply)
        ok, error = await shop.precheck(self.app, inv.token, inv.amount, inv.currency, identity)
        assert ok, error
        return await shop.paid(self.app, inv.token, inv.amount if amount is None else amount,
                               inv.currency, charge or f"ch{next(self._charges)}",
                               self.channel, identity)

    async def setup_shop(self) -> None:
        """TEA (queue, 100.00, 15 days), RICE (points, 50.00), SOFA (both, 1000.00);
        10000.00 in the queue pool: built through the operator's commands (the engine-level
        builder is tests.helpers.seed_shop)."""
        for line, expect in (("/product TEA 100.00 0.30 15 queue Green tea", "Product TEA saved"),
                             ("/product RICE 50.00 0.40 0 points Rice", "Product RICE saved"),
                             ("/product SOFA 1000.00 0.35 30 both Sofa", "Product SOFA saved"),
                             ("/deposit queue 10000.00", "Deposited 10000.00 CNY")):
            got = text(await self.send(OPERATOR, line))
            assert expect in got, got

    def state(self) -> dict[str, Any]:
        return self.db.read(snapshot)

    def journal_size(self) -> int:
        return self.db.read(lambda s: s.execute(select(func.count()).select_from(JournalTxn))
                            .scalar_one())

    def outbox(self, kind: str | None = None) -> list[Outbox]:
        stmt = select(Outbox).order_by(Outbox.id)
        if kind:
            stmt = stmt.where(Outbox.kind == kind)
        return list(self.db.read(lambda s: s.execute(stmt).scalars().all()))

    def world(self) -> tuple[Any, ...]:
        """Everything a refused request must leave unchanged."""
        return (self.state(), self.journal_size(), len(self.outbox()))


def text(reply: Reply) -> str:
    return "\n".join(i.text for i in reply.items if isinstance(i, Text))


def buttons(reply: Reply) -> list[Button]:
    return [b for i in reply.items if isinstance(i, Text) for row in i.buttons for b in row]


def invoice(reply: Reply) -> Invoice:
    found = [i for i in reply.items if isinstance(i, Invoice)]
    assert len(found) == 1, reply
    return found[0]


def photos(reply: Reply) -> list[Photo]:
    return [i for i in reply.items if isinstance(i, Photo)]
