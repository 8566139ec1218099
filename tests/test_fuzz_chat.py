"""Fuzzing the conversations (hypothesis): chat text, commands with hostile arguments, button
data, display names, invite payloads and languages through `handlers.dispatch`, and invoice
payloads through the payment confirmations (`handlers.shop.precheck` / `paid`).

Whatever arrives: no crash (no `error.unexpected` reply, nothing logged at ERROR), a reply
in words, and no money moved unless the request was exactly a valid one. `make test` runs a
small number of cases; nightly runs set STOREFRONT_FUZZ_EXAMPLES=10000."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from engine import checkout, service, users
from engine.state import snapshot
from handlers import dispatch, i18n, shop
from handlers.base import App, Reply, Request, Text
from handlers.registry import _BUTTONS, _WORDS
from storage.db import Database
from storage.models import Head, JournalTxn
from storage.ratelimit import RateLimiter
from tests.conftest import migrated
from tests.fault_driver import ACT

EXAMPLES = int(os.environ.get("STOREFRONT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 500,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

POOR, RICH, PAYER, OPERATOR = "tg:1001", "tg:1002", "tg:1003", "tg:900"

TRICKY = ["", " ", "0", "-1", "1e3", "NaN", "１００", "100.000", "0.001", "9" * 30, "all",
          "全部", "tea", "TEA", "ｔｅａ", "<b>x</b>", "<a href='x'>y</a>", "*bold*", "_i_",
          "[x](tg://user?id=1)", "`code`", "&amp;", "]]>", "\u202e", "\u200b", "💸",
          "tg:1002", "#1", "wx:oX", "points", "wallet", "积分", "钱包", "1", "2", "10001"]
words = st.one_of(st.sampled_from(TRICKY), st.text(max_size=24))
command_words = st.sampled_from(sorted(_WORDS))
texts = st.one_of(
    st.text(max_size=300),
    st.builds(lambda w, a: " ".join(["/" + w, *a]), command_words, st.lists(words, max_size=5)),
    st.builds(lambda w, a: " ".join([w, *a]), command_words, st.lists(words, max_size=4)),
    st.builds(lambda w, a: w + "".join(a), command_words, st.lists(words, max_size=2)),
    st.text(min_size=4000, max_size=5000),
    st.sampled_from(["/start", "/start " + "A" * 65, "/buy TEA 99999", "/buy TEA 2 points all",
                     "/transfer tg:1002 1", "/sellpoints all", "/withdraw all", "/history 0",
                     "/history 99999999999999", "/lang xx", "/link 000000"]))
fields = st.lists(st.one_of(st.sampled_from(["TEA", "1", "2", "a", "r", "w", "p", "pw", "y",
                                             "n", "zh", "en", "0", "999999"]),
                            st.text(max_size=12)), max_size=5)
callbacks = st.one_of(
    st.text(max_size=80),
    st.builds(lambda k, v, f: ":".join([k, v, *f]),
              st.sampled_from(sorted(_BUTTONS) + ["cmd", "nope"]),
              st.sampled_from(["v1", "v0", "v2", ""]), fields),
    st.builds(lambda w: f"cmd:v1:{w}", command_words))


def shop_state(db: Database) -> tuple[Any, ...]:
    """Money and the journal: what no refused or meaningless request may change."""
    def work(s: Any) -> tuple[Any, ...]:
        head = s.get(Head, 1)
        return snapshot(s), head.last_txn, head.last_hash

    return db.read(work)


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[App, Errors]]:
    with migrated("sqlite://") as db:
        at = ACT - timedelta(days=1)
        service.upsert_product(db, sku="TEA", price="100.00", margin="0.50", lock_days=15,
                               scheme="both", name="Oolong <b>tea</b>", at=at)
        for who in (POOR, RICH, PAYER):
            users.resolve(db, who, lang="en", at=at)
        service.buy(db, user=RICH, sku="TEA", qty=3, method="offline", at=at, order="R1")
        service.deposit(db, pool="queue", amount="1000.00", at=at)
        app = App(db=db, operators=frozenset({OPERATOR}), currency="CNY",
                  limiter=RateLimiter.disabled())
        errors = Errors()
        logging.getLogger().addHandler(errors)
        yield app, errors
        logging.getLogger().removeHandler(errors)


def texts_of(reply: Reply) -> str:
    return "\n".join(i.text for i in reply.items if isinstance(i, Text))


def answered(app: App, errors: Errors, request: Request) -> Reply:
    errors.records.clear()
    reply = asyncio.run(dispatch(app, request))
    assert isinstance(reply, Reply) and reply.items, request
    text = texts_of(reply)
    for lang in i18n.LANGS:
        assert i18n.t(lang, "error.unexpected", ref="").split("(")[0].split("（")[0] \
            not in text, (request, text)
    assert not errors.records, [r.getMessage() for r in errors.records]
    return reply


@FUZZ
@given(text=texts, lang=st.one_of(st.none(), st.sampled_from(["zh", "en", "zh-hant", ""]),
                                  st.text(max_size=8)), n=st.integers(0, 10**9))
def test_any_text_from_a_user_without_money_is_answered_and_moves_nothing(
        world: tuple[App, Errors], text: str, lang: str | None, n: int) -> None:
    app, errors = world
    before = shop_state(app.db)
    answered(app, errors, Request(channel="telegram", identity=POOR, request_id=f"f:{n}",
                                  text=text, lang=lang))
    assert shop_state(app.db) == before, text


@FUZZ
@given(command=command_words, args=st.lists(words, max_size=6), n=st.integers(0, 10**9),
       channel=st.sampled_from(["telegram", "wechat", "console"]))
def test_any_command_with_hostile_arguments_is_answered_and_moves_nothing(
        world: tuple[App, Errors], command: str, args: list[str], n: int, channel: str) -> None:
    app, errors = world
    before = shop_state(app.db)
    answered(app, errors, Request(channel=channel, identity=POOR,  # type: ignore[arg-type]
                                  request_id=f"c:{n}", command=command, args=tuple(args),
                                  text=" ".join(["/" + command, *args])))
    assert shop_state(app.db) == before, (command, args)


@FUZZ
@given(data=callbacks, who=st.sampled_from([POOR, RICH]), n=st.integers(0, 10**9))
def test_any_button_data_is_answered_and_never_trusted(
        world: tuple[App, Errors], data: str, who: str, n: int) -> None:
    """Buttons carry short versioned data; forged ones (other versions, other users'
    withdrawal ids, broadcasts) are refused. A rich user's forged `buy` may buy with the
    wallet, exactly as the real button would; nothing else moves money."""
    app, errors = world
    before = shop_state(app.db)
    answered(app, errors, Request(channel="telegram", identity=who, request_id=f"b:{n}",
                                  callback=data))
    if who == POOR or not data.startswith("buy:v1:"):
        assert shop_state(app.db) == before, data


@FUZZ
@given(name=st.one_of(st.text(max_size=200), st.sampled_from(TRICKY)),
       payload=st.one_of(st.none(), st.text(max_size=80), st.sampled_from(TRICKY)),
       n=st.integers(0, 10**12))
def test_newcomers_with_any_name_and_invite_payload_are_welcomed(
        world: tuple[App, Errors], name: str, payload: str | None, n: int) -> None:
    app, errors = world
    identity = f"tg:{5_000_000 + n}"
    reply = answered(app, errors, Request(channel="telegram", identity=identity,
                                          request_id=f"s:{n}", command="start",
                                          text="/start", display_name=name,
                                          start_payload=payload))
    assert texts_of(reply)


@pytest.fixture(scope="module")
def checkout_token(world: tuple[App, Errors]) -> dict[str, Any]:
    app, _ = world
    opened = checkout.open_checkout(app.db, user=PAYER, sku="TEA", channel="telegram",
                                    method="telegram", key="fuzz:checkout")
    return {"token": opened["token"], "cash": opened["cash"]}


amounts = st.one_of(st.integers(-10, 10**7), st.sampled_from([10000, 9999, 10001, 0]))
currencies = st.one_of(st.sampled_from(["CNY", "USD", "cny", "", "CNY "]), st.text(max_size=4))
identities = st.one_of(st.sampled_from([PAYER, POOR, RICH, OPERATOR, "tg:0"]),
                       st.text(max_size=20))


@FUZZ
@given(real=st.booleans(), forged=st.text(max_size=70), amount=amounts, currency=currencies,
       identity=identities, charge=st.text(min_size=1, max_size=300))
def test_invoice_payloads_are_paid_only_when_everything_matches(
        world: tuple[App, Errors], checkout_token: dict[str, Any], real: bool, forged: str,
        amount: int, currency: str, identity: str, charge: str) -> None:
    app, errors = world
    token = checkout_token["token"] if real else forged
    errors.records.clear()
    before = shop_state(app.db)
    ok, why = asyncio.run(shop.precheck(app, token, amount, currency, identity))
    exact = real and amount == checkout_token["cash"] and currency == "CNY" \
        and identity == PAYER
    paid_already = app.db.read(lambda s: s.execute(select(func.count()).where(
        JournalTxn.kind == "purchase", JournalTxn.body.like('%"payment"%'))).scalar_one())
    assert ok == (exact and not paid_already), (token, amount, currency, identity, why)
    assert ok or why, "a refusal says why"
    reply = asyncio.run(shop.paid(app, token, amount, currency, charge, "telegram", identity))
    assert isinstance(reply, Reply) and texts_of(reply)
    moved = shop_state(app.db) != before
    assert not moved or (exact and not paid_already), (token, amount, currency, identity)
    # A refused payment is flagged to the operators (as a message), never logged as a crash.
    assert not [r for r in errors.records if r.name.startswith("handlers")], \
        [r.getMessage() for r in errors.records]
