"""The registry, text parsing, button data and the message catalogue."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest

import handlers
from engine.errors import CODES
from handlers import i18n, parsing, registry
from handlers.parsing import BadInput, parse_callback

ROOT = Path(__file__).resolve().parent.parent
CONSUMER = ("shop", "buy", "me", "queue", "points", "withdraw", "sellpoints", "transfer",
            "history", "orders", "invite", "lang", "help")
OPERATOR = ("admin", "product", "deposit", "pool", "release", "withdrawals", "approve",
            "reject", "offline", "refund", "user", "broadcast", "pause", "resume", "verify",
            "export")


def test_commands_lists_every_issue_command_with_both_languages():
    listed = {c.name: c for c in handlers.commands()}
    assert set(CONSUMER) | set(OPERATOR) <= set(listed)  # colleagues may add more
    for name in CONSUMER:
        assert not listed[name].operator
    for name in OPERATOR:
        assert listed[name].operator
    for c in listed.values():
        assert c.description["zh"] and c.description["en"]
        assert c.description["zh"] != c.description["en"]
        assert re.fullmatch(r"[a-z0-9_]{1,32}", c.name)  # Telegram's command rule
    assert [c.name for c in handlers.commands(operator=False)][:3] == ["shop", "buy", "me"]


@pytest.mark.parametrize("word,name", [
    ("帮助", "help"), ("商品", "shop"), ("购买", "buy"), ("我的", "me"), ("排队", "queue"),
    ("积分", "points"), ("提现", "withdraw"), ("卖出积分", "sellpoints"), ("转让", "transfer"),
    ("明细", "history"), ("邀请", "invite"),
])
def test_wechat_chinese_command_words_are_registered(word, name):
    assert handlers.parse_text(word) == (name, ())
    info = {c.name: c for c in handlers.commands()}[name]
    assert word in info.aliases


@pytest.mark.parametrize("text,expected", [
    ("/buy@shop_bot TEA 2", ("buy", ("TEA", "2"))),
    ("/BUY tea", ("buy", ("tea",))),
    ("/start abc_DEF-1", ("start", ("abc_DEF-1",))),
    ("购买 TEA 2", ("buy", ("TEA", "2"))),
    ("购买TEA", ("buy", ("TEA",))),
    ("提现100", ("withdraw", ("100",))),
    ("卖出积分 10.5", ("sellpoints", ("10.5",))),
    ("积分提现 1", ("sellpoints", ("1",))),
    ("我的订单", ("orders", ())),
    ("提现　１００", ("withdraw", ("100",))),  # full-width space and digits (Chinese IME)
    ("buy TEA 3", ("buy", ("TEA", "3"))),
    ("Help", ("help", ())),
    ("/nosuch x", ("nosuch", ("x",))),
    ("我的天", (None, ("我的天",))),  # a Chinese word that merely starts like a command
    ("hello there", (None, ("hello", "there"))),
    ("   ", (None, ())),
])
def test_parse_text_recognises_slash_commands_chinese_words_and_english_words(text, expected):
    assert handlers.parse_text(text) == expected


def test_callback_data_is_versioned_short_and_validated():
    assert parsing.callback("buy", "TEA", 2) == "buy:v1:TEA:2"
    assert parsing.callback("buy", "X" * 64, 1) is None  # beyond Telegram's 64 bytes
    assert parse_callback("buy:v1:TEA:2") == ("buy", ("TEA", "2"))
    for bad in ("buy:v0:TEA:2", "buy", "buy:v1:TE A:1", "buy:v1:TEA:2;drop", "x" * 65,
                "buy:v1::1", "b\x00uy:v1:T:1", "买:v1:T:1"):
        with pytest.raises(BadInput):
            parse_callback(bad)


def test_amount_parsing_follows_spec_section_2():
    assert parsing.money("100") == 10000
    assert parsing.money("0.01") == 1
    assert parsing.money("１００.５") == 10050
    assert parsing.points("21.5") == 21_500_000
    for bad in ("0", "-1", "1e3", "1.234", "abc", "", "1,000", "NaN", " ", "1.", ".5"):
        with pytest.raises(BadInput):
            parsing.money(bad)
    with pytest.raises(BadInput):
        parsing.points("1.0000001")
    for bad in ("0", "10001", "-1", "1.5", "²"):
        with pytest.raises(BadInput):
            parsing.qty(bad)


def _catalogue(lang: str) -> dict[str, str]:
    return json.loads((ROOT / "handlers" / "locales" / f"{lang}.json").read_text("utf-8"))


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def test_catalogues_have_the_same_keys_and_placeholders_in_zh_and_en():
    zh, en = _catalogue("zh"), _catalogue("en")
    assert set(zh) == set(en)
    for key in en:
        assert _fields(zh[key]) == _fields(en[key]), key
        assert zh[key].strip() and en[key].strip(), key


def test_every_refusal_code_has_a_polite_message_in_both_languages():
    for code in CODES:
        assert i18n.has(f"refusal.{code}"), code


def test_every_command_has_a_description_and_usage_keys_exist():
    for spec in registry._COMMANDS.values():
        assert i18n.has(f"cmd.{spec.name}"), spec.name
        if spec.usage_key:
            assert i18n.has(spec.usage_key), spec.usage_key


def test_every_message_id_used_in_the_code_is_in_the_catalogue():
    source = "\n".join(p.read_text("utf-8") for p in (ROOT / "handlers").glob("*.py"))
    used = set(re.findall(r"""(?:\bt|say|BadInput|i18n\.t\([^,()]+,)\(?\s*["']"""
                          r"""([a-z_]+(?:\.[a-z_]+)+|[a-z_]+)["']""", source))
    used |= set(re.findall(r'"((?:usage|bad|refusal|checkout|stmt|orders|note|receipt|'
                           r'release|refund|pool|poolname)\.[a-z_]+)"', source))
    missing = sorted(k for k in used if not i18n.has(k) and "." in k)
    assert not missing
    for family, members in {
        "checkout": ("unknown", "closed", "expired", "mismatch", "wrong_buyer", "error"),
        "stmt": ("purchase", "checkout", "release", "acceleration", "minted",
                 "withdraw_points", "forced_exit", "transfer_in", "transfer_out",
                 "withdrawal_request", "withdrawal_approved", "withdrawal_rejected", "refund",
                 "cancel", "other"),
        "orders": ("awaiting_payment", "cancelled", "refunded"),
        "poolname": ("queue", "points"),
    }.items():
        for m in members:
            assert i18n.has(f"{family}.{m}"), f"{family}.{m}"


def test_user_text_is_inserted_as_plain_text_never_as_a_template():
    assert i18n.t("en", "bad.user", value="{0.__class__}{ref}") == \
        "I don't know the user “{0.__class__}{ref}”."
    assert parsing.echo("a" * 100) == "a" * 47 + "…"
    assert parsing.echo("line\nbreak\tand  spaces") == "line break and spaces"
