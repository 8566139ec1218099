"""Issue 14 in the chat: /queue says what its estimate assumes (sales inflow, deposits
apart), /pool says what "near forced exit" means, charts come in the operator's language."""

from __future__ import annotations

from tests.handlers_kit import OPERATOR, Chat, photos, text


async def test_queue_states_the_sales_inflow_and_shows_deposits_apart(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()  # 10000.00 deposited into the queue pool by the operator
    await chat.pay("tg:11", await chat.send("tg:11", "/buy TEA 2"))  # 200 × 0.30 × 0.20 = 12.00
    body = text(await chat.send("tg:11", "/queue"))
    # 12.00 of sales in 30 days is 0.40 a day; the deposit is not a rate.
    assert ("Estimates assume the pool keeps receiving 0.40 CNY a day from sales (the last 30 "
            "days' average); the pool also holds 10000.00 CNY deposited by the shop in that "
            "time, counted once, not as a rate;") in body
    assert "0.00 CNY owed ahead" in body
    assert "entries that mature after yours are paid after it" in body
    await chat.send("tg:12", "/lang zh", lang="zh")
    await chat.pay("tg:12", await chat.send("tg:12", "/buy TEA", lang="zh"))
    zh = text(await chat.send("tg:12", "/queue", lang="zh"))
    assert ("预计日期假设资金池每天继续从销售获得 0.60 CNY（近 30 天平均）；其间商家另存入 "
            "10000.00 CNY，只计一次，不计入日均；不计新排队与加速。") in zh


async def test_pool_says_how_many_holders_are_within_ten_percent_of_their_exit(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))  # 10.5 points, basis 50.00
    reply = await chat.send(OPERATOR, "/pool")
    body = text(reply)
    assert ("Holders near forced exit (within 10% of their exit price: points × price ≥ 90% "
            "of exit multiple × basis): 0") in body
    assert "Deposited by the shop in 30d: 10000.00 CNY" in body
    assert len(photos(reply)) == 2
    # 10.5 points at 1.428571: exit at 9.523810 (×2 basis); 90% of that is 8.571429, i.e. a
    # points pool of 90.00 (75.00 more than the 15.00 in it): exactly at the boundary.
    await chat.send(OPERATOR, "/deposit points 75.00")
    assert text(await chat.send(OPERATOR, "/pool")).count("× basis): 1") == 1
