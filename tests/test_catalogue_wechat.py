"""The catalogue over signed WeChat callbacks (the real HTTP server, wechatpy against the
stand-in): an operator adds photos with `图片 SKU` or right after `上架`, shoppers see each
product as its photo (a permanent image uploaded once) and its text with menu links, and
search in Chinese (docs/catalogue.md)."""

from __future__ import annotations

from sqlalchemy import select

from storage.models import Media, ProductPhoto
from tests.standins import wechat as sw
from tests.test_catalogue_telegram import png
from tests.wechat_harness import GH_ID, OPERATOR, next_msg_id

ALICE = "oAlice_0000000000000000001"


async def image(s, openid: str, content: bytes) -> dict:
    media_id = s.api.store_media(content, "image/png")
    xml = sw.message_xml(GH_ID, openid, "image", {"PicUrl": "http://x/y.jpg",
                                                  "MediaId": media_id}, msg_id=next_msg_id())
    reply = s.reply_of(await s.post(xml))
    await s.server.wechat.drain()
    return reply


def photos_of(s, sku: str) -> list[str]:
    return list(s.db.read(lambda x: x.execute(select(ProductPhoto.sha256).where(
        ProductPhoto.sku == sku).order_by(ProductPhoto.position)).scalars().all()))


async def test_operator_photos_by_wechat_show_as_images_uploaded_once(shop):
    s = shop
    asked = await s.say(OPERATOR, "图片 TEA")
    assert asked["Content"] == "请在 10 分钟内发送 TEA 的图片。"
    added = await image(s, OPERATOR, png(1))
    assert added["Content"] == "已为 TEA（Oolong tea）添加第 1 张图片。"
    # right after 上架 (a new product), the next image is that product's
    listed = await s.say(OPERATOR, "上架 SOAP 10.00 0.30 0 none 手工皂")
    assert "SOAP" in listed["Content"] and "请在 10 分钟内发送 SOAP 的图片。" in listed["Content"]
    assert "添加第 1 张图片" in (await image(s, OPERATOR, png(2)))["Content"]
    assert "添加第 2 张图片" in (await image(s, OPERATOR, png(3)))["Content"]
    assert len(photos_of(s, "TEA")) == 1 and len(photos_of(s, "SOAP")) == 2
    assert len(s.api.calls_of("media/get")) == 3

    await s.say(OPERATOR, "描述 TEA category 茶叶")
    await s.say(OPERATOR, "描述 TEA zh 武夷山乌龙茶，香气浓郁。")
    # A shopper: the categories as menu links, then a category's cards
    menu = await s.say(ALICE, "商品")
    assert "请选择分类" in menu["Content"] and "茶叶（1）" in menu["Content"]
    menu_id = menu["Content"].split("msgmenuid=")[1].split('"')[0]
    page = await s.say(ALICE, "茶叶（1）", extra={"bizmsgmenuid": menu_id})
    assert page["MsgType"] == "text" and page["Content"].startswith("茶叶：")
    images = [m for m in s.api.sent_messages if m["msgtype"] == "image"]
    assert len(images) == 1 and images[0]["touser"] == ALICE
    (material,) = s.api.materials  # the one photo, uploaded as a permanent image
    assert images[0]["image"]["media_id"] == material
    assert s.api.materials[material]["content"] == png(1)
    texts = s.sent_texts(ALICE)
    assert "武夷山乌龙茶" in texts[-1] and "weixin://bizmsgmenu" in texts[-1]
    sha = photos_of(s, "TEA")[0]
    assert s.db.read(lambda x: x.get(Media, sha)).wx_media_id == material
    # shown again: the kept id, no second upload
    await s.say(ALICE, "茶叶（1）", extra={"bizmsgmenuid": menu_id})
    assert len(s.api.materials) == 1
    assert [m["image"]["media_id"] for m in s.api.sent_messages
            if m["msgtype"] == "image"] == [material, material]

    # search in Chinese
    found = await s.say(ALICE, "搜索 乌龙")
    assert "“乌龙”的搜索结果：1 件" in found["Content"]
    nothing = await s.say(ALICE, "搜索 咖啡")
    assert nothing["Content"].startswith("没有找到与“咖啡”相关的商品")


async def test_images_from_shoppers_are_not_read_and_strays_are_asked_about(shop):
    s = shop
    reply = await image(s, ALICE, png(5))
    assert reply["MsgType"] == "text" and reply["Content"]
    assert not s.api.calls_of("media/get")
    stray = await image(s, OPERATOR, png(6))
    assert stray["Content"].startswith("这张图片是哪个商品的？")
    # a media id WeChat no longer has: refused politely, nothing stored
    xml = sw.message_xml(GH_ID, OPERATOR, "image", {"MediaId": "gone"}, msg_id=next_msg_id())
    await s.say(OPERATOR, "图片 TEA")
    gone = s.reply_of(await s.post(xml))
    assert gone["Content"].startswith("无法展示这张图片")
    assert photos_of(s, "TEA") == []
