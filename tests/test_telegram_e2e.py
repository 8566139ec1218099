"""End to end over real sockets: the real python-telegram-bot Application, polling the
loopback Bot API stand-in, wired to the real conversations and engine on a fresh database.

Each test plays a chat the way Telegram would deliver it and checks both what the users were
told (exact amounts) and what the books say (`engine.state.snapshot`)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.routing import Route
from telegram.ext import Application

from bot.app import open_channels
from bot.settings import Settings
from bot.telegram import start_telegram, stop_telegram, telegram_webhook_route
from engine.state import snapshot
from handlers import i18n
from handlers.base import App
from handlers.registry import commands
from storage.models import Order, Product, User
from storage.ratelimit import RateLimiter
from tests.conftest import migrated
from tests.helpers import free_port
from tests.standins.telegram_api import (
    Call,
    FakeBotAPI,
    make_message,
    make_shipped_payment_update,
    make_text_update,
    make_user,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")

TOKEN = "4242:E2E-TOKEN"
OPERATOR = 1
LINK = re.compile(r"https://t\.me/rebate_shop_bot\?start=([A-Za-z0-9_-]{1,64})")


class Shop:
    """A running shop: the stand-in Bot API, the Application polling it, the database."""

    def __init__(self, api: FakeBotAPI, app: App, application: Application) -> None:
        self.api, self.app, self.application = api, app, application

    def state(self) -> dict[str, Any]:
        return self.app.db.read(snapshot)

    async def replies(self, chat: int, mark: int, expect: int, timeout: float = 60.0
                      ) -> list[Call]:
        """The first `expect` answered send* calls to `chat` after call number `mark`."""
        deadline = time.monotonic() + timeout
        while True:
            sends = [c for c in self.api.calls[mark:] if c.method.startswith("send")
                     and c.chat_id == chat and c.ok is not None]
            if len(sends) >= expect:
                return sends[:expect]
            if time.monotonic() > deadline:
                raise TimeoutError(f"chat {chat}: {[(c.method, c.text) for c in sends]}")
            await asyncio.sleep(0.01)

    async def send(self, user: int, text: str, *, expect: int = 1, lang: str = "en"
                   ) -> list[Call]:
        mark = len(self.api.calls)
        self.api.push_text(user, text, language_code=lang, first_name=f"User{user}")
        return await self.replies(user, mark, expect)

    async def say(self, user: int, text: str, *, lang: str = "en") -> str:
        (call,) = await self.send(user, text, lang=lang)
        assert call.is_("sendMessage") and call.ok, call
        return str(call.params["text"])

    async def press(self, user: int, data: str) -> str:
        mark = len(self.api.calls)
        self.api.push_callback(user, data)
        (call,) = await self.replies(user, mark, 1)
        await self.api.wait_for("answerCallbackQuery", since=mark)
        return str(call.params["text"])

    async def buy(self, user: int, sku: str) -> tuple[str, int]:
        """`/buy SKU` → the invoice's payload token and amount."""
        calls = await self.send(user, f"/buy {sku}", expect=2)
        (invoice,) = [c for c in calls if c.is_("sendInvoice")]
        assert invoice.ok and invoice.params["provider_token"] == "provider-test"
        (price,) = invoice.params["prices"]
        return invoice.params["payload"], int(price["amount"])

    async def precheck(self, user: int, token: str, amount: int) -> tuple[bool, str | None]:
        update = self.api.push_pre_checkout(user, token, amount)
        query_id = update["pre_checkout_query"]["id"]
        await self.api.wait_for(lambda c: c.is_("answerPreCheckoutQuery")
                                and c.params.get("pre_checkout_query_id") == query_id)
        ((_, ok, error),) = [a for a in self.api.answers_to_pre_checkout() if a[0] == query_id]
        return ok, error

    async def pay(self, user: int, token: str, amount: int, charge: str) -> str:
        mark = len(self.api.calls)
        self.api.push_successful_payment(user, token, amount, charge)
        (call,) = await self.replies(user, mark, 1)
        return str(call.params["text"])

    async def pay_shipped(self, user: int, token: str, amount: int, charge: str,
                          **address: str) -> str:
        """`pay` for an invoice that asked for shipping: the payment carries the buyer's
        order info (`make_shipped_payment_update`: name, phone, city, street, post_code)."""
        mark = len(self.api.calls)
        self.api.push_update(make_shipped_payment_update(user, token, amount, charge, **address))
        (call,) = await self.replies(user, mark, 1)
        return str(call.params["text"])


def settings_for(api: FakeBotAPI) -> Settings:
    return Settings(_env_file=None, TELEGRAM_BOT_TOKEN=TOKEN,  # type: ignore[call-arg]
                    TELEGRAM_API_BASE_URL=api.base_url,
                    TELEGRAM_PAYMENT_PROVIDER_TOKEN="provider-test",
                    TELEGRAM_WEBHOOK_URL=None, TELEGRAM_WEBHOOK_SECRET=None)


@asynccontextmanager
async def running_shop(url: str, *, limiter: RateLimiter | None = None) -> AsyncIterator[Shop]:
    with migrated(url) as db:
        api = FakeBotAPI(token=TOKEN).start()
        application = None
        try:
            channels, _ = await open_channels(settings_for(api))  # as `storefront run` does
            app = App(db=db, operators=frozenset({f"tg:{OPERATOR}"}),
                      limiter=limiter or RateLimiter(), channels=channels)
            application = await start_telegram(settings_for(api), app, poll_timeout=1)
            yield Shop(api, app, application)
        finally:
            if application is not None:
                await stop_telegram(application)
            await asyncio.to_thread(api.stop)


@pytest.fixture
async def shop(sqlite_url: str) -> AsyncIterator[Shop]:
    async with running_shop(sqlite_url) as s:
        yield s


async def setup_shop(s: Shop) -> None:
    """The operator lists TEA (100.00, margin 0.50, 15 days, queue+points) and seeds the
    queue pool with 1000.00."""
    text = await s.say(OPERATOR, "/product TEA 100.00 0.50 15 both Green tea")
    assert "TEA" in text and "100.00" in text
    text = await s.say(OPERATOR, "/deposit queue 1000.00")
    assert "1000.00" in text
    product = s.app.db.read(lambda session: session.get(Product, "TEA"))
    assert (product.price, product.margin, product.lock_days, product.scheme) == (
        10000, "0.50", 15, "both")
    assert s.state()["pools"]["queue"] == "1000.00"


def order_statuses(s: Shop, handle: str) -> list[str]:
    return list(s.app.db.read(lambda session: session.execute(
        select(Order.status).join(User, User.id == Order.user_id)
        .where(User.handle == handle).order_by(Order.no)).scalars().all()))


async def buy_and_pay(s: Shop, user: int, charge: str) -> str:
    token, amount = await s.buy(user, "TEA")
    assert amount == 10000
    assert await s.precheck(user, token, amount) == (True, None)
    return await s.pay(user, token, amount, charge)


# --------------------------------------------------------------------------- the whole story


async def test_storefront_story_on_sqlite(shop: Shop) -> None:
    s = shop
    # The menus: consumers' commands for everyone, in English and Chinese; the operator's own
    # chat also lists the operator commands.
    consumer = [c.name for c in commands(operator=False)]
    operator = [c.name for c in commands(operator=True)]
    assert [c["command"] for c in s.api.commands[""]] == consumer
    assert s.api.commands["zh"] == [{"command": n, "description": i18n.t("zh", f"cmd.{n}")}
                                    for n in consumer]
    assert s.api.commands[""][0]["description"] == i18n.t("en", f"cmd.{consumer[0]}")
    op_scope = json.dumps({"chat_id": OPERATOR, "type": "chat"}, sort_keys=True)
    for lang in ("", "zh"):
        assert [c["command"] for c in s.api.scoped_commands[(op_scope, lang)]] == [
            c.name for c in commands()]
    assert not set(operator) & {c["command"] for c in s.api.commands["zh"]}

    await setup_shop(s)

    # User 2 asks for an invite: a deep link with the bot's username, and its QR code.
    calls = await s.send(2, "/invite", expect=2)
    assert [c.method for c in calls] == ["sendMessage", "sendPhoto"]
    match = LINK.search(calls[0].params["text"])
    assert match, calls[0].params["text"]
    code = match.group(1)
    assert calls[1].files["photo"].startswith(b"\x89PNG\r\n\x1a\n")

    # User 3 arrives through that link: the referrer is fixed at first contact.
    welcome = await s.say(3, f"/start {code}", lang="zh-hans")
    assert re.search(r"[\u4e00-\u9fff]", welcome)  # answered in Chinese
    assert s.state()["users"]["tg:3"]["referrer"] == "tg:2"

    # Both buy TEA through Telegram invoices: pre-checkout ok, then the payment.
    receipt = await buy_and_pay(s, 2, "charge-u2")
    assert "100.00" in receipt
    await buy_and_pay(s, 3, "charge-u3")
    state = s.state()
    assert state["pools"] == {"queue": "1000.00", "points": "60.00"}
    assert state["points"] == {"supply": "35.700000", "price": "1.680672"}
    assert [(e["user"], e["amount"], e["released"], e["status"]) for e in state["entries"]] == [
        ("tg:2", "100.00", "20.00", "waiting"), ("tg:3", "100.00", "0.00", "waiting")]

    # The referrer's /me shows the acceleration: 20.00 of its 100.00 paid, 80.00 still owed.
    me2 = await s.say(2, "/me")
    assert "80.00 CNY" in me2 and "Points: 21.00 at price 1.6806" in me2
    assert "35.29 CNY" in me2  # 21 points × 60.00 / 35.7, rounded down
    assert "20.00 CNY" in me2  # the acceleration was paid into its wallet
    assert state["users"]["tg:2"]["wallet"] == "20.00"
    me3 = await s.say(3, "/me", lang="zh-hans")
    assert "100.00 CNY" in me3 and "积分：14.70，" in me3
    report_calls = await s.send(OPERATOR, "/pool", expect=3)  # the numbers, and two charts
    assert [c.method for c in report_calls] == ["sendMessage", "sendPhoto", "sendPhoto"]
    assert all(c.files["photo"].startswith(b"\x89PNG") for c in report_calls[1:])
    report = report_calls[0].params["text"]
    assert "1000.00 CNY" in report and "60.00 CNY" in report and "35.700000" in report

    # The operator runs the release now: one message, edited as the job goes (nothing has
    # matured yet, so nothing is paid).
    mark = len(s.api.calls)
    (started,) = await s.send(OPERATOR, "/release")
    done = await s.api.wait_for(lambda c: c.is_("editMessageText") and c.chat_id == OPERATOR,
                                since=mark)
    assert done.params["message_id"] == started.result["message_id"]
    assert done.params["text"] != started.params["text"] and "0.00 CNY" in done.params["text"]
    assert s.state()["entries"] == state["entries"]

    # Telegram delivers user 3's successful payment again: nothing changes.
    before = s.state()
    last_invoice = [c for c in s.api.calls_of("sendInvoice") if c.chat_id == 3][-1]
    await s.pay(3, last_invoice.params["payload"], 10000, "charge-u3")
    assert s.state() == before

    # A pre-checkout for a payload the shop never issued is refused with a reason.
    ok, error = await s.precheck(3, "forged-payload-123", 10000)
    assert ok is False and error

    # A payment whose amount does not match its checkout is refused and records nothing.
    token4, amount4 = await s.buy(4, "TEA")
    before = s.state()
    ok, error = await s.precheck(4, token4, amount4 - 1)
    assert ok is False and error
    await s.pay(4, token4, amount4 - 1, "charge-u4-short")
    assert s.state() == before
    assert order_statuses(s, "tg:4") == ["awaiting_payment"]


# --------------------------------------------------------------------------- PostgreSQL


async def test_payment_flow_on_postgresql(pg_url: str) -> None:
    async with running_shop(pg_url) as s:
        await setup_shop(s)
        await s.say(2, "/start")
        code = LINK.search((await s.send(2, "/invite", expect=2))[0].params["text"]).group(1)
        await s.say(3, f"/start {code}")
        await buy_and_pay(s, 2, "pg-charge-2")
        await buy_and_pay(s, 3, "pg-charge-3")
        state = s.state()
        assert [e["released"] for e in state["entries"]] == ["20.00", "0.00"]
        assert state["pools"]["queue"] == "1000.00"
        assert "80.00 CNY" in await s.say(2, "/me")
        before = s.state()
        token = [c for c in s.api.calls_of("sendInvoice") if c.chat_id == 2][-1]
        await s.pay(2, token.params["payload"], 10000, "pg-charge-2")
        assert s.state() == before


# --------------------------------------------------------------------------- refusals


OPERATOR_ARGS = {  # plausible arguments, so each command would really act for an operator
    "product": "TEA 1.00 0.10 1 queue", "deposit": "queue 500.00", "approve": "1",
    "reject": "1", "offline": "tg:2 TEA 1", "refund": "O-1", "user": "tg:2",
    "broadcast": "hello everyone", "export": "orders",
}


async def test_non_operator_is_refused_every_operator_command(sqlite_url: str) -> None:
    # This test sends ~20 commands in a second from one user, past the per-user chat rate
    # limit (which has tests of its own): the limiter is off here.
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        await setup_shop(s)
        await s.say(5, "/start")
        refusal = i18n.t("en", "operator_only")
        names = [c.name for c in commands(operator=True)]
        assert {"product", "deposit", "release", "pool"} <= set(names)
        before = s.state()
        for name in names:
            calls = await s.send(5, f"/{name} {OPERATOR_ARGS.get(name, '')}".strip())
            assert calls[0].params.get("text") == refusal, (name, calls[0].params)
        await asyncio.sleep(0.2)  # nothing else (a progress edit, a photo) follows
        assert [c.method for c in s.api.calls if c.chat_id == 5 and c.method != "sendMessage"
                ] == []
        assert s.state() == before


MALFORMED_TEXT = [
    "/buy TEA -1", "/buy TEA 0", "/buy TEA 1.5", "/buy", "/buy NOPE", "/buy TEA 2 bananas",
    "/withdraw abc", "/withdraw 0.001", "/withdraw -5", "/withdraw 1e5",
    "/withdraw 99999999999999999999999", "/sellpoints 0.0000001", "/transfer tg:2 -1",
    "/transfer nobody 1", "/history x", "/lang klingon", "/nosuchcommand 1 2",
    "/start ../../etc/passwd", "hello shop", "１２３", "x" * 4096, "/me \u0000\u0007",
    "💸" * 50, "/buy TEA 99999999999",
]
MALFORMED_CALLBACKS = ["buy:v2:TEA:1", "garbage", "buy:v1:TEA:99999999", "buy:v1:../x:1",
                       "wd:v1:1:approve", "cmd:v1:nosuch", ":", "hist:v1:-1"]


async def test_malformed_inputs_get_polite_answers_and_change_nothing(sqlite_url: str) -> None:
    async with running_shop(sqlite_url, limiter=RateLimiter.disabled()) as s:
        await setup_shop(s)
        await s.say(6, "/start")
        unexpected = i18n.t("en", "error.unexpected", ref="").split("{")[0].strip()
        before = s.state()
        answers = []
        for text in MALFORMED_TEXT:
            answers.append((text[:20], await s.say(6, text)))
        for data in MALFORMED_CALLBACKS:
            answers.append((data, await s.press(6, data)))
        sticker = {"file_id": "st1", "file_unique_id": "u1", "width": 1, "height": 1,
                   "is_animated": False, "is_video": False, "type": "regular"}
        mark = len(s.api.calls)
        s.api.push_update({"message": make_message(6, from_user=make_user(6), sticker=sticker)})
        answers.append(("sticker", (await s.replies(6, mark, 1))[0].params["text"]))
        for what, answer in answers:
            assert answer.strip(), what
            assert unexpected not in answer and "Traceback" not in answer, (what, answer)
        assert len(s.api.calls_of("answerCallbackQuery")) == len(MALFORMED_CALLBACKS)
        assert s.state() == before
        assert s.app.db.read(lambda session: session.execute(select(Order.no)).first()) is None


# --------------------------------------------------------------------------- webhook


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # ends a hung run only
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


async def test_webhook_route_checks_the_secret_token(shop: Shop) -> None:
    s = shop
    route = telegram_webhook_route(s.application, "right-secret_1")
    web = Starlette(routes=[Route("/telegram", route, methods=["POST"])])
    update = make_text_update(7, "/me")
    with serving(web) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            header = "X-Telegram-Bot-Api-Secret-Token"
            wrong = await client.post("/telegram", json=update, headers={header: "wrong"})
            missing = await client.post("/telegram", json=update)
            garbage = await client.post("/telegram", content=b"{not json",
                                        headers={header: "right-secret_1"})
            not_update = await client.post("/telegram", json=[1, 2],
                                           headers={header: "right-secret_1"})
            assert (wrong.status_code, missing.status_code) == (403, 403)
            assert (garbage.status_code, not_update.status_code) == (400, 400)
            await asyncio.sleep(0.2)
            assert "tg:7" not in s.state()["users"]  # nothing was processed
            mark = len(s.api.calls)
            good = await client.post("/telegram", json=update,
                                     headers={header: "right-secret_1"})
            assert good.status_code == 200
            (reply,) = await s.replies(7, mark, 1)
            assert reply.ok and "0.00 CNY" in reply.params["text"]
            assert "tg:7" in s.state()["users"]
