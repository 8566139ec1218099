"""`/settings` (设置) and taking products off sale: operators only, the replayed `config`
event's own check, journaled with the operator, shown back old → new in zh and en."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.config import DEFAULTS
from engine.replay import Replayer
from handlers import settings as settings_module
from storage.db import Database
from storage.models import JournalTxn, Setting
from tests.conftest import migrated
from tests.handlers_kit import OPERATOR, Chat, buttons, text

NOT_OPERATOR = "Sorry, only the shop's operators can do that."

RULES_EN = """\
Shop rules — change one with /settings KEY VALUE (e.g. /settings store.settle_days 7)

Store
• store.currency = CNY — currency of every price and amount
• store.timezone = Asia/Shanghai — store-local time: maturities, settlements, releases
• store.settle_days = 0 days — return window: rebates wait this long and the order can be \
refunded meanwhile (0: no refunds)
• store.settle_from = payment — when the return window starts: payment, or receipt (when \
the buyer has the goods)
• store.paused = no — sales paused (offline sales still allowed)

Cashback queue
• queue.min_order = 100.00 CNY — smallest cash payment that earns a queue entry
• queue.pool_share = 20% — share of a product's profit paid into the queue pool
• queue.accel_rate = 20% — share of a referred buyer's payment paid at once to the \
referrer's entries

Points
• points.pool_rate = 30% — share of a payment paid into the points pool
• points.mint_rate = 70% — share of that contribution minted as points for the buyer
• points.initial_price = 1.00 CNY — points price before any were minted
• points.withdraw_fee = 10% — fee kept in the pool when points are sold
• points.exit_multiple = ×2 — points are sold for the holder once worth this many times \
what earned them"""


def _config_txns(db: Database) -> list[tuple[str | None, dict]]:
    rows = db.read(lambda s: s.execute(select(JournalTxn.actor, JournalTxn.body).where(
        JournalTxn.kind == "config").order_by(JournalTxn.id)).all())
    return [(actor, json.loads(body)) for actor, body in rows]


def _settings(db: Database) -> dict[str, str]:
    return dict(db.read(lambda s: s.execute(select(Setting.key, Setting.value)).all()))


@pytest.mark.parametrize("line,data", [
    ("/settings", None), ("设置", None), ("/settings store.settle_days 7", None),
    ("设置 settle_days=7", None), ("/product TEA off", None), ("/offsale TEA", None),
    ("下架 TEA", None), ("/onsale TEA", None), ("上架 TEA", None),
    ("", "set:v1:sd:7"), ("", "sale:v1:TEA:0"), ("", "cmd:v1:settings"),
])
async def test_non_operators_can_neither_see_nor_change_the_rules(memdb, line, data):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send("tg:5", "/start")
    world = (chat.world(), _settings(memdb))
    reply = await chat.send("tg:5", line, callback=data)
    assert text(reply) == NOT_OPERATOR
    assert (chat.world(), _settings(memdb)) == world


async def test_settings_shows_every_rule_grouped_with_its_meaning(memdb):
    chat = Chat(memdb)
    reply = await chat.send(OPERATOR, "/settings")
    assert text(reply) == RULES_EN
    assert [(b.label, b.data) for b in buttons(reply)] == [
        ("✓ 0 days", "set:v1:sd:0"), ("7 days", "set:v1:sd:7"), ("15 days", "set:v1:sd:15"),
        ("30 days", "set:v1:sd:30"), ("Pause sales", "cmd:v1:pause")]


async def test_settings_in_chinese(memdb):
    chat = Chat(memdb, operators=(OPERATOR, "wx:boss"), channel="wechat")
    body = text(await chat.send("wx:boss", "设置", lang="zh"))
    assert body.startswith("店铺规则 — 用 /settings 键 值 修改")
    assert "• store.settle_days = 0 天 — 退货期：返利等待这么多天，期间订单可以退款（0：不可退款）" in body
    assert "• queue.accel_rate = 20% — 加速比例：被推荐人支付金额中立即返给推荐人排队的比例" in body
    assert "• points.initial_price = 1.00 CNY — 初始价格：尚未铸造积分时的积分价格" in body
    # every rule's Chinese name, as listed, can be typed instead of its key
    for name, key in settings_module.ZH_NAMES.items():
        assert f"• {key} = " in body and f" — {name}：" in body, name
    reply = text(await chat.send("wx:boss", "设置 退货期 7 加速比例 10% 暂停销售 开", lang="zh"))
    assert reply.split("\n\n")[0] == ("规则已由 wx:boss 修改：\n"
                                        "• store.settle_days：0 天 → 7 天\n"
                                        "• store.paused：否 → 是\n"
                                        "• queue.accel_rate：20% → 10%\n"
                                        "此后登记的订单适用新的退货期；已登记的订单保持原来的。")


async def test_a_return_window_set_in_chat_makes_refunds_possible(memdb):
    # the issue: settle_days is 0 by default, so /refund was refused on every order, and
    # nothing in chat could change it
    chat = Chat(memdb)
    await chat.setup_shop()
    reply = text(await chat.send(OPERATOR, "/settings store.settle_days 7"))
    assert reply == (
        "Rules changed by tg:1:\n"
        "• store.settle_days: 0 days → 7 days\n"
        "Orders recorded from now on get this return window; orders already recorded keep "
        "theirs.\n\n"
        "规则已由 tg:1 修改：\n"
        "• store.settle_days：0 天 → 7 天\n"
        "此后登记的订单适用新的退货期；已登记的订单保持原来的。")
    assert _config_txns(memdb)[-1] == (OPERATOR, {"store.settle_days": "7"})
    await chat.pay("tg:5", await chat.send("tg:5", "/buy TEA"))
    refunded = text(await chat.send(OPERATOR, "/refund N1"))
    assert refunded.startswith("Order N1 of tg:5 refunded; no rebate will be granted for it.")
    assert "7 days" in text(await chat.send(OPERATOR, "/settings"))


async def test_several_rules_at_once_in_any_spelling(memdb):
    chat = Chat(memdb)
    reply = text(await chat.send(
        OPERATOR, "/settings queue.pool_share=25% min_order 50.00 points.exit_multiple 0 "
                  "store.paused off accel_rate 0.125"))
    english = reply.split("\n\n")[0]
    assert english == ("Rules changed by tg:1:\n"
                       "• queue.pool_share: 20% → 25%\n"
                       "• queue.min_order: 100.00 CNY → 50.00 CNY\n"
                       "• queue.accel_rate: 20% → 12.5%\n"
                       "• points.exit_multiple: ×2 → off\n"
                       "• store.paused: no → no")
    assert "• queue.pool_share：20% → 25%" in reply.split("\n\n")[1]
    # one config event, the values as a config line would carry them
    assert _config_txns(memdb) == [(OPERATOR, {
        "queue.pool_share": "0.25", "queue.min_order": "50.00", "points.exit_multiple": "0",
        "store.paused": "0", "queue.accel_rate": "0.125"})]


async def test_a_new_time_zone_or_currency_says_what_it_does_not_do(memdb):
    chat = Chat(memdb)
    reply = text(await chat.send(OPERATOR, "/settings timezone Europe/Berlin currency EUR"))
    assert reply.split("\n\n")[0] == (
        "Rules changed by tg:1:\n"
        "• store.timezone: Asia/Shanghai → Europe/Berlin\n"
        "• store.currency: CNY → EUR\n"
        "Maturities and settlements use the new time zone at once; the scheduled release "
        "times follow it after the next restart of storefront run.\n"
        "Amounts already recorded are not converted: they are now read in the new currency.")
    assert "• queue.min_order = 100.00 EUR" in text(await chat.send(OPERATOR, "/settings"))


@pytest.mark.parametrize("line,says", [
    ("/settings queue.accel_rate 2 store.settle_days 7",
     "“2” is not a valid queue.accel_rate: use a decimal from 0 to 1, or a percentage up to "
     "100%, e.g. 0.20 or 20%."),
    ("/settings store.settle_days 7 queue.pool_share 150%",
     "“150%” is not a valid queue.pool_share: use a decimal from 0 to 1"),
    ("/settings store.settle_days 400", "“400” is not a valid store.settle_days: use whole "
                                        "days from 0 to 365."),
    ("/settings store.timezone Asia", "“Asia” is not a valid store.timezone: use a time zone "
                                      "name such as Asia/Shanghai."),
    ("/settings queue.min_order 1.005", "“1.005” is not a valid queue.min_order"),
    ("/settings store.currency yuan", "“yuan” is not a valid store.currency"),
    ("/settings bonus 1", "“bonus” is not one of the rules (send /settings to see them all)."),
    ("/settings points.bonus 1", "“points.bonus” is not one of the rules"),
    ("/settings lottery.odds 0.5", "“lottery.odds” is not one of the rules"),
])
async def test_a_bad_rule_is_refused_whole_naming_the_key(memdb, line, says):
    chat = Chat(memdb)
    await chat.setup_shop()
    world = (chat.world(), _settings(memdb))
    reply = text(await chat.send(OPERATOR, line))
    assert reply.startswith("That change was refused and nothing was changed: " + says)
    assert reply.endswith("/settings queue.pool_share=25%")  # the usage line
    assert (chat.world(), _settings(memdb)) == world


async def test_a_key_without_a_value_is_bad_input(memdb):
    chat = Chat(memdb)
    await chat.send(OPERATOR, "/start")
    world = chat.world()
    reply = text(await chat.send(OPERATOR, "/settings store.settle_days"))
    assert reply.startswith("“store.settle_days” needs a value after it.\nUsage: /settings")
    assert chat.world() == world


# Config lines and the same change typed in chat: accepted or refused alike, same result.
SAME_AS_REPLAY = [
    {"store": {"settle_days": "7"}, "queue": {"min_order": "50"}},
    {"points": {"withdraw_fee": "-1"}},
    {"queue": {"accel_rate": "5"}},
    {"points": {"initial_price": "0"}},
    {"points": {"pool_rate": "0.50", "bonus": "1"}},
    {"store": {"timezone": "Europe/Berlin", "currency": "EUR"}},
    {"store": {"settle_days": "1.5"}},
    {"queue": {"pool_share": "1", "accel_rate": "0"}, "points": {"exit_multiple": "1.5"}},
    {"points": {"initial_price": "0.001"}},
]


@pytest.mark.parametrize("sections", SAME_AS_REPLAY)
async def test_chat_judges_a_change_exactly_as_a_replayed_config_line(memdb, make_db, sections):
    replayed = make_db("memory")
    errors = Replayer(replayed).run([json.dumps({"op": "config", **sections})])["errors"]
    pairs = " ".join(f"{s}.{k}={v}" for s, values in sections.items()
                     for k, v in values.items())
    reply = text(await Chat(memdb).send(OPERATOR, f"/settings {pairs}"))
    assert reply.startswith("That change was refused") == bool(errors), reply
    assert _settings(memdb) == _settings(replayed)


async def test_return_window_buttons_apply_presets_and_nothing_else(memdb):
    chat = Chat(memdb)
    reply = text(await chat.send(OPERATOR, "", callback="set:v1:sd:15"))
    assert reply.startswith("Rules changed by tg:1:\n• store.settle_days: 0 days → 15 days")
    assert _settings(memdb)["store.settle_days"] == "15"
    world = chat.world()
    for data in ("set:v1:sd:16", "set:v1:sd:400", "set:v1:xx:7", "set:v2:sd:7", "set:v1:sd"):
        assert text(await chat.send(OPERATOR, "", callback=data)) == \
            "This button is no longer valid. Please send the command again."
    assert chat.world() == world
    listing = await chat.send(OPERATOR, "/settings")
    assert [b.label for b in buttons(listing)][:4] == ["0 days", "7 days", "✓ 15 days",
                                                       "30 days"]


async def test_the_admin_menu_offers_settings(memdb):
    chat = Chat(memdb)
    data = [b.data for b in buttons(await chat.send(OPERATOR, "/admin"))]
    assert "cmd:v1:settings" in data
    assert text(await chat.send(OPERATOR, "", callback="cmd:v1:settings")) == RULES_EN


# -- products off sale and back -------------------------------------------------------------

async def test_a_product_off_sale_is_hidden_and_refused_politely_then_comes_back(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    off = await chat.send(OPERATOR, "/product TEA off")
    assert text(off) == ("TEA (Green tea) is off sale: /shop no longer shows it and buying it "
                         "is refused. Orders already recorded are not affected.")
    assert [(b.label, b.data) for b in buttons(off)] == [("Put TEA back on sale",
                                                          "sale:v1:TEA:1")]
    catalogue = await chat.send("tg:5", "/shop")
    assert "TEA" not in text(catalogue) and "Rice (RICE)" in text(catalogue)
    assert "buy:v1:TEA:1" not in [b.data for b in buttons(catalogue)]
    world = chat.world()
    refused = "That product is not on sale at the moment."
    assert text(await chat.send("tg:5", "/buy TEA")) == refused
    assert text(await chat.send("tg:5", "", callback="buy:v1:TEA:1")) == refused
    assert text(await chat.send(OPERATOR, "/offline tg:5 TEA")) == refused
    assert chat.world() == world
    assert text(await chat.send(OPERATOR, "", callback="sale:v1:TEA:1")) == \
        "TEA (Green tea) is on sale again."
    assert "Green tea (TEA)" in text(await chat.send("tg:5", "/shop"))
    await chat.pay("tg:5", await chat.send("tg:5", "/buy TEA"))
    assert chat.state()["entries"][0]["user"] == "tg:5"
    actors = memdb.read(lambda s: s.execute(select(JournalTxn.actor, JournalTxn.body).where(
        JournalTxn.kind == "product_sale").order_by(JournalTxn.id)).all())
    assert [(a, json.loads(b)) for a, b in actors] == [
        (OPERATOR, {"sku": "TEA", "active": False}), (OPERATOR, {"sku": "TEA", "active": True})]


async def test_chinese_words_and_the_other_spellings_switch_a_product(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    assert text(await chat.send(OPERATOR, "下架 RICE")).startswith("RICE (Rice) is off sale")
    assert text(await chat.send(OPERATOR, "/offsale RICE")) == \
        "RICE was already off sale; nothing was changed."
    assert text(await chat.send(OPERATOR, "上架RICE")) == "RICE (Rice) is on sale again."
    assert text(await chat.send(OPERATOR, "/product RICE 下架")).startswith("RICE (Rice) is off")
    assert text(await chat.send(OPERATOR, "/onsale RICE")) == "RICE (Rice) is on sale again."
    assert text(await chat.send(OPERATOR, "/product RICE on")) == \
        "RICE is already on sale; nothing was changed."
    assert text(await chat.send(OPERATOR, "/offsale NOPE")) == \
        "There is no such product. Send /shop to see the catalogue."
    # one word is not enough for /product unless it is 上架
    assert text(await chat.send(OPERATOR, "/product RICE")).startswith(
        "Something is missing or extra in that command.\nUsage: /product")


async def test_changing_a_product_off_sale_keeps_it_off_sale(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send(OPERATOR, "/product TEA off")
    assert text(await chat.send(OPERATOR, "/product TEA 120.00 0.30 15 queue Green tea")) \
        .startswith("Product TEA saved")
    assert "TEA" not in text(await chat.send("tg:5", "/shop"))


# -- hostile input from an operator ------------------------------------------------------------

_RULE_WORDS = st.sampled_from(sorted({*DEFAULTS, *(k.split(".")[1] for k in DEFAULTS),
                                      "store.bonus", "lottery.odds", "=", "store.", ".x"}))
_VALUES = st.one_of(st.sampled_from(["", "0", "1", "-1", "1e3", "NaN", "１００", "0.001", "25%",
                                     "150%", "%", "on", "OFF", "Asia", "Asia/Shanghai", "CNY",
                                     "9" * 41, "366", "1.5", "\u202e", "<b>x</b>", "{ref}"]),
                   st.text(max_size=16))


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(_RULE_WORDS, _VALUES, st.booleans()), min_size=1, max_size=4))
def test_any_rule_change_is_answered_politely_and_changes_all_or_nothing(pairs):
    with migrated("sqlite://") as db:
        words = [f"{k}={v}" if eq else f"{k} {v}" for k, v, eq in pairs]
        reply = text(asyncio.run(Chat(db).send(OPERATOR, "/settings " + " ".join(words))))
        assert "went wrong" not in reply, reply
        changed = _config_txns(db)
        if reply.startswith("Rules changed by tg:1:"):
            (_actor, body), = changed
            assert _settings(db) == body
        else:
            assert changed == [] and _settings(db) == {}, reply
