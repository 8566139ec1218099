"""`bot.wechat.WeChatSender`: customer-service messages inside the 48-hour window, template
messages outside it, and clear errors for users WeChat will not reach."""

from __future__ import annotations

import pytest

from bot.senders import Rejected, RetryLater, Unreachable
from bot.wechat import RecipientUnreachable, StorefrontWeChatClient, WeChatSender, split_text
from tests.conftest import WECHAT_APPID as APPID
from tests.conftest import WECHAT_SECRET as SECRET
from tests.wechat_harness import FRESH, STALE, seen_fresh_and_stale

NEW = "oNew_3"


@pytest.fixture
def people(memdb):
    """FRESH wrote an hour ago, STALE three days ago; NEW never wrote."""
    return seen_fresh_and_stale(memdb)


def sender(wechat_api, db, template_id="TPL_NOTIFY"):
    client = StorefrontWeChatClient(APPID, SECRET, wechat_api.base_url)
    return WeChatSender(client, db, template_id)


async def test_inside_the_window_a_customer_service_message(wechat_api, people):
    await sender(wechat_api, people).send(f"wx:{FRESH}", "您的排队返现已到账 100.00 CNY")
    assert wechat_api.sent_messages == [{"touser": FRESH, "msgtype": "text",
                                  "text": {"content": "您的排队返现已到账 100.00 CNY"}}]
    assert wechat_api.template_messages == []
    assert len(wechat_api.calls_of("/cgi-bin/token")) == 1  # the token came from our base URL too


async def test_outside_the_window_a_template_message(wechat_api, people):
    await sender(wechat_api, people).send(f"wx:{STALE}", "提现已批准")
    assert wechat_api.sent_messages == []
    (tpl,) = wechat_api.template_messages
    assert tpl["touser"] == STALE and tpl["template_id"] == "TPL_NOTIFY"
    assert tpl["data"] == {"content": {"value": "提现已批准"}}


async def test_wechat_closing_the_window_early_falls_back_to_a_template(wechat_api, people):
    wechat_api.outside_window.add(FRESH)
    await sender(wechat_api, people).send(f"wx:{FRESH}", "hello")
    assert [t["touser"] for t in wechat_api.template_messages] == [FRESH]


async def test_unreachable_users_raise_clear_errors(wechat_api, people):
    with pytest.raises(RecipientUnreachable, match="no WECHAT_NOTIFY_TEMPLATE_ID"):
        await sender(wechat_api, people, template_id=None).send(f"wx:{STALE}", "x")
    wechat_api.unsubscribed.add(STALE)
    with pytest.raises(Unreachable, match="43004"):
        await sender(wechat_api, people).send(f"wx:{STALE}", "x")
    with pytest.raises(Rejected):
        await sender(wechat_api, people).send("tg:42", "x")
    wechat_api.inject_error("message/custom/send", 45009, "reach max wechat_api daily quota limit")
    with pytest.raises(RetryLater):
        await sender(wechat_api, people).send(f"wx:{FRESH}", "x")


async def test_a_user_never_seen_gets_a_template(wechat_api, people):
    await sender(wechat_api, people).send(f"wx:{NEW}", "hi")
    assert [t["touser"] for t in wechat_api.template_messages] == [NEW]


async def test_long_texts_are_split_into_messages_wechat_accepts(wechat_api, people):
    text = "\n".join(f"第 {n} 行：排队返现 100.00 CNY" for n in range(300))
    await sender(wechat_api, people).send(f"wx:{FRESH}", text)
    sent = [m["text"]["content"] for m in wechat_api.sent_messages]
    assert len(sent) > 1 and "\n".join(sent) == text
    assert all(len(s.encode()) <= 2000 for s in sent)


def test_split_text_cuts_even_one_endless_line():
    pieces = split_text("长" * 5000)
    assert "".join(pieces) == "长" * 5000 and all(len(p.encode()) <= 2000 for p in pieces)
    assert split_text("short") == ["short"]


async def test_buttons_go_as_menu_links_whose_data_is_kept_for_the_tap(wechat_api, people):
    """An outbox message's buttons (the shipping notice's receipt button): menu links whose
    ids the adapter maps back to the button data; no database, no links (the text says
    what to type)."""
    from bot.wechat.seen import Seen

    rows = ((("✅ N2 已收货", "recv:v1:N2"),),)
    await sender(wechat_api, people).send_buttons(f"wx:{FRESH}", "您的订单 N2 已发货", rows)
    (sent,) = wechat_api.sent_messages
    text = sent["text"]["content"]
    assert text.startswith("您的订单 N2 已发货\n<a href=\"weixin://bizmsgmenu?msgmenucontent=")
    menu_id = text.split("msgmenuid=")[1].split('"')[0]
    assert Seen(people).recall(f"wx:btn:{FRESH}:{menu_id}") == "recv:v1:N2"
    client = StorefrontWeChatClient(APPID, SECRET, wechat_api.base_url)
    await WeChatSender(client).send_buttons(f"wx:{FRESH}", "您的订单 N2 已发货", rows)
    assert wechat_api.sent_messages[-1]["text"]["content"] == "您的订单 N2 已发货"
