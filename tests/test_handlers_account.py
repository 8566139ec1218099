"""The consumer's own views and money commands: exact amounts, as SPEC §2–§5 compute them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from tests.handlers_kit import Chat, buttons, invoice, photos, text

SHANGHAI = ZoneInfo("Asia/Shanghai")


async def _buy(chat: Chat, who: str, line: str) -> str:
    return text(await chat.pay(who, await chat.send(who, line)))


async def _code(chat: Chat, who: str) -> str:
    body = text(await chat.send(who, "/invite"))
    return body.split("Your invite code: ")[1].split()[0]


async def test_me_shows_wallet_points_price_value_and_distance_to_forced_exit(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _buy(chat, "tg:10", "/buy RICE")  # 10.5 points, basis 50.00; pool 15.00
    body = text(await chat.send("tg:10", "/me"))
    assert "Wallet: 0.00 CNY (held for withdrawals: 0.00 CNY)" in body
    # shoppers read points with 2 places and the price with up to 4, rounded down
    assert "Points: 10.50 at price 1.4285 = 15.00 CNY" in body
    # exit at 2 × 50.00 ÷ 10.5 = 9.523810 per point (rounded up): 8.095239 more, +566.7%;
    # a threshold is shown rounded up, never below itself
    assert "Forced exit when the price reaches 9.5239: it must rise 8.0953 more " \
           "(+566.7%)." in body
    assert "000000" not in body
    assert "Cashback queue: 0 waiting, 0.00 CNY still to come." in body
    assert [b.data for b in buttons(await chat.send("tg:10", "/me"))] == [
        "cmd:v1:queue", "cmd:v1:history", "cmd:v1:orders", "cmd:v1:points"]


async def test_points_view_and_selling_points_pay_gross_less_the_fee(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _buy(chat, "tg:10", "/buy RICE")
    body = text(await chat.send("tg:10", "/points"))
    assert "Points: 10.50\nPrice: 1.4285 (only rises)\nValue: 15.00 CNY" in body
    assert "Selling all now would pay 13.50 CNY to your wallet (fee 1.50 CNY)." in body
    sold = text(await chat.send("tg:10", "/sellpoints 5"))
    # gross floor(5 × 1500/10.5) = 7.14, fee ceil(0.714) = 0.72, net 6.42 (SPEC §4)
    assert sold == "Sold 5.00 points: 6.42 CNY to your wallet (fee 0.72 CNY)."
    assert chat.state()["users"]["tg:10"]["wallet"] == "6.42"
    # the fee stayed in the pool: (15.00 − 6.42) ÷ 5.5 points, the price rose
    assert chat.state()["points"]["price"] == "1.560000"


async def test_withdraw_holds_the_amount_until_an_operator_decides(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _buy(chat, "tg:10", "/buy RICE")
    await chat.send("tg:10", "/sellpoints all")
    assert text(await chat.send("tg:10", "/withdraw all")).startswith(
        "Where should we pay you?")  # asked where first (issue 17); nothing held
    await chat.send("tg:10", "/payout alipay Wang 13800138000")
    reply = text(await chat.send("tg:10", "/withdraw all"))
    assert reply == ("Withdrawal #1 of 13.50 CNY to Alipay W*** ****8000 requested; the amount "
                     "is held until an operator approves it.")
    assert "Wallet: 0.00 CNY (held for withdrawals: 13.50 CNY)" in \
        text(await chat.send("tg:10", "/me"))
    assert text(await chat.send("tg:10", "/withdraw 0.01")) == \
        "Your wallet balance is not enough for that."


async def test_transfer_reaches_a_user_named_by_invite_code_or_identity(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _buy(chat, "tg:10", "/buy RICE")
    code = await _code(chat, "tg:20")
    assert text(await chat.send("tg:10", f"/transfer {code} 1.5")) == \
        f"Sent 1.50 points to {code}."
    assert text(await chat.send("tg:10", "/transfer tg:20 1")) == "Sent 1.00 points to tg:20."
    assert chat.state()["users"]["tg:20"]["points"] == "2.500000"
    notes = chat.outbox("points_received")
    assert len(notes) == 2
    assert text(await chat.send("tg:10", "/transfer tg:10 1")) == \
        "You cannot send points to yourself."
    assert text(await chat.send("tg:10", "/transfer nobody 1")).startswith(
        "I don't know the user “nobody”.")


async def test_queue_shows_position_amount_ahead_maturity_and_estimate(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _buy(chat, "tg:10", "/buy TEA")
    await _buy(chat, "tg:11", "/buy TEA 2")
    body = text(await chat.send("tg:11", "/queue"))
    day = (datetime.now(UTC).astimezone(SHANGHAI).date() + timedelta(days=15)).isoformat()
    assert (f"#2: 200.00 CNY (0.00 CNY paid, 200.00 CNY to come) · position 2, "
            f"100.00 CNY owed ahead · matures {day} 00:00 · estimated release {day}") in body


async def test_invite_gives_the_deep_link_a_qr_code_and_what_invitees_earned(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    code = await _code(chat, "tg:10")
    reply = await chat.send("tg:10", "/invite")
    assert f"Your link: https://t.me/shop_bot?start={code}" in text(reply)
    png = photos(reply)[0].png
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 200
    await _buy(chat, "tg:10", "/buy TEA")  # a waiting entry to accelerate
    await chat.send("tg:11", "/start", payload=code, name="Bob")
    await _buy(chat, "tg:11", "/buy TEA")  # floor(100.00 × 0.20) = 20.00 to tg:10
    body = text(await chat.send("tg:10", "/invite"))
    assert "Joined through you: 1; they earned you 20.00 CNY." in body
    assert "• Bob (joined " in body and "— 20.00 CNY" in body
    assert chat.state()["users"]["tg:10"]["wallet"] == "20.00"
    accel = chat.outbox("acceleration")
    assert len(accel) == 1 and '"amount":2000' in accel[0].params


async def test_history_pages_the_statement_newest_first_with_buttons(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _buy(chat, "tg:10", "/buy RICE")
    await chat.send("tg:20", "/start")
    for _ in range(9):
        await chat.send("tg:10", "/transfer tg:20 0.1")
    await chat.send("tg:10", "/sellpoints 1")
    first = await chat.send("tg:10", "/history")
    body = text(first)
    assert body.startswith("Statement, page 1 of 2 (newest first):")
    lines = body.splitlines()[1:]
    assert len(lines) == 8
    # 1 point at 1500/10.5: gross 1.42, fee ceil(0.142) = 0.15, net 1.27
    assert "Points sold · wallet +1.27 CNY · points -1.00" in lines[0]
    assert "Points given · points -0.10" in lines[1]
    assert [b.data for b in buttons(first)] == ["hist:v1:1"]
    second = await chat.send("tg:10", "", callback="hist:v1:1")
    body2 = text(second)
    assert body2.startswith("Statement, page 2 of 2")
    assert "Points minted · points +10.50" in body2
    assert [b.data for b in buttons(second)] == ["hist:v1:0"]
    assert text(await chat.send("tg:10", "/history 2")) == body2
    assert text(await chat.send("tg:20", "", callback="hist:v1:x")) == \
        "This button is no longer valid. Please send the command again."


async def test_orders_show_status_and_rebates(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await _buy(chat, "tg:10", "/buy TEA")
    await _buy(chat, "tg:10", "/buy RICE 2")
    invoice(await chat.send("tg:10", "/buy SOFA"))
    body = text(await chat.send("tg:10", "/orders"))
    day = (datetime.now(UTC).astimezone(SHANGHAI).date() + timedelta(days=15)).isoformat()
    assert "N3 · SOFA ×1 · 1000.00 CNY — awaiting payment" in body
    assert "N2 · RICE ×2 · 100.00 CNY — settled: 21.00 points" in body
    assert f"N1 · TEA ×1 · 100.00 CNY — settled: queue entry #1 from {day} 00:00" in body
    assert body.index("N3") < body.index("N2") < body.index("N1")


async def test_chinese_words_drive_the_same_commands_in_chinese(memdb):
    chat = Chat(memdb, channel="wechat")
    await chat.setup_shop()
    body = text(await chat.send("wx:o1", "我的", lang=None))
    assert "钱包：0.00 CNY（提现冻结：0.00 CNY）" in body
    assert "绿茶" not in text(await chat.send("wx:o1", "商品", lang=None))  # names as given
    assert "Green tea（TEA）—— 100.00 CNY" in text(await chat.send("wx:o1", "商品", lang=None))
