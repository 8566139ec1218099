"""Digital goods: operators upload codes, the stock is the unused codes, each unit paid gets
one code in the buyer's receipt exactly once, and the order is received at delivery."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

import handlers
from engine import checkout, service, users
from engine.errors import Refusal
from engine.verify import verify
from handlers import notify
from handlers.base import Request
from storage.db import Database
from storage.models import Code, JournalTxn, Order, Product
from tests.handlers_kit import OPERATOR, Chat, invoice, text
from tests.helpers import at, seed_shop

BUYER = "tg:5"


def digital(db: Database, sku: str = "GAME", price: str = "30.00", *,
            config: dict[str, Any] | None = None) -> None:
    seed_shop(db, users=(BUYER, "tg:6"), products=(("TEA", "100.00", "0.50", 15, "both"),),
              config=config)
    service.upsert_product(db, sku=sku, price=price, margin="0.50", lock_days=0,
                           scheme="points", name="Game key", kind="digital", at=at(1, 1))


def stock(db: Database, sku: str = "GAME") -> int | None:
    return db.read(lambda s: s.get(Product, sku).stock)


def codes_of(db: Database, order: str) -> list[str]:
    return list(db.read(lambda s: s.execute(
        select(Code.code).join(Order, Order.no == Code.order_no).where(Order.ref == order)
        .order_by(Code.id)).scalars().all()))


def receipts(chat_or_db: Any) -> list[dict[str, Any]]:
    db = chat_or_db.db if isinstance(chat_or_db, Chat) else chat_or_db
    rows = Chat(db).outbox("digital_codes")
    return [json.loads(r.params) for r in rows]


def upload(db: Database, *codes: str, sku: str = "GAME", key: str = "up1") -> dict[str, Any]:
    return service_upload(db, sku, list(codes), key)


def service_upload(db: Database, sku: str, codes: list[str], key: str) -> dict[str, Any]:
    from engine import codes as engine_codes

    return engine_codes.upload(db, sku=sku, codes=codes, actor=OPERATOR, key=key, at=at(1, 2))


def test_each_unit_paid_gets_one_code_in_its_receipt_and_the_order_is_received(db: Database):
    digital(db)
    assert upload(db, "AAA-1", "BBB-2", "CCC-3")["stock"] == 3
    r = service.buy(db, user=BUYER, sku="GAME", qty=2, at=at(2), order="G1", method="cash")
    assert codes_of(db, "G1") == ["AAA-1", "BBB-2"]
    assert stock(db) == 1
    assert r["received_at"] is not None  # delivered is received
    (receipt,) = receipts(db)
    assert receipt == {"order": "G1", "codes": [["GAME", "AAA-1"], ["GAME", "BBB-2"]],
                       "owed": 0}
    assert notify.render("digital_codes", receipt, "en") == (
        "Your codes for order G1:\nGAME: AAA-1\nGAME: BBB-2\n"
        "Keep them safe; /mycodes shows them again.")
    # the next buyer gets the next code; then the product is sold out
    service.buy(db, user="tg:6", sku="GAME", at=at(2, 11), order="G2", method="cash")
    assert codes_of(db, "G2") == ["CCC-3"] and stock(db) == 0
    with pytest.raises(Refusal) as refused:
        service.buy(db, user="tg:6", sku="GAME", at=at(2, 12), order="G3", method="cash")
    assert refused.value.code == "out_of_stock"
    assert verify(db).ok  # the books agree: codes move no money, received is journaled


def test_a_cart_with_goods_is_not_received_at_delivery_and_a_retry_gives_nothing_twice(
        sqlite_db: Database):
    digital(sqlite_db)
    upload(sqlite_db, "K1", "K2", "K3")
    lines = [{"sku": "TEA", "qty": 1}, {"sku": "GAME", "qty": 2}]
    first = service.buy(sqlite_db, user=BUYER, lines=lines, at=at(2), key="pay:1", method="cash")
    again = service.buy(sqlite_db, user=BUYER, lines=lines, at=at(2), key="pay:1", method="cash")
    assert again["replayed"] and again["order"] == first["order"]
    assert first["received_at"] is None  # the tea still ships
    assert codes_of(sqlite_db, first["order"]) == ["K1", "K2"]
    assert len(receipts(sqlite_db)) == 1 and stock(sqlite_db) == 1


def test_units_paid_with_no_code_left_are_owed_and_the_next_upload_sends_them(
        sqlite_db: Database):
    digital(sqlite_db)  # no codes yet: the stock is not counted, so the sale goes through
    r = service.buy(sqlite_db, user=BUYER, sku="GAME", qty=2, at=at(2), order="G1",
                    method="cash")
    assert r["received_at"] is None
    (receipt,) = receipts(sqlite_db)
    assert receipt == {"order": "G1", "codes": [], "owed": 2}
    assert "2 more to come" in notify.render("digital_codes", receipt, "en")
    got = upload(sqlite_db, "X1", "X2", "X3")
    assert (got["added"], got["filled"], got["stock"]) == (3, 2, 1)
    assert codes_of(sqlite_db, "G1") == ["X1", "X2"]
    late = receipts(sqlite_db)[1]
    assert late == {"order": "G1", "codes": [["GAME", "X1"], ["GAME", "X2"]], "owed": 0}
    order = sqlite_db.read(lambda s: s.execute(select(Order).where(Order.ref == "G1"))
                           .scalar_one())
    assert order.received_at is not None or order.status == "settled"


def test_a_refund_keeps_the_codes_given_and_does_not_put_them_back_in_stock(
        sqlite_db: Database):
    digital(sqlite_db, config={"store": {"settle_days": "7"}})
    upload(sqlite_db, "R1", "R2")
    service.buy(sqlite_db, user=BUYER, sku="GAME", at=at(2), order="G1", method="cash")
    assert stock(sqlite_db) == 1
    r = service.refund(sqlite_db, order="G1", at=at(3))
    assert r["status"] == "refunded"
    assert codes_of(sqlite_db, "G1") == ["R1"]  # spent: never given to anyone else
    assert stock(sqlite_db) == 1
    service.buy(sqlite_db, user="tg:6", sku="GAME", at=at(3, 11), order="G2", method="cash")
    assert codes_of(sqlite_db, "G2") == ["R2"]


def test_an_order_awaiting_payment_holds_its_unit_and_gets_its_code_when_paid(
        sqlite_db: Database):
    digital(sqlite_db)
    users.resolve(sqlite_db, BUYER)  # a channel's payer is a chat identity
    upload(sqlite_db, "P1", "P2")
    opened = checkout.open_checkout(sqlite_db, user=BUYER, sku="GAME", qty=1,
                                    channel="telegram", method="telegram", key="open:1",
                                    at=at(2))
    assert stock(sqlite_db) == 1
    assert upload(sqlite_db, "P3", key="up2")["stock"] == 2  # recounted: the open order holds one
    paid = checkout.record_payment(sqlite_db, channel="telegram", token=opened["token"],
                                   charge_id="ch1", amount=opened["cash"],
                                   currency=opened["currency"], buyer=BUYER, at=at(2, 11))
    assert paid["ok"], paid
    assert codes_of(sqlite_db, opened["order"]) == ["P1"] and stock(sqlite_db) == 2


# -- chat ------------------------------------------------------------------------------------
async def test_operator_uploads_codes_in_the_message_the_next_one_or_a_file(db: Database):
    digital(db)
    chat = Chat(db)
    assert text(await chat.send(OPERATOR, "/codes GAME\nA-1\n\n  B-2  \nA-1")) == (
        "GAME: 2 new codes added (0 already there), 0 went to buyers who were waiting for one;"
        " stock now 2.")
    assert text(await chat.send(OPERATOR, "/codes GAME")) == \
        "Send the codes for GAME now: one a line, or a text file."
    assert "1 new codes added (1 already there)" in text(await chat.send(OPERATOR, "B-2\nC-3"))
    assert stock(db) == 3
    reply = await handlers.dispatch(chat.app, Request(
        channel="telegram", identity=OPERATOR, request_id="doc1", text="/codes GAME",
        command="codes", args=("GAME",), document="\ufeffD-4\r\nE-5\r\n".encode()))
    assert "2 new codes added" in text(reply) and stock(db) == 5
    assert "GAME Game key: 5 / 0 / 0, stock 5" in text(await chat.send(OPERATOR, "/codes"))
    await chat.send("tg:2", "/start", lang="zh")
    zh = Chat(db, operators=("tg:2",))
    assert "GAME Game key：5 / 0 / 0，库存 5" in text(await zh.send("tg:2", "卡密"))
    actors = db.read(lambda s: s.execute(select(JournalTxn.actor).where(
        JournalTxn.kind == "codes")).scalars().all())
    assert actors == [OPERATOR] * 3


async def test_uploads_that_cannot_be_taken_are_refused_politely(sqlite_db: Database):
    digital(sqlite_db)
    chat = Chat(sqlite_db, operators=(OPERATOR, "tg:2"))
    for who, lang in ((BUYER, "en"), (OPERATOR, "en"), ("tg:2", "zh")):
        await chat.send(who, "/start", lang=lang)
    world = chat.world()
    assert text(await chat.send(OPERATOR, "/codes TEA\nX")) == (
        "That product is not a digital one: make it one with /kind SKU digital, then add its "
        "codes.")
    assert text(await chat.send("tg:2", "/codes TEA")).startswith("该商品不是数字商品")
    assert text(await chat.send(OPERATOR, "/codes NOPE\nX")).startswith("There is no such product")
    assert "at most 255 characters" in text(await chat.send(OPERATOR, "/codes GAME\n" + "x" * 300))
    assert text(await chat.send(BUYER, "/codes GAME\nX")) == \
        "Sorry, only the shop's operators can do that."
    assert chat.world() == world


async def test_a_buyer_pays_on_telegram_and_finds_the_code_again_with_mycodes(db: Database):
    digital(db)
    chat = Chat(db)
    await chat.send(OPERATOR, "/codes GAME\nZZ-9")
    reply = await chat.send(BUYER, "/buy GAME")
    assert invoice(reply).amount == 3000
    await chat.pay(BUYER, reply)
    (receipt,) = receipts(chat)
    assert receipt["codes"] == [["GAME", "ZZ-9"]]
    mine = text(await chat.send(BUYER, "我的卡密"))
    assert mine.startswith("Your codes (latest first):\nOrder N1, GAME: ZZ-9 (")
    assert text(await chat.send("tg:6", "/mycodes")) == "You have no codes yet."


async def test_an_operator_makes_a_product_digital_from_chat(sqlite_db: Database):
    seed_shop(sqlite_db, users=(BUYER,), products=(("KEY", "10.00", "0.20", 0, "none"),))
    chat = Chat(sqlite_db)
    assert text(await chat.send(OPERATOR, "/kind KEY digital")) == \
        "KEY is now digital (codes: /codes)."
    assert text(await chat.send(OPERATOR, "/kind KEY digital")) == \
        "KEY is already digital (codes: /codes); nothing changed."
    assert text(await chat.send(OPERATOR, "/kind KEY parcel")).startswith("Unknown kind parcel")
    body = sqlite_db.read(lambda s: s.execute(select(JournalTxn.body, JournalTxn.actor).where(
        JournalTxn.kind == "product").order_by(JournalTxn.id.desc()).limit(1)).one())
    assert json.loads(body[0])["kind"] == "digital" and body[1] == OPERATOR
    product = sqlite_db.read(lambda s: s.get(Product, "KEY"))
    assert (product.price, product.scheme, product.kind, product.stock) == (
        1000, "none", "digital", None)
    assert "1 new codes added" in text(await chat.send(OPERATOR, "/codes KEY\nK-1"))
    assert text(await chat.send(BUYER, "/kind KEY goods")) == \
        "Sorry, only the shop's operators can do that."


def test_with_settle_from_receipt_the_return_window_starts_at_delivery(sqlite_db: Database):
    digital(sqlite_db, config={"store": {"settle_from": "receipt", "settle_days": "7"}})
    upload(sqlite_db, "W-1")
    r = service.buy(sqlite_db, user=BUYER, sku="GAME", at=at(2), order="G1", method="cash")
    assert r["status"] == "pending"
    assert r["received_at"] == "2026-08-02T10:00:00+08:00"
    assert r["settles_at"] == "2026-08-09T00:00:00+08:00"  # receipt date + 7 days
