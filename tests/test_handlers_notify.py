"""Outbox notifications rendered in the user's language, amounts by engine.money."""

from __future__ import annotations

import json

import pytest

from handlers import notify
from tests.handlers_kit import Chat

SAMPLES = {
    "order_settled": {"order": "N5", "entry": 3, "amount": 10000,
                      "matures_at": "2026-08-16T00:00:00+08:00", "minted": 21_000_000},
    "acceleration": {"amount": 2000, "buyer": "Bob", "order": "N6"},
    "release_paid": {"entry": 3, "amount": 8000, "total": 10000},
    "forced_exit": {"points": 2_000_000, "paid": 360, "fee": 40},
    "points_received": {"points": 1_500_000, "sender": "Ann"},
    "withdrawal_approved": {"withdrawal": 7, "amount": 5000},
    "withdrawal_rejected": {"withdrawal": 8, "amount": 5000},
    "order_refunded": {"order": "N9", "cash": 10000, "points_value": 714, "method": "wallet"},
    "broadcast": {"text": "Sale tomorrow <b>!</b>"},
    "payment_flag": {"code": "payment_mismatch", "order": "N1", "amount": 5000,
                     "currency": "CNY", "charge": "ch-1", "channel": "telegram",
                     "buyer": "tg:5", "identity": "tg:1"},
    "pool_warning": {"warning": "coverage_low", "balance": 5000, "liability": 20000,
                     "coverage_pct": 25, "threshold_pct": 50},
}
EXPECTED_EN = {
    "order_settled": "Order N5 settled: its rebates are granted.\nQueue entry #3 for 100.00 CNY: "
                     "released in queue order from 2026-08-16 00:00.\nGreen points received: "
                     "21.00.",
    "acceleration": "Bob bought through your invitation: 20.00 CNY paid to your waiting queue "
                    "entries (order N6).",
    "release_paid": "Queue entry #3 released: 80.00 CNY paid to your wallet (entry total "
                    "100.00 CNY).",
    "forced_exit": "Your points reached the exit multiple: 2.00 points were sold for you, "
                   "3.60 CNY paid to your wallet (fee 0.40 CNY).",
    "points_received": "You received 1.50 points from Ann.",
    "withdrawal_approved": "Withdrawal #7 of 50.00 CNY approved and paid out.",
    "withdrawal_rejected": "Withdrawal #8 of 50.00 CNY was not approved; the amount is back in "
                           "your wallet.",
    "order_refunded": "Order N9 was refunded.\n100.00 CNY is back in your wallet.\nThe value "
                      "of the points you used, 7.14 CNY, is back in your wallet.",
    "broadcast": "Sale tomorrow <b>!</b>",
    "payment_flag": "PAYMENT NEEDS ATTENTION: telegram charge ch-1 of 50.00 CNY by tg:5 for "
                    "order N1 was refused (payment_mismatch). Money moved outside the books: "
                    "check and settle it by hand.",
    "pool_warning": "Pool warning: the queue pool 50.00 CNY covers only 25% of the liability "
                    "200.00 CNY (threshold 50%).",
}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_outbox_kind_renders_exactly_in_english(kind):
    assert notify.render(kind, SAMPLES[kind], "en") == EXPECTED_EN[kind]


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_outbox_kind_renders_in_chinese_with_the_same_amounts(kind):
    zh = notify.render(kind, SAMPLES[kind], "zh")
    assert zh != EXPECTED_EN[kind] or kind == "broadcast"
    for amount in ("100.00 CNY", "20.00 CNY", "80.00 CNY", "21.00", "50.00 CNY", "7.14 CNY",
                   "25"):
        if amount in EXPECTED_EN[kind]:
            assert amount in zh, (kind, zh)


def test_currency_is_named_when_the_deliverer_knows_it():
    assert notify.render("release_paid", SAMPLES["release_paid"], "zh", currency="CNY") == \
        "排队 #3 已释放：80.00 CNY 已到您的钱包（该笔总额 100.00 CNY）。"


@pytest.mark.parametrize("kind,params", [
    ("no_such_kind", {"a": 1}), ("release_paid", {"entry": "x"}), ("forced_exit", None),
    ("order_settled", {"matures_at": "not a time", "entry": 1}), ("broadcast", {}),
    ("pool_warning", {"warning": "something_new"}),
])
def test_unknown_kinds_and_odd_params_render_a_generic_line_never_an_error(kind, params):
    line = notify.render(kind, params, "en")  # type: ignore[arg-type]
    assert line and "Traceback" not in line
    assert notify.render(kind, params, "fr")  # type: ignore[arg-type]


async def test_the_engines_own_rows_render_in_their_users_language(memdb):
    chat = Chat(memdb)
    await chat.setup_shop()
    await chat.send("tg:5", "/lang zh")
    await chat.pay("tg:5", await chat.send("tg:5", "/buy RICE"))
    (row,) = chat.outbox("order_settled")
    assert row.lang == "zh"
    line = notify.render(row.kind, json.loads(row.params), row.lang, currency="CNY")
    assert line == "订单 N1 已结算，返利已发放。\n获得绿色积分：10.50。"


AMOUNT_PLACEHOLDERS = {"amount", "paid", "fee", "total", "cash", "value", "balance",
                       "liability", "due", "pool"}


def test_every_notification_template_with_an_amount_names_its_currency():
    """Each `note.*` amount placeholder is filled with `engine.money` + the currency, with or
    without a currency from the caller (the deliverer adds the store's; else the default):
    no bare "60.00 paid"."""
    samples = {**SAMPLES, "pool_warning:matured": {
        "warning": "matured_waiting", "amount": 30000, "days": 1, "limit_days": 3,
        "entries": 2, "first_seq": 4}, "acceleration:capped": {
        "amount": 500, "buyer": "Bob", "order": "N6", "rate": "0.20", "cash": 10000,
        "due": 2000, "pool": 500}}
    for lang in ("en", "zh"):
        for name, params in samples.items():
            kind = name.split(":")[0]
            for given, cur in ((None, "CNY"), ("USD", "USD")):
                line = notify.render(kind, params, lang, currency=given)
                for key in AMOUNT_PLACEHOLDERS & set(params):
                    fen = params[key]
                    shown = f"{fen // 100}.{fen % 100:02d}"
                    want = params.get("currency") or cur
                    assert f"{shown} {want}" in line, (lang, name, given, line)


def test_the_deliverer_gives_rows_the_store_currency():
    params = {"entry": 3, "amount": 8000, "total": 10000, "currency": "EUR"}
    assert notify.render("release_paid", params, "en") == \
        "Queue entry #3 released: 80.00 EUR paid to your wallet (entry total 100.00 EUR)."


def test_waiting_days_are_plural_in_english_and_bare_in_chinese():
    p = {"warning": "matured_waiting", "amount": 30000, "days": 1, "limit_days": 3,
         "entries": 2, "first_seq": 4}
    en = notify.render("pool_warning", p, "en")
    assert "the oldest has waited 1 day (limit 3 days)" in en and "1 days" not in en
    assert "最久已等 1 天（上限 3 天）" in notify.render("pool_warning", p, "zh")
