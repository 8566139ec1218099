"""The running shop for the WeChat tests: `storefront run`'s HTTP server on 127.0.0.1 with
the real handlers and engine, wechatpy pointed at `FakeWeChatAPI`, wechatpayv3 at
`FakeWeChatPayAPI`, and helpers that speak to it exactly as WeChat's servers do."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bot.app import open_channels
from bot.http import HttpServer, start_http
from bot.settings import Settings
from engine import users
from handlers.base import App, Channels
from storage.db import Database
from storage.migrate import migrate
from storage.models import Identity, JournalTxn, Order, User
from tests.helpers import seed_shop
from tests.standins import wechat as sw

TOKEN = "storefront-token"
SECRET = "app-secret"
GH_ID = "gh_0123456789ab"
OPERATOR = "oOperator_0000000000000001"
NOTIFY_URL = "https://shop.example/wechat/pay/notify"
# Telegram beside WeChat (`open_both_channels`): the bot, its webhook and the buyer there
TG_BOT_TOKEN = "123:SECRETTOKEN"
TG_WEBHOOK_SECRET = "hook-secret_1"
TG_BUYER = 4242
# WeChat users for the 48-hour customer-service window (`seen_fresh_and_stale`)
FRESH, STALE = "oFresh_0000000000000000001", "oStale_0000000000000000002"
_ids = itertools.count(7_000_000_000_000_000_001)


def next_msg_id() -> int:
    return next(_ids)


@dataclass
class Shop:
    server: HttpServer
    app: App
    db: Database
    api: sw.FakeWeChatAPI
    pay_api: sw.FakeWeChatPayAPI
    keys: sw.PayKeys
    http: httpx.AsyncClient
    aes_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def appid(self) -> str:
        return self.keys.appid

    # -- what WeChat's servers send --------------------------------------------------------
    async def post(self, xml: str | bytes, *, safe: bool = False,
                   params: dict[str, str] | None = None) -> httpx.Response:
        if safe:
            assert self.aes_key is not None
            body, query = sw.encrypt_for_safe_mode(
                xml if isinstance(xml, str) else xml.decode(), TOKEN, self.aes_key, self.appid)
        else:
            body, query = xml, sw.sign_query(TOKEN)
        if params is not None:
            query = params
        return await self.http.post("/wechat", params=query, content=body,
                                    headers={"Content-Type": "text/xml"})

    def reply_of(self, response: httpx.Response, *, safe: bool = False) -> dict[str, Any]:
        assert response.status_code == 200, (response.status_code, response.text)
        text = response.text
        if safe and text.strip() not in ("", "success"):
            text = sw.decrypt_reply(text, TOKEN, self.aes_key or "", self.appid)
        return sw.parse_reply_xml(text)

    async def say(self, openid: str, content: str, *, msg_id: int | None = None,
                  safe: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A user's text message; returns the parsed passive reply ({} for none)."""
        fields = {"Content": content, **(extra or {})}
        xml = sw.message_xml(GH_ID, openid, "text", fields, msg_id=msg_id or next_msg_id())
        reply = self.reply_of(await self.post(xml, safe=safe), safe=safe)
        await self.server.wechat.drain()
        return reply

    async def event(self, openid: str, event: str, key: str | None = None,
                    create_time: int | None = None) -> dict[str, Any]:
        xml = sw.event_xml(GH_ID, openid, event, event_key=key, create_time=create_time)
        reply = self.reply_of(await self.post(xml))
        await self.server.wechat.drain()
        return reply

    async def notify(self, headers: dict[str, str], body: bytes,
                     path: str = "/wechat/pay/notify") -> httpx.Response:
        response = await self.http.post(path, headers=headers, content=body)
        await self.server.pay.drain()
        return response

    # -- what the shop knows ---------------------------------------------------------------
    def journal_size(self) -> int:
        return self.db.read(lambda s: s.execute(select(func.count()).select_from(
            JournalTxn)).scalar_one())

    def user_of(self, identity: str) -> User | None:
        return self.db.read(lambda s: s.execute(select(User).join(
            Identity, Identity.user_id == User.id).where(Identity.identity == identity))
            .scalar_one_or_none())

    def order(self, ref: str) -> Order:
        return self.db.read(lambda s: s.execute(select(Order).where(Order.ref == ref))
                            .scalar_one())

    def last_order_of(self, identity: str) -> Order:
        user = self.user_of(identity)
        assert user is not None
        return self.db.read(lambda s: s.execute(select(Order).where(
            Order.user_id == user.id).order_by(Order.no.desc()).limit(1)).scalar_one())

    def sent_texts(self, openid: str) -> list[str]:
        return [m["text"]["content"] for m in self.api.sent_messages
                if m["touser"] == openid and m["msgtype"] == "text"]


def settings_for(db_url: str, api: sw.FakeWeChatAPI, pay_api: sw.FakeWeChatPayAPI,
                 keys: sw.PayKeys, aes_key: str | None, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": db_url,
        "STOREFRONT_HTTP_HOST": "127.0.0.1",
        "STOREFRONT_HTTP_PORT": 0,
        "WECHAT_TOKEN": TOKEN,
        "WECHAT_APP_ID": keys.appid,
        "WECHAT_APP_SECRET": SECRET,
        "WECHAT_ENCODING_AES_KEY": aes_key,
        "WECHAT_API_BASE_URL": api.base_url,
        **keys.settings(NOTIFY_URL, pay_api.base_url),
    }
    values.update(extra)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def stock(db: Database) -> None:
    """A small catalogue: TEA joins the queue and mints points; settled at once."""
    seed_shop(db, users=(), at=None,
              products=[("TEA", "120.00", "0.50", 15, "both", "Oolong tea"),
                        ("CUP", "30.00", "0.40", 15, "points", "Tea cup")])


TEST_PASSIVE_BUDGET = 12.0  # seconds (the client waits 15)


@asynccontextmanager
async def open_shop(db_url: str, keys: sw.PayKeys, *, aes: bool = False,
                    operators: tuple[str, ...] = (f"wx:{OPERATOR}",),
                    telegram_application: Any = None, app: App | None = None,
                    **extra: Any) -> AsyncIterator[Shop]:
    db = app.db if app is not None else Database(db_url)
    migrate(db)
    aes_key = sw.generate_aes_key() if aes else None
    with sw.FakeWeChatAPI(appid=keys.appid, secret=SECRET) as api, \
            sw.FakeWeChatPayAPI(keys) as pay_api:
        settings = settings_for(db_url, api, pay_api, keys, aes_key, **extra)
        client = None
        if app is None:  # as `storefront run` builds it (bot/app.py)
            channels, client = await open_channels(settings)
            app = App(db=db, operators=frozenset(operators), currency="CNY", channels=channels)
        server = await start_http(settings, app, telegram_application, wechat_client=client)
        if server.wechat is not None:
            # WeChat's 5 s window is about the network; on a loaded test machine a chart can
            # take longer, and a reply that becomes a follow-up would fail a test for timing.
            # Tests of the window itself set their own budget.
            server.wechat.passive_budget = TEST_PASSIVE_BUDGET
        http = httpx.AsyncClient(base_url=server.url, timeout=15, trust_env=False)
        try:
            yield Shop(server, app, db, api, pay_api, keys, http, aes_key)
        finally:
            await http.aclose()
            await server.stop()
            db.dispose()


@asynccontextmanager
async def open_both_channels(db_url: str, keys: sw.PayKeys, *,
                             operators: frozenset[str]) -> AsyncIterator[tuple[Shop, Any]]:
    """The shop (with `stock`'s catalogue) on both channels behind one HTTP server and one
    database: the real python-telegram-bot application on the server's /telegram webhook,
    talking to a Bot API stand-in, beside WeChat. Yields (shop, the Bot API stand-in)."""
    from bot.telegram import bot_username, start_telegram, stop_telegram
    from tests.conftest import migrated
    from tests.standins import telegram_api as tg

    with migrated(db_url) as db:
        stock(db)
        async with tg.FakeBotAPI(token=TG_BOT_TOKEN) as bot_api:
            telegram_settings = {
                "TELEGRAM_BOT_TOKEN": TG_BOT_TOKEN, "TELEGRAM_API_BASE_URL": bot_api.base_url,
                "TELEGRAM_PAYMENT_PROVIDER_TOKEN": "provider-token",
                "TELEGRAM_WEBHOOK_URL": "https://shop.example/telegram",
                "TELEGRAM_WEBHOOK_SECRET": TG_WEBHOOK_SECRET,
            }
            tg_settings = Settings(_env_file=None, **telegram_settings)  # type: ignore[call-arg]
            app = App(db=db, operators=operators, currency="CNY", channels=Channels(
                payments=frozenset({"telegram", "wechat"}),
                bot_username=await bot_username(tg_settings)))
            application = await start_telegram(tg_settings, app)
            try:
                async with open_shop(db_url, keys, app=app, telegram_application=application,
                                     **telegram_settings) as shop:
                    yield shop, bot_api
            finally:
                await stop_telegram(application)


async def telegram(shop: Shop, bot_api: Any, update: dict[str, Any],
                   method: str = "sendMessage") -> Any:
    """POST an update to the shop's /telegram webhook; return the bot's next call of `method`
    (to TG_BUYER's chat, or to none)."""
    mark = len(bot_api.calls)
    r = await shop.http.post("/telegram", json=update,
                             headers={"X-Telegram-Bot-Api-Secret-Token": TG_WEBHOOK_SECRET})
    assert r.status_code == 200
    return await bot_api.wait_for(
        lambda c: c.is_(method) and c.chat_id in (TG_BUYER, None), 10, since=mark)


def checkout_path(reply_text: str) -> str:
    """The pay link's path from a purchase reply."""
    start = reply_text.index("https://shop.example/wechat/pay/checkout/")
    url = reply_text[start:].split()[0].split('"')[0]
    return url[len("https://shop.example"):]


def envelope(body: bytes) -> dict[str, Any]:
    return json.loads(body)


# -- fixtures the WeChat test modules share (import them by name) ---------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory: Any) -> sw.PayKeys:
    """WeChat Pay keys and platform certificate, made once per module."""
    return sw.generate_pay_keys(tmp_path_factory.mktemp("paykeys"))


@pytest.fixture
async def shop(sqlite_url: str, keys: sw.PayKeys) -> AsyncIterator[Shop]:
    """The shop with its catalogue, behind the WeChat webhook and stand-ins."""
    async with open_shop(sqlite_url, keys) as s:
        stock(s.db)
        yield s


def seen_fresh_and_stale(db: Database) -> Database:
    """FRESH wrote an hour ago (inside WeChat's 48-hour window), STALE three days ago."""
    now = datetime.now(UTC)
    for openid, seen in ((FRESH, now - timedelta(hours=1)), (STALE, now - timedelta(days=3))):
        users.resolve(db, f"wx:{openid}")

        def touch(s: Any, identity: str = f"wx:{openid}", at: datetime = seen) -> None:
            s.get(Identity, identity).last_seen_at = at

        db.run(touch)
    return db
