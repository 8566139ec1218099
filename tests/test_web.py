"""The web pages (bot/web) in process, over httpx's ASGI transport: who may see what (initData
HMAC and age, session cookie, operators only), CSRF on every form, and that each action is
the engine's own (journaled with the actor)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from bot.http import build_app
from bot.web import WebConfig, routes
from bot.web.auth import Signer, check_init_data, new_session, session_cookie, sign_init_data
from engine import cart, catalogue, service, users, views
from engine.database import Database
from engine.state import snapshot
from handlers.base import App, Channels
from tests.helpers import seed_shop

TOKEN = "4242:WEB-TOKEN"
OPERATOR = "tg:1"
BUYER = 77
PRODUCTS = (("TEA", "100.00", "0.30", 0, "queue", "Green tea 绿茶"),
            ("RICE", "50.00", "0.40", 0, "points", "Rice 大米"),
            ("PEN", "5.00", "0.10", 0, "none", "Pen 钢笔"))


def init_data(user_id: int, *, token: str = TOKEN, age: int = 0, lang: str = "en",
              **extra: str) -> str:
    fields = {"auth_date": str(int(time.time()) - age), "query_id": "AAE",
              "user": json.dumps({"id": user_id, "first_name": f"U{user_id}",
                                  "language_code": lang}), **extra}
    return sign_init_data(fields, token)


class Web:
    """The web routes over a seeded shop, and a client to them."""

    def __init__(self, db: Database, *, console: str | None = None,
                 payments: frozenset[str] = frozenset()) -> None:
        self.app = App(db=db, operators=frozenset({OPERATOR}), currency="CNY",
                       channels=Channels(payments=payments, bot_username="rebate_shop_bot"))
        self.cfg = WebConfig(secret=b"k" * 32, bot_token=TOKEN, provider_token="p",
                             console=console)
        web_routes, self.site = routes(self.app, self.cfg)
        self.asgi = build_app(db=db, web=web_routes)

    def client(self, cookies: dict[str, str] | None = None, **headers: str
               ) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.asgi),
                                 base_url="http://127.0.0.1", headers=headers, cookies=cookies)

    def cookie_for(self, identity: str, via: str = "link") -> dict[str, str]:
        session = new_session(identity, via)
        return {"sf_session": session_cookie(Signer(self.cfg.secret), session)}


@pytest.fixture
def shop(sqlite_db: Database) -> Web:
    seed_shop(sqlite_db, users=(), at=None, products=PRODUCTS)
    return Web(sqlite_db)


def test_init_data_is_accepted_only_with_its_hmac_and_a_recent_auth_date() -> None:
    good = init_data(BUYER)
    user = check_init_data(good, TOKEN)
    assert user is not None and user.identity == f"tg:{BUYER}" and user.lang == "en"
    assert check_init_data(good, "4242:OTHER-TOKEN") is None  # signed by another bot
    forged = good.replace(f"%22id%22%3A+{BUYER}", "%22id%22%3A+1")
    assert forged != good and check_init_data(forged, TOKEN) is None  # user changed
    assert check_init_data(init_data(BUYER, age=2 * 86400), TOKEN) is None  # too old
    assert check_init_data(init_data(BUYER, age=-3600), TOKEN) is None  # from the future
    assert check_init_data("hash=00&auth_date=1", TOKEN) is None
    assert check_init_data("", TOKEN) is None


async def test_the_mini_app_speaks_for_the_signed_user_and_refuses_a_forged_one(
        shop: Web) -> None:
    async with shop.client() as c:
        r = await c.get("/app/api/me", headers={"X-Telegram-Init-Data": init_data(BUYER)})
        assert r.status_code == 200 and r.json()["identity"] == f"tg:{BUYER}"
        forged = init_data(BUYER, token="4242:FORGED")
        r = await c.get("/app/api/me", headers={"X-Telegram-Init-Data": forged})
        assert r.status_code == 401 and r.json()["ok"] is False
        r = await c.get("/app/v/rebates", headers={"X-Telegram-Init-Data": forged})
        assert r.status_code == 401
        # no sign-in at all: nothing but the empty shell
        assert (await c.get("/app/v/shop")).status_code == 401
        shell = await c.get("/app")
        assert shell.status_code == 200 and "app.js" in shell.text
    # the Mini App's first request joined the buyer, as a first chat message does
    assert shop.app.db.read(snapshot)["users"].get(f"tg:{BUYER}") is not None


async def test_catalogue_product_and_cart_views_show_the_engine_figures(shop: Web) -> None:
    h = {"X-Telegram-Init-Data": init_data(BUYER)}
    async with shop.client(**h) as c:
        await c.get("/app/api/me")
        page = await c.get("/app/v/shop")
        assert page.status_code == 200
        skus = re.findall(r'data-testid="product-([A-Z0-9_]+)"', page.text)
        assert skus, page.text
        found = await c.get("/app/v/shop", params={"q": skus[0].lower()})
        assert f'product-{skus[0]}"' in found.text
        nothing = await c.get("/app/v/shop", params={"q": "no such thing"})
        assert "no such thing" in nothing.text and "product-" not in nothing.text
        product = await c.get("/app/v/product", params={"sku": skus[0]})
        assert product.status_code == 200 and f'data-add="{skus[0]}"' in product.text
        unknown = await c.get("/app/v/product", params={"sku": "NOPE"})
        assert unknown.status_code == 409 and "no such product" in unknown.text
        me = (await c.get("/app/api/me")).json()
        added = await c.post("/app/api/cart", json={"op": "add", "sku": skus[0], "qty": 2,
                                                   "csrf": me["csrf"]})
        assert added.json() == {"ok": True, "count": 2, "message": "Added to your cart."}
        refused = await c.post("/app/api/cart", json={"op": "add", "sku": "NOPE", "qty": 1,
                                                     "csrf": me["csrf"]})
        assert refused.status_code == 409 and refused.json()["code"] == "unknown_product"
        cart_page = await c.get("/app/v/cart")
        price = catalogue.card(shop.app.db, skus[0])["price"]
        assert f'data-total="{2 * price}"' in cart_page.text
    # the page's cart is the chat's cart
    assert cart.view(shop.app.db, user=f"tg:{BUYER}")["lines"][0]["qty"] == 2


async def test_cart_and_checkout_need_the_csrf_token_and_refuse_politely(shop: Web) -> None:
    db = shop.app.db
    h = {"X-Telegram-Init-Data": init_data(BUYER)}
    async with shop.client(**h) as c:
        me = (await c.get("/app/api/me")).json()
        add = {"op": "add", "sku": "TEA", "qty": 1}
        assert (await c.post("/app/api/cart", json=add)).status_code == 403
        assert (await c.post("/app/api/cart", json={**add, "csrf": "x" * 32})).status_code \
            == 403
        assert cart.view(db, user=f"tg:{BUYER}")["lines"] == []
        empty = await c.post("/app/api/checkout", json={"key": "k" * 12, "csrf": me["csrf"],
                                                        "wallet": True})
        assert empty.status_code == 409 and empty.json()["code"] == "cart_empty"
        await c.post("/app/api/cart", json={**add, "csrf": me["csrf"]})
        await c.post("/app/api/address", json={"name": "Li Lei", "phone": "13800138000",
                                               "address": "2 Nanjing Road", "csrf": me["csrf"]})
        body = {"key": "k" * 12, "wallet": True}
        assert (await c.post("/app/api/checkout", json=body)).status_code == 403
        r = await c.post("/app/api/checkout", json={**body, "csrf": me["csrf"]})
        assert r.status_code == 409 and r.json()["code"] == "insufficient_balance"
        assert "wallet balance is not enough" in r.json()["error"]
        # without Telegram payments configured, no invoice is offered
        r = await c.post("/app/api/checkout", json={"key": "k" * 12, "csrf": me["csrf"]})
        assert r.status_code == 409 and r.json()["code"] == "pay.no_channel"
        bad = await c.post("/app/api/checkout", json={"key": "short", "csrf": me["csrf"]})
        assert bad.status_code == 400
        junk = await c.post("/app/api/checkout", content=b"\xff{not json",
                            headers={"content-type": "application/json"})
        assert junk.status_code == 403
    assert views.orders(db, f"tg:{BUYER}") == []


async def test_the_dashboard_answers_operators_only(shop: Web) -> None:
    async with shop.client() as c:
        r = await c.get("/admin")
        assert r.status_code == 200 and "signout" not in r.text  # the sign-in page
    async with shop.client(cookies=shop.cookie_for(f"tg:{BUYER}")) as c:
        r = await c.get("/admin")
        assert r.status_code == 403 and "signout" not in r.text
        for path in ("/admin/chart/pool.png", "/admin/journal.csv"):
            assert (await c.get(path)).status_code == 403
        r = await c.post("/admin/do/settings", data={"key": "store.paused", "value": "1"})
        assert r.status_code == 403
    async with shop.client(cookies={"sf_session": "e30.AAAA"}) as c:  # forged: nobody
        r = await c.get("/admin")
        assert r.status_code == 200 and "signout" not in r.text
    assert shop.app.db.read(users.store_config).raw["store.paused"] == "0"


async def test_a_login_link_works_once_and_forms_need_the_csrf_token(shop: Web) -> None:
    db = shop.app.db
    service.join(db, user="B")
    service.deposit(db, pool="queue", amount="10.00")
    async with shop.client() as c:
        token = shop.site.links.make(OPERATOR)
        r = await c.get("/admin/login", params={"token": token})
        assert r.status_code == 303
        again = await c.get("/admin/login", params={"token": token})
        assert again.status_code == 403  # used
        page = await c.get("/admin")
        assert page.status_code == 200 and "/admin/signout" in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        r = await c.post("/admin/do/settings", data={"key": "store.settle_days", "value": "3"})
        assert r.status_code == 403
        r = await c.post("/admin/do/settings",
                         data={"key": "store.settle_days", "value": "3", "csrf": csrf})
        assert r.status_code == 303
        assert (await c.post("/admin/do/verify", data={"csrf": csrf})).status_code == 303
        shown = await c.get("/admin", params={"verified": "x"})
        assert shown.status_code == 200
    assert db.read(users.store_config).raw["store.settle_days"] == "3"


def test_the_catalogue_benchmark_row_runs(tmp_path: Path) -> None:
    from benchmarks.common import Context
    from benchmarks.web_catalogue import web_catalogue

    row = web_catalogue(Context(quick=True, work=tmp_path, pg_problem=None))
    assert row.measured is not None and row.measured.median > 0
    assert row.facts["products"] == 100


async def test_weblink_sends_an_operator_a_one_time_link_the_server_honours_once(
        sqlite_db: Database) -> None:
    from bot.settings import Settings
    from bot.web import login_link_maker
    from handlers import dispatch
    from handlers.base import Request
    from tests.handlers_kit import text

    settings = Settings(_env_file=None, TELEGRAM_BOT_TOKEN=TOKEN,  # type: ignore[call-arg]
                        STOREFRONT_PUBLIC_URL="https://shop.example/")
    seed_shop(sqlite_db, users=(), at=None, products=PRODUCTS)
    maker = login_link_maker(settings)
    app = App(db=sqlite_db, operators=frozenset({OPERATOR}), channels=Channels(web_login=maker))

    def asks(identity: str) -> Request:
        return Request(channel="telegram", identity=identity, request_id=identity + "-1",
                       command="weblink", lang="en")

    said = text(await dispatch(app, asks(OPERATOR)))
    link = re.search(r"https://shop\.example/admin/login\?token=(\S+)", said)
    assert link is not None, said
    refused = text(await dispatch(app, asks(f"tg:{BUYER}")))
    assert "https://" not in refused  # operators only
    unset = App(db=sqlite_db, operators=frozenset({OPERATOR}))
    assert "STOREFRONT_PUBLIC_URL" in text(await dispatch(unset, asks(OPERATOR)))
    # the server (another Site, the same settings) lets the link in once
    web_routes, _site = routes(app, WebConfig.from_settings(settings))
    asgi = build_app(db=sqlite_db, web=web_routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                 base_url="http://127.0.0.1") as c:
        first = await c.get("/admin/login", params={"token": link.group(1)})
        assert first.status_code == 303 and "sf_session" in first.cookies
        assert "/admin/signout" in (await c.get("/admin")).text
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                 base_url="http://127.0.0.1") as c:
        again = await c.get("/admin/login", params={"token": link.group(1)})
        assert again.status_code == 403 and "sf_session" not in again.cookies


async def test_the_dashboard_shows_the_queue_ahead_and_changes_products_as_the_operator(
        shop: Web) -> None:
    db = shop.app.db
    for buyer in ("tg:5", "tg:6"):
        service.join(db, user=buyer)
        service.buy(db, user=buyer, sku="TEA", method="offline", key=f"seed-{buyer}")
    async with shop.client(cookies=shop.cookie_for(OPERATOR)) as c:
        page = await c.get("/admin")
        assert page.status_code == 200
        rows = re.findall(r'<tr data-ahead="(\d+)"><td>#(\d+)</td><td class="mono">([^<]+)<',
                          page.text)
        assert [(pos, who) for _seq, pos, who in rows] == [("1", "tg:5"), ("2", "tg:6")]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        r = await c.post("/admin/do/product", data={"csrf": csrf, "sku": "PEN", "price": "6.50",
                                                   "stock": "3", "active": "1"})
        assert r.status_code == 303 and "m=Done" in r.headers["location"], r.headers
        png = (b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
        data = "data:image/png;base64," + __import__("base64").b64encode(png).decode()
        r = await c.post("/admin/do/photo", data={"csrf": csrf, "sku": "PEN", "data": data})
        assert r.status_code == 303
        r = await c.post("/admin/do/photo", data={"csrf": csrf, "sku": "PEN",
                                                 "data": "data:text/plain;base64,aGk="})
        assert r.status_code == 303 and "not+valid" in r.headers["location"].replace("%20", "+")
        pen = catalogue.card(db, "PEN")
        assert (pen["price"], pen["stock"], len(pen["photos"])) == (650, 3, 1)
        photo = await c.get(f"/app/photo/{pen['photos'][0]['sha256']}")
        assert photo.status_code == 200 and photo.headers["content-type"] == "image/png"
        r = await c.post("/admin/do/nothing", data={"csrf": csrf})
        assert r.status_code == 404
    assert set(_actors(db, "product")) == {OPERATOR}


def _actors(db: Database, kind: str) -> list[str | None]:
    from sqlalchemy import select

    from storage.models import JournalTxn

    return list(db.read(lambda s: s.execute(select(JournalTxn.actor).where(
        JournalTxn.kind == kind, JournalTxn.actor.is_not(None))).scalars().all()))


async def test_goods_need_a_saved_address_before_a_wallet_or_wechat_checkout(shop: Web) -> None:
    db = shop.app.db
    h = {"X-Telegram-Init-Data": init_data(BUYER)}
    async with shop.client(**h) as c:
        me = (await c.get("/app/api/me")).json()
        await c.post("/app/api/cart", json={"op": "add", "sku": "PEN", "qty": 1,
                                            "csrf": me["csrf"]})
        assert 'data-address' in (await c.get("/app/v/cart")).text  # PEN is goods
        r = await c.post("/app/api/checkout", json={"key": "k" * 12, "wallet": True,
                                                    "csrf": me["csrf"]})
        assert r.status_code == 409 and r.json()["code"] == "address.needed"
        bad = await c.post("/app/api/address", json={"name": "W", "phone": "x", "address": "",
                                                     "csrf": me["csrf"]})
        assert bad.status_code == 409 and bad.json()["code"] == "invalid_address"
        ok = await c.post("/app/api/address", json={
            "name": "Wang Fang", "phone": "+86 138 0013 8000",
            "address": "1 Renmin Road, Shanghai", "csrf": me["csrf"]})
        assert ok.json() == {"ok": True, "message": "Address saved."}
        r = await c.post("/app/api/checkout", json={"key": "k" * 12, "wallet": True,
                                                    "csrf": me["csrf"]})
        assert r.json()["code"] == "insufficient_balance"  # past the address now
    from engine import delivery

    assert delivery.saved_address(db, user=f"tg:{BUYER}") == {
        "name": "Wang Fang", "phone": "+86 138 0013 8000", "address": "1 Renmin Road, Shanghai"}


async def test_a_blocked_buyer_is_refused_as_in_the_chat_and_junk_gets_no_500(
        shop: Web) -> None:
    from sqlalchemy import update

    from storage.models import User

    h = {"X-Telegram-Init-Data": init_data(BUYER)}
    async with shop.client(**h) as c:
        me = (await c.get("/app/api/me")).json()
        shop.app.db.run(lambda s: s.execute(update(User).where(User.handle == f"tg:{BUYER}")
                                            .values(blocked=True)))
        for r in (await c.get("/app/v/shop"), await c.get("/app/api/me"),
                  await c.post("/app/api/cart", json={"op": "add", "sku": "TEA", "qty": 1,
                                                      "csrf": me["csrf"]})):
            assert r.status_code == 403 and r.json()["code"] == "blocked", r.text
        assert cart.view(shop.app.db, user=f"tg:{BUYER}")["lines"] == []
    async with shop.client(**h) as c:
        for path in ("/app/v/nothing", "/app/static/../auth.py", "/app/photo/zz",
                     "/admin/chart/nope.png", "/app/v/product?sku=%00"):
            assert (await c.get(path)).status_code in (401, 403, 404), path
        big = await c.post("/app/api/cart", content=b"{" + b" " * 70_000 + b"}",
                           headers={"content-type": "application/json"})
        assert big.status_code == 413


async def test_a_withdrawal_asks_for_a_payout_method_first_as_the_chat_does(shop: Web) -> None:
    h = {"X-Telegram-Init-Data": init_data(BUYER)}
    async with shop.client(**h) as c:
        me = (await c.get("/app/api/me")).json()
        r = await c.post("/app/api/withdraw", json={"amount": "1.00", "key": "w" * 12,
                                                    "csrf": me["csrf"]})
        assert r.status_code == 409 and r.json()["code"] == "rebates.need_method"
        assert "/withdraw" in r.json()["error"]
    assert views.withdrawals(shop.app.db, "pending") == []


async def test_rebates_orders_and_invite_views_answer_in_the_buyers_language(shop: Web) -> None:
    h = {"X-Telegram-Init-Data": init_data(BUYER, lang="zh")}
    async with shop.client(**h) as c:
        await c.get("/app/api/me")
        invite = await c.get("/app/v/invite")
        assert re.search(r"https://t\.me/rebate_shop_bot\?start=[A-Za-z0-9_-]+", invite.text)
        assert 'src="data:image/png;base64,' in invite.text
        assert "分享您的链接" in invite.text
        rebates = await c.get("/app/v/rebates")
        assert rebates.status_code == 200 and "还没有排队返利" in rebates.text
        orders = await c.get("/app/v/orders")
        assert orders.status_code == 200 and "还没有订单" in orders.text
        english = await c.get("/app/v/orders", params={"lang": "en"})
        assert "No orders yet." in english.text


async def test_wechat_oauth_returns_only_to_this_servers_pages(sqlite_db: Database) -> None:
    app = App(db=sqlite_db, operators=frozenset())
    cfg = WebConfig(secret=b"w" * 32, wechat_app_id="wxapp", wechat_app_secret="s",
                    wechat_oauth_base="http://127.0.0.1:9", wechat_api_base="http://127.0.0.1:9")
    web_routes, site = routes(app, cfg)
    asgi = build_app(db=sqlite_db, web=web_routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                 base_url="http://127.0.0.1") as c:
        me = await c.get("/app/api/me")
        assert me.status_code == 401 and me.json()["login"] == "/app/oauth/wechat"
        for asked, back in (("/admin", "/admin"), ("//evil.example", "/app"),
                            ("/\\evil.example", "/app"), ("https://evil.example", "/app")):
            r = await c.get("/app/oauth/wechat", params={"next": asked})
            assert r.status_code == 302
            location = r.headers["location"]
            assert location.startswith("http://127.0.0.1:9/connect/oauth2/authorize?appid=wxapp")
            assert "scope=snsapi_base" in location
            state = re.search(r"state=([^&#]+)", location).group(1)  # type: ignore[union-attr]
            from urllib.parse import unquote

            assert site.signer.unsign("oauth", unquote(state), 600)["n"] == back  # type: ignore[index]
        # a forged state, or a code WeChat does not know (the stand-in is not there): nobody
        bad = await c.get("/app/oauth/wechat/callback", params={"code": "c", "state": "x.y"})
        assert bad.status_code == 403 and "sf_session" not in bad.cookies


async def test_an_operator_downloads_the_journal_as_csv(shop: Web) -> None:
    async with shop.client(cookies=shop.cookie_for(OPERATOR)) as c:
        r = await c.get("/admin/journal.csv")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        lines = r.text.splitlines()
        assert len(lines) >= 1 + len(PRODUCTS)  # a header, then each product's transaction
