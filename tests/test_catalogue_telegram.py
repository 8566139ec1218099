"""The catalogue over the Telegram stand-in (real PTB application, real sockets): an operator
lists products with photos from chat, shoppers browse categories, page and search, and the
photo goes out by its cached `file_id` (docs/catalogue.md)."""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
import zlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from engine import catalogue
from storage.models import Media, ProductPhoto
from tests.standins.telegram_api import make_message, make_user
from tests.test_telegram_e2e import OPERATOR, Shop, running_shop

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")
_ids = itertools.count(9000)


def png(seed: int) -> bytes:
    """A real 2×2 PNG whose pixels depend on `seed` (each seed a different photo)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes([seed % 256, 40, 90] * 2) for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def photo_message(s: Shop, user: int, content: bytes, caption: str | None = None,
                  **fields: object) -> dict:
    file_id = s.api.store_file(content, f"AgAC-op-{next(_ids)}")
    sizes = [{"file_id": file_id, "file_unique_id": f"u-{file_id}", "width": 2, "height": 2,
              "file_size": len(content)}]
    return make_message(user, from_user=make_user(user, first_name="Op"),
                        message_id=next(_ids), photo=sizes, caption=caption, **fields)


async def push_message(s: Shop, user: int, message: dict, expect: int = 1) -> list:
    mark = len(s.api.calls)
    s.api.push_update({"message": message})
    return await s.replies(user, mark, expect)


@pytest.fixture
async def shop(sqlite_url: str) -> AsyncIterator[Shop]:
    async with running_shop(sqlite_url) as s:
        yield s


async def test_operator_lists_products_with_photos_and_shoppers_browse_categories(shop: Shop):
    s = shop
    tea = png(1)
    # A photo captioned /product: the product is saved and the photo is its first
    (saved,) = await push_message(s, OPERATOR, photo_message(
        s, OPERATOR, tea, "/product TEA 100.00 0.50 15 both 绿茶"))
    assert "Product TEA saved" in saved.text and "Photo 1 added to TEA" in saved.text
    first_id = s.app.db.read(lambda x: x.get(Media, catalogue.hashlib.sha256(tea).hexdigest()))
    assert first_id.content == tea and first_id.tg_file_id.startswith("AgAC-op-")
    # /photo TEA in reply to a second photo
    second = photo_message(s, OPERATOR, png(2))
    mark = len(s.api.calls)
    s.api.push_update({"message": make_message(
        OPERATOR, from_user=make_user(OPERATOR), message_id=next(_ids), text="/photo TEA",
        entities=[{"type": "bot_command", "offset": 0, "length": 6}],
        reply_to_message=second)})
    (added,) = await s.replies(OPERATOR, mark, 1)
    assert "Photo 2 added to TEA" in added.text
    for line in ("/describe TEA name_en Green tea", "/describe TEA category Tea",
                 "/describe TEA en Spring leaves, picked by hand.",
                 "/product RICE 50.00 0.40 0 points 大米", "/describe RICE category Grain"):
        assert "saved" in await s.say(OPERATOR, line) or "set to" in await s.say(OPERATOR, line)

    # A shopper: /shop opens the categories as buttons
    (menu,) = await s.send(5, "/shop")
    labels = [b["text"] for row in menu.params["reply_markup"]["inline_keyboard"] for b in row]
    assert labels == ["Grain (1)", "Tea (1)", "All products"]
    tea_button = menu.params["reply_markup"]["inline_keyboard"][1][0]["callback_data"]
    mark = len(s.api.calls)
    s.api.push_callback(5, tea_button)
    head, card, foot = await s.replies(5, mark, 3)
    assert head.text == "Tea:"
    assert card.is_("sendPhoto") and card.params["photo"] == first_id.tg_file_id  # no upload
    assert not card.files
    assert "Green tea (TEA) — 100.00 CNY" in card.text and "Spring leaves" in card.text
    assert "1 more photos: /item TEA" in card.text
    keys = [b["callback_data"] for row in card.params["reply_markup"]["inline_keyboard"]
            for b in row]
    assert keys == ["buy:v1:TEA:1", "cart:v1:add:TEA"]
    assert "shop:v1:c" in str(foot.params["reply_markup"])

    # Search, in English and in Chinese
    found = await s.send(5, "/shop green", expect=3)
    assert "Found for “green”: 1" in found[0].text and "TEA" in found[1].text
    found = await s.send(6, "/search 大米", expect=3, lang="zh")
    assert "大米（RICE）" in found[1].text and found[1].is_("sendMessage")  # no photo
    nothing = await s.say(5, "/search coffee")
    assert "Nothing in the shop matches “coffee”" in nothing


async def test_a_photo_added_elsewhere_is_uploaded_once_then_resent_by_file_id(shop: Shop):
    s = shop
    await s.say(OPERATOR, "/product SOAP 10.00 0.30 0 none Soap")
    content = png(7)
    # as WeChat would store it: bytes, no Telegram file_id
    await asyncio.to_thread(catalogue.add_photo, s.app.db, sku="SOAP", content=content,
                            channel="wechat", channel_id="wx-media-1")
    _head, card, _foot = await s.send(5, "/shop", expect=3)
    assert card.is_("sendPhoto") and card.files["photo"] == content
    deadline = time.monotonic() + 10
    while (row := s.app.db.read(lambda x: x.execute(select(Media)).scalar_one())) \
            .tg_file_id is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert row.tg_file_id == card.result["photo"][0]["file_id"] and row.wx_media_id == "wx-media-1"
    _head, again, _foot = await s.send(5, "/shop", expect=3)
    assert again.params["photo"] == row.tg_file_id and not again.files


async def test_only_operators_photos_are_read_and_bad_ones_refused_politely(shop: Shop):
    s = shop
    await s.say(OPERATOR, "/product SOAP 10.00 0.30 0 none Soap")
    await s.say(5, "/start")
    (answer,) = await push_message(s, 5, photo_message(s, 5, png(3), "/photo SOAP"))
    assert answer.is_("sendMessage") and not s.api.calls_of("getFile")  # never downloaded
    (bad,) = await push_message(s, OPERATOR, photo_message(s, OPERATOR, b"GIF8 not really",
                                                           "/photo SOAP"))
    assert "not a photo the shop can show" in bad.text
    (which,) = await push_message(s, OPERATOR, photo_message(s, OPERATOR, png(4)))
    assert "Which product is this photo for?" in which.text
    assert s.app.db.read(lambda x: x.execute(select(ProductPhoto)).all()) == []


async def test_a_file_id_telegram_refuses_is_replaced_by_the_bytes_sent_again(shop: Shop):
    s = shop
    await s.say(OPERATOR, "/product SOAP 10.00 0.30 0 none Soap")
    await asyncio.to_thread(catalogue.add_photo, s.app.db, sku="SOAP", content=png(8),
                            channel="telegram", channel_id="AgAC-from-another-bot")
    s.api.fail_next("sendPhoto", 400, "Bad Request: wrong file identifier")
    mark = len(s.api.calls)
    s.api.push_text(5, "/shop")
    await s.api.wait_for(lambda c: c.is_("sendPhoto") and c.ok, since=mark)
    refused, resent = [c for c in s.api.calls[mark:] if c.is_("sendPhoto")]
    assert refused.params["photo"] == "AgAC-from-another-bot" and not refused.ok
    assert resent.files["photo"] == png(8) and "Soap (SOAP)" in resent.text
    deadline = time.monotonic() + 10
    while (row := s.app.db.read(lambda x: x.execute(select(Media)).scalar_one())) \
            .tg_file_id == "AgAC-from-another-bot" and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert row.tg_file_id == resent.result["photo"][0]["file_id"]
