"""The web pages in a real browser (Debian's chromium, Playwright) against the real
`storefront run` on loopback: a Telegram buyer in the Mini App (and a forged initData,
refused), a WeChat buyer through OAuth and JSAPI pay, an operator on the dashboard approving a withdrawal and shipping an order. Screenshots of each step go to the test's tmp_path
(`shots/`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import seed_demo_catalogue
from bot.web.auth import sign_init_data
from engine import delivery_views, service, views
from tests.standins.telegram_api import FakeBotAPI
from tests.web_browser_kit import (
    Storefront,
    browser,
    free_port,
    install_in_ci,
    only_loopback,
    telegram_script,
    wait_js,
    wechat_bridge,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
install_in_ci()

TOKEN = "4242:BROWSER-TOKEN"
TG_JS = "https://telegram.org/js/telegram-web-app.js"
BUYER = 501
OPERATOR = 1


def init_data(user_id: int, token: str = TOKEN) -> str:
    return sign_init_data({"auth_date": str(int(time.time())), "query_id": "AAE",
                           "user": json.dumps({"id": user_id, "first_name": f"U{user_id}",
                                               "language_code": "en"})}, token)


class Shots:
    def __init__(self, where: Path) -> None:
        self.where = where / "shots"
        self.where.mkdir(parents=True, exist_ok=True)
        self.n = 0

    def __call__(self, page: Any, name: str) -> Path:
        self.n += 1
        path = self.where / f"{self.n:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


def fill_address(page: Any) -> None:
    page.fill('form[data-address] input[name="name"]', "Wang Fang")
    page.fill('form[data-address] input[name="phone"]', "+86 138 0013 8000")
    page.fill('form[data-address] input[name="address"]', "1 Renmin Road, Shanghai")
    page.click('form[data-address] button[type="submit"]')
    page.wait_for_selector('#toast:has-text("Address saved")')


@pytest.fixture(scope="module")
def _chromium_process() -> Iterator[Any]:
    with browser() as b:
        yield b


@pytest.fixture
def chromium(_chromium_process: Any) -> Iterator[Any]:
    """The module's chromium, launched once (it was a launch a test). Each `new_page` is a
    browser context of its own (no cookies or storage shared), and every context a test
    opened is closed after it."""
    yield _chromium_process
    for context in _chromium_process.contexts:
        context.close()


def telegram_env(api: FakeBotAPI, url: str) -> dict[str, str]:
    return {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": api.base_url,
            "STOREFRONT_PUBLIC_URL": "https://shop.example",
            "TELEGRAM_PAYMENT_PROVIDER_TOKEN": "provider-test", "DATABASE_URL": url,
            "STOREFRONT_OPERATORS": f"tg:{OPERATOR}", "STOREFRONT_DEMO_CATALOGUE": "false"}


def test_a_telegram_buyer_shops_pays_and_sees_the_order_and_queue_entry(
        tmp_path: Path, make_db: Any, chromium: Any) -> None:
    url = f"sqlite:///{tmp_path}/shop.db"
    db = make_db(url)
    seed_demo_catalogue(db)
    shot = Shots(tmp_path)
    b = chromium
    with FakeBotAPI(TOKEN) as api:
        svc = Storefront(tmp_path, telegram_env(api, url))
        try:
            # a forged initData (signed with another bot's token) is nobody
            forged = b.new_page(viewport={"width": 360, "height": 740})
            only_loopback(forged, {TG_JS: telegram_script(init_data(BUYER, "4242:FORGED"))})
            forged.goto(f"{svc.url}/app")
            forged.wait_for_selector("main .notice")
            assert "open the shop" in forged.inner_text("main")
            assert forged.locator("[data-testid^=product-]").count() == 0
            shot(forged, "forged-initdata-refused")
            forged.close()

            page = b.new_page(viewport={"width": 360, "height": 740})
            only_loopback(page, {TG_JS: telegram_script(init_data(BUYER))})
            page.goto(f"{svc.url}/app")
            page.wait_for_selector('[data-testid="product-TEA"]')
            shot(page, "catalogue")
            page.click('[data-testid="product-TEA"]')
            page.wait_for_selector('[data-add="TEA"]')
            assert "queue entry" in page.inner_text(".earns").lower()
            shot(page, "product-tea")
            page.click('[data-add="TEA"]')
            page.wait_for_selector('#cart-count:text-is("1")')
            page.click('nav [data-view="shop"]')
            page.click('[data-testid="product-RICE"]')
            page.fill('input[name="qty"]', "2")
            page.click('[data-add="RICE"]')
            page.wait_for_selector('#cart-count:text-is("3")')
            page.click('nav [data-view="cart"]')
            page.wait_for_selector("button.primary[data-checkout]")
            assert page.get_attribute("[data-total]", "data-total") == "20000"  # 100 + 2 × 50
            shot(page, "cart")
            page.click("button.primary[data-checkout]")
            link = wait_js(page, "() => window.__invoice")
            invoice = api.invoice_links[link]  # type: ignore[attr-defined]
            assert invoice["total_amount"] == 20000 and invoice["currency"] == "CNY"
            token = invoice["payload"]
            shot(page, "invoice-opened")

            # Telegram asks before it charges, then tells the bot it did
            mark = len(api.calls)
            api.push_pre_checkout(BUYER, token, 20000)
            api.wait_for_sync("answerPreCheckoutQuery", since=mark, timeout=30)
            assert api.answers_to_pre_checkout()[-1][1] is True
            mark = len(api.calls)
            api.push_successful_payment(BUYER, token, 20000, "web-charge-1")
            api.wait_for_sync(lambda c: c.is_("sendMessage") and c.chat_id == BUYER,
                              since=mark, timeout=30)
            page.evaluate("window.__invoiceDone('paid')")
            row = page.wait_for_selector('.orders [data-order][data-status="settled"]')
            assert row is not None
            order = row.get_attribute("data-order")
            shot(page, "orders")
            page.click('nav [data-view="rebates"]')
            page.wait_for_selector("[data-entry]")
            assert "in line" in page.inner_text(".entries")
            shot(page, "rebates")
            # at start the bot's menu button was pointed at the page, and /shop offers it
            assert api.menu_button == {  # type: ignore[attr-defined]
                "type": "web_app", "text": "🛍 商店 Shop",
                "web_app": {"url": "https://shop.example/app"}}
            mark = len(api.calls)
            api.push_text(BUYER, "/shop", language_code="en")
            offer = api.wait_for_sync(
                lambda c: c.is_("sendMessage") and c.chat_id == BUYER
                and "web_app" in json.dumps(c.params.get("reply_markup")), since=mark,
                timeout=30)
            (row,) = offer.params["reply_markup"]["inline_keyboard"]
            assert row == [{"text": "🛍 Open shop",
                            "web_app": {"url": "https://shop.example/app"}}]
        finally:
            svc.stop()
    (mine,) = [o for o in views.orders(db, f"tg:{BUYER}") if o["order"] == order]
    assert mine["status"] == "settled" and mine["method"] == "telegram" and mine["entry"]
    assert mine["total"] == 20000


def test_an_operator_approves_a_withdrawal_on_the_dashboard(tmp_path: Path,
                                                           make_db: Any, chromium: Any) -> None:
    url = f"sqlite:///{tmp_path}/shop.db"
    db = make_db(url)
    seed_demo_catalogue(db)
    # a buyer whose queue entry a release paid into the wallet, asking for it
    service.upsert_product(db, sku="NOW", price="100.00", margin="0.50", lock_days=0,
                           scheme="queue", name="Paid at once")
    service.join(db, user="tg:7")
    service.buy(db, user="tg:7", sku="NOW", method="offline", key="seed-buy")
    service.deposit(db, pool="queue", amount="1000.00")
    service.release(db)
    wallet = views.account(db, "tg:7")["wallet"]
    assert wallet > 0
    asked = service.request_withdrawal(db, user="tg:7", amount=f"{wallet // 100}.00",
                                       key="seed-withdraw")
    # and a paid order of goods (the demo's tea) waiting to ship
    sold = service.buy(db, user="tg:7", sku="TEA", method="offline", key="seed-goods")
    shot = Shots(tmp_path)
    b = chromium
    with FakeBotAPI(TOKEN) as api:
        svc = Storefront(tmp_path, telegram_env(api, url))
        try:
            # a buyer opening the dashboard from the Mini App is refused
            stranger = b.new_page(viewport={"width": 360, "height": 740})
            only_loopback(stranger, {TG_JS: telegram_script(init_data(BUYER))})
            stranger.goto(f"{svc.url}/admin")
            stranger.wait_for_timeout(500)
            assert stranger.locator("form[action='/admin/signout']").count() == 0
            stranger.close()

            page = b.new_page(viewport={"width": 360, "height": 900})
            only_loopback(page, {TG_JS: telegram_script(init_data(OPERATOR))})
            page.goto(f"{svc.url}/admin")
            page.wait_for_selector("form[action='/admin/signout']")  # signed in by initData
            row = page.wait_for_selector(f'[data-withdrawal="{asked["withdrawal"]}"]')
            assert row is not None
            # the pool's charts are drawn (matplotlib, in a worker thread) and shown
            wait_js(page, "() => [...document.querySelectorAll('img.chart')].every("
                          "i => i.complete && i.naturalWidth > 0)", timeout=60)
            shot(page, "dashboard")
            row.query_selector('button[value="approve"]').click()  # type: ignore[union-attr]
            page.wait_for_selector("[data-message]")
            assert page.locator(f'[data-withdrawal="{asked["withdrawal"]}"]').count() == 0
            shot(page, "withdrawal-approved")
            row = page.wait_for_selector(f'[data-ship="{sold["order"]}"]')
            row.query_selector('input[name="carrier"]').fill("SF")  # type: ignore[union-attr]
            row.query_selector('input[name="number"]').fill("SF1234567")  # type: ignore[union-attr]
            row.query_selector("button").click()  # type: ignore[union-attr]
            page.wait_for_selector("[data-message]")
            assert page.locator(f'[data-ship="{sold["order"]}"]').count() == 0
            shot(page, "order-shipped")
        finally:
            svc.stop()
    assert views.withdrawals(db, "pending") == []
    (done,) = views.withdrawals(db, "approved")
    assert done["id"] == asked["withdrawal"]
    assert _actor_of(db, "withdrawal_approved") == [f"tg:{OPERATOR}"]
    assert _actor_of(db, "ship") == [f"tg:{OPERATOR}"]
    (shipped,) = [o for o in delivery_views.buyer_orders(db, user="tg:7")["orders"]
                  if o["order"] == sold["order"]]
    assert (shipped["carrier"], shipped["tracking"]) == ("SF", "SF1234567")


def _actor_of(db: Any, kind: str) -> list[str | None]:
    from sqlalchemy import select

    from storage.models import JournalTxn

    return list(db.read(lambda s: s.execute(select(JournalTxn.actor).where(
        JournalTxn.kind == kind)).scalars().all()))


def test_a_wechat_buyer_signs_in_by_oauth_and_pays_by_jsapi(tmp_path: Path,
                                                          make_db: Any, chromium: Any) -> None:
    from tests.standins import wechat as sw
    from tests.standins.wechat_web import FakeWeChatWeb

    url = f"sqlite:///{tmp_path}/shop.db"
    db = make_db(url)
    seed_demo_catalogue(db)
    keys = sw.generate_pay_keys(tmp_path)
    openid = "o-web-buyer-1"
    shot = Shots(tmp_path)
    port = free_port()
    b = chromium
    with FakeWeChatWeb(appid=keys.appid, secret="wx-secret") as api, \
            sw.FakeWeChatPayAPI(keys) as pay_api:
        api.next_openid = openid
        svc = Storefront(tmp_path, {
            "DATABASE_URL": url, "STOREFRONT_DEMO_CATALOGUE": "false",
            "WECHAT_TOKEN": "wx-token", "WECHAT_APP_ID": keys.appid,
            "WECHAT_APP_SECRET": "wx-secret", "WECHAT_API_BASE_URL": api.base_url,
            **keys.settings(f"http://127.0.0.1:{port}/wechat/pay/notify", pay_api.base_url),
            "STOREFRONT_PUBLIC_URL": f"http://127.0.0.1:{port}"}, port=port)
        try:
            ua = ("Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 Mobile "
                  "MicroMessenger/8.0.40")
            context = b.new_context(viewport={"width": 360, "height": 740}, user_agent=ua)
            page = context.new_page()
            only_loopback(page, {TG_JS: ""})  # outside Telegram its script sets no initData
            page.add_init_script(wechat_bridge())
            page.goto(f"{svc.url}/app")
            # no session: the page goes through OAuth (snsapi_base) and comes back signed in
            page.wait_for_selector('[data-testid="product-TEA"]')
            assert [c.query["scope"] for c in api.calls_of("/connect/oauth2/authorize")] \
                == ["snsapi_base"]
            cookie = [c for c in context.cookies() if c["name"] == "sf_session"]
            assert cookie and cookie[0]["httpOnly"]
            shot(page, "wechat-catalogue")
            page.click('[data-testid="product-PEN"]')
            page.click('[data-add="PEN"]')
            page.wait_for_selector('#cart-count:text-is("1")')
            page.click('nav [data-view="shop"]')
            page.click('[data-testid="product-RICE"]')
            page.click('[data-add="RICE"]')
            page.wait_for_selector('#cart-count:text-is("2")')
            page.click('nav [data-view="cart"]')
            page.wait_for_selector("button.primary[data-checkout]")
            page.click("button.primary[data-checkout]")  # goods, and no address yet
            page.wait_for_selector('#toast:has-text("save a delivery address")')
            fill_address(page)
            shot(page, "wechat-cart")
            page.click("button.primary[data-checkout]")
            asked = wait_js(page, "() => window.__wxpay")
            assert asked["name"] == "getBrandWCPayRequest"
            assert asked["params"]["package"].startswith("prepay_id=")
            (order,) = pay_api.orders
            assert pay_api.orders[order]["total"] == 5500  # 5.00 + 50.00
            # the buyer pays; WeChat Pay tells the shop (signed notification)
            pay_api.mark_paid(order, payer_openid=openid)
            headers, body = pay_api.notification_for(order)
            r = httpx.post(f"{svc.url}/wechat/pay/notify", content=body, headers=headers)
            assert r.status_code in (200, 204), r.text
            page.evaluate("window.__wxpayDone({err_msg: 'get_brand_wcpay_request:ok'})")
            page.wait_for_selector(f'[data-order="{order}"][data-status="settled"]')
            shot(page, "wechat-orders")
            # at start the Official Account's menu was pointed at the page
            assert api.menus[-1]["button"][0]["url"] == f"http://127.0.0.1:{port}/app"
        finally:
            svc.stop()
    (mine,) = views.orders(db, f"wx:{openid}")
    assert (mine["order"], mine["method"], mine["cash"]) == (order, "wechat", 5500)
    (ships,) = delivery_views.to_ship(db)["orders"]
    assert (ships["order"], ships["name"]) == (order, "Wang Fang")


def test_without_a_chat_channel_the_console_user_shops_in_a_plain_browser(
        tmp_path: Path, chromium: Any) -> None:
    """`make run` with no tokens: the console chat, and the web pages on loopback for the
    console user (an operator): buy with the console's simulated payment, see the dashboard."""
    url = f"sqlite:///{tmp_path}/shop.db"
    shot = Shots(tmp_path)
    b = chromium
    svc = Storefront(tmp_path, {"DATABASE_URL": url})  # the demo catalogue is seeded
    try:
        assert svc.says("the shop in a browser"), svc.tail()
        page = b.new_page(viewport={"width": 360, "height": 740})
        only_loopback(page, {TG_JS: ""})
        page.goto(f"{svc.url}/app")
        page.wait_for_selector('[data-testid="product-PEN"]')
        page.click('[data-testid="product-PEN"]')
        page.click('[data-add="PEN"]')
        page.wait_for_selector('#cart-count:text-is("1")')
        page.click('nav [data-view="cart"]')
        page.wait_for_selector("button.primary[data-checkout]")
        fill_address(page)
        page.click("button.primary[data-checkout]")
        page.wait_for_selector('.orders [data-order][data-status="settled"]')
        assert "Wang Fang" in page.inner_text(".orders")  # where it ships
        shot(page, "console-orders")
        page.click('nav [data-lang="zh"]')
        page.wait_for_selector('nav [data-view="orders"]:text-is("订单")')
        page.wait_for_selector('.orders .tag:text-is("已结算")')
        shot(page, "console-orders-zh")
        page.goto(f"{svc.url}/admin")
        page.wait_for_selector("form[action='/admin/signout']")
    finally:
        svc.stop()
