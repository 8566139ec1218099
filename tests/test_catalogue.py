"""The catalogue's rules (engine/catalogue.py) and its conversations in zh and en
(handlers/catalogue.py, the operator commands in handlers/admin_store.py)."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import func, select

import handlers
from engine import catalogue, service
from engine.errors import Refusal
from engine.verify import verify
from handlers.base import Card, Reply, Request, Upload
from storage.models import JournalTxn, Media, ProductPhoto
from tests.handlers_kit import OPERATOR, Chat, buttons, text
from tests.helpers import seed_shop
from tests.test_catalogue_telegram import png

PRODUCTS = (("TEA", "100.00", "0.50", 15, "both", "绿茶"), ("RICE", "50.00", "0.40", 0, "points",
                                                               "大米"),
            ("PEN", "5.00", "0.10", 0, "none", "Pen"))


_requests = itertools.count(1)


async def send_photo(chat: Chat, identity: str, upload: Upload, caption: str = "") -> Reply:
    """A photo as the adapters pass it on: `/photo` with the upload, or the caption."""
    request = Request(channel="telegram", identity=identity, request_id=f"photo{next(_requests)}",
                      command=None if caption else "photo", text=caption, upload=upload)
    return await handlers.dispatch(chat.app, request)


def cards(reply) -> list[Card]:
    return [i for i in reply.items if isinstance(i, Card)]


# -- the engine ------------------------------------------------------------------------------

def test_a_photo_is_stored_once_by_its_bytes_however_often_it_is_added(db):
    memdb = db  # SQLite file and PostgreSQL
    seed_shop(memdb, users=(), products=PRODUCTS)
    first = catalogue.add_photo(memdb, sku="TEA", content=png(1), channel="telegram",
                                channel_id="AgAC-1", actor="tg:1")
    again = catalogue.add_photo(memdb, sku="TEA", content=png(1))
    other = catalogue.add_photo(memdb, sku="RICE", content=png(1), channel="wechat",
                                channel_id="wx-9")
    assert (first["position"], again["position"], again["photos"]) == (1, 1, 1)
    assert other["sha256"] == first["sha256"]
    (media,) = memdb.read(lambda s: s.execute(select(Media)).scalars().all())
    assert (media.tg_file_id, media.wx_media_id, media.content) == ("AgAC-1", "wx-9", png(1))
    assert memdb.read(lambda s: s.execute(select(func.count()).select_from(ProductPhoto))
                      .scalar_one()) == 2
    assert catalogue.add_photo(memdb, sku="TEA", content=png(2))["position"] == 2
    assert catalogue.clear_photos(memdb, sku="TEA")["removed"] == 2
    assert catalogue.card(memdb, "TEA")["photos"] == []
    assert verify(memdb).ok  # the catalogue's journal entries keep the chain whole
    actors = memdb.read(lambda s: s.execute(select(JournalTxn.kind, JournalTxn.actor).where(
        JournalTxn.kind.like("product_%"))).all())
    assert ("product_photo", "tg:1") in actors


@pytest.mark.parametrize("content", [b"", b"not a photo", b"\xff\xd8\xff" + b"x" * (5 << 20)])
def test_what_is_not_a_showable_photo_is_refused_and_changes_nothing(memdb, content):
    seed_shop(memdb, users=(), products=PRODUCTS)
    with pytest.raises(Refusal) as refused:
        catalogue.add_photo(memdb, sku="TEA", content=content)
    assert refused.value.code == "invalid_event"
    with pytest.raises(Refusal, match="unknown_product"):
        catalogue.add_photo(memdb, sku="NOPE", content=png(1))
    assert memdb.read(lambda s: s.execute(select(func.count()).select_from(Media))
                      .scalar_one()) == 0


def test_categories_search_and_pages_see_only_what_is_on_sale(db):
    memdb = db  # SQLite file and PostgreSQL (ILIKE, its escapes)
    seed_shop(memdb, users=(), products=PRODUCTS + tuple(
        (f"T{i}", "9.00", "0.10", 0, "none", f"Tea no. {i}") for i in range(6)))
    for sku in ("TEA", *(f"T{i}" for i in range(6))):
        catalogue.describe(memdb, sku=sku, field="category", text="  Tea   leaves ")
    catalogue.describe(memdb, sku="RICE", field="description_en", text="Grown 100% by hand_")
    service.set_on_sale(memdb, sku="T5", active=False)
    assert catalogue.categories(memdb) == [{"name": "Tea leaves", "count": 6},
                                           {"name": None, "count": 2}]
    tea = catalogue.page(memdb, category="Tea leaves", page=1)
    assert (tea["count"], tea["pages"], [p["sku"] for p in tea["products"]]) == (6, 2, ["TEA"])
    assert [p["sku"] for p in catalogue.page(memdb, uncategorised=True)["products"]] == \
        ["PEN", "RICE"]
    assert [p["sku"] for p in catalogue.page(memdb, query="100%")["products"]] == ["RICE"]
    assert catalogue.page(memdb, query="0% ")["count"] == 1  # % and _ are literal
    assert catalogue.page(memdb, query="HAND_")["count"] == 1  # any case
    assert catalogue.page(memdb, query="绿")["products"][0]["sku"] == "TEA"
    assert [p["sku"] for p in catalogue.page(memdb, query="leaves no. 3")["products"]] == \
        ["T3"]  # every word, each anywhere in the product's texts
    assert catalogue.page(memdb, query="T5")["count"] == 0  # off sale
    catalogue.describe(memdb, sku="RICE", field="description_en", text="")
    assert catalogue.card(memdb, "RICE")["description_en"] is None


def test_stock_reads_as_unlimited_low_or_sold_out():
    assert [catalogue.stock_state(n) for n in (None, 0, 1, 5, 6)] == [
        "unlimited", "sold_out", "low", "low", "in_stock"]


# -- the conversations -----------------------------------------------------------------------

async def test_shop_shows_names_and_descriptions_in_the_readers_language(memdb):
    chat = Chat(memdb)
    seed_shop(memdb, users=(), products=PRODUCTS)
    for line in ("/describe TEA name_en Green tea", "/describe TEA zh 明前绿茶",
                 "/describe TEA en Picked before the rains."):
        assert "set to" in text(await chat.send(OPERATOR, line))
    en = text(await chat.send("tg:5", "/shop"))
    assert "• Green tea (TEA) — 100.00 CNY\nPicked before the rains." in en
    zh = text(await chat.send("tg:6", "/shop", lang="zh"))
    assert "• 绿茶（TEA）—— 100.00 CNY\n明前绿茶" in zh
    assert "• 大米（RICE）" in zh and "Green tea" not in zh


async def test_categories_open_as_buttons_and_page_with_their_own_buttons(memdb):
    chat = Chat(memdb)
    seed_shop(memdb, users=(), products=PRODUCTS + tuple(
        (f"T{i}", "9.00", "0.10", 0, "none", f"Tea {i}") for i in range(5)))
    for sku in ("TEA", *(f"T{i}" for i in range(5))):
        await chat.send(OPERATOR, f"/describe {sku} category 茶叶")
    menu = await chat.send("tg:5", "/shop", lang="zh")
    assert text(menu) == "请选择分类："
    assert [b.label for b in buttons(menu)] == ["茶叶（6）", "其他（2）", "全部商品"]
    tea = buttons(menu)[0].data
    first = await chat.send("tg:5", callback=tea)
    assert text(first).startswith("茶叶（第 1/2 页）：") and len(cards(first)) == 5
    nav = [b.data for b in buttons(first) if b.data.startswith("cat:")]
    assert nav == [tea[:-1] + "1"]
    second = await chat.send("tg:5", callback=nav[0])
    assert [c.text.split("（")[1][:3] for c in cards(second)] == ["TEA"]
    assert "shop:v1:c" in [b.data for b in buttons(second)]
    other = await chat.send("tg:5", callback=buttons(menu)[1].data)
    assert [b.data for b in buttons(other) if b.data.startswith("buy:")] == \
        ["buy:v1:PEN:1", "buy:v1:RICE:1"]
    await chat.send(OPERATOR, "/describe TEA category")  # cleared: still 5 in 茶叶
    gone = await chat.send("tg:5", callback="cat:v1:00000000:0")
    assert text(gone) == "该分类已不在商店中，发送 商品 查看现有商品。"
    gone = await chat.send("tg:7", callback="cat:v1:00000000:0")
    assert text(gone) == "That category is no longer in the shop; send /shop to see what is."


async def test_stock_shows_only_n_left_and_sold_out_has_no_buttons(memdb):
    chat = Chat(memdb)
    seed_shop(memdb, users=(), products=PRODUCTS)
    for sku, left in (("TEA", 3), ("RICE", 0), ("SOFA", 6)):
        service.upsert_product(memdb, sku=sku, price="100.00", margin="0.50", lock_days=15,
                               scheme="both", stock=left)
    en = await chat.send("tg:5", "/shop")
    assert "Only 3 left." in text(en) and "Sold out." in text(en)
    assert "6 left" not in text(en)  # plenty: nothing said
    assert not [b for c in cards(en) if "RICE" in c.text for row in c.buttons for b in row]
    assert [b.data for c in cards(en) if "(TEA)" in c.text for row in c.buttons for b in row] \
        == ["buy:v1:TEA:1", "cart:v1:add:TEA"]
    zh = text(await chat.send("tg:6", "/shop", lang="zh"))
    assert "仅剩 3 件。" in zh and "已售罄。" in zh


async def test_operator_photo_commands_and_their_refusals_in_both_languages(memdb):
    chat = Chat(memdb)
    seed_shop(memdb, users=(), products=PRODUCTS)
    await chat.send(OPERATOR, "/lang zh")
    assert "不是商品文字字段" in text(await chat.send(OPERATOR, "/describe TEA colour red"))
    assert "用法：/describe" in text(await chat.send(OPERATOR, "/describe TEA"))
    asked = text(await chat.send(OPERATOR, "/photo TEA"))
    assert asked == "请在 10 分钟内发送 TEA 的图片。"
    photo = Upload(png(1), "AgAC-77")
    reply = await send_photo(chat, OPERATOR, photo)
    assert text(reply) == "已为 TEA（绿茶）添加第 1 张图片。"
    bad = await send_photo(chat, OPERATOR, Upload(b"nope"))
    assert "无法展示这张图片" in text(bad)
    assert "已删除 TEA 的 1 张图片" in text(await chat.send(OPERATOR, "/photo TEA clear"))
    # a shopper may not, and is told so in their language
    assert "Sorry, only the shop's operators" in text(await chat.send("tg:5", "/photo TEA"))
    assert "只有" in text(await chat.send("tg:6", "/describe TEA zh 好茶", lang="zh"))
    assert "There is no such product" in text(await chat.send("tg:5", "/item NOPE"))
    assert "搜索" in text(await chat.send("tg:6", "搜索", lang="zh"))  # its usage


async def test_item_shows_every_photo_of_a_product(memdb):
    chat = Chat(memdb)
    seed_shop(memdb, users=(), products=PRODUCTS)
    for n in (1, 2, 3):
        catalogue.add_photo(memdb, sku="TEA", content=png(n))
    reply = await chat.send("tg:5", "/item tea")
    shown = cards(reply)
    assert len(shown) == 3 and "more photos" not in shown[0].text
    assert "2 more photos: /item TEA" in text(await chat.send("tg:5", "/shop"))
    assert len({c.photo.sha256 for c in shown if c.photo}) == 3


async def test_photos_without_a_caption_follow_the_last_one_captioned(memdb):
    """A Telegram album: only its first photo carries the caption."""
    chat = Chat(memdb)
    seed_shop(memdb, users=(), products=PRODUCTS)
    first = await send_photo(chat, OPERATOR, Upload(png(1), "AgAC-1"), caption="/photo RICE")
    assert text(first) == "Photo 1 added to RICE (大米)."
    for n in (2, 3):
        rest = await send_photo(chat, OPERATOR, Upload(png(n), f"AgAC-{n}"))
        assert text(rest) == f"Photo {n} added to RICE (大米)."
    assert len(catalogue.card(memdb, "RICE")["photos"]) == 3
