"""Fuzzing the engine's own inputs (hypothesis): replay lines and the parsers of amounts,
rates and times.

A replay line, however hostile (not JSON, JSON of the wrong shape, wrong types, huge or
Unicode-tricky values, times at the ends of the calendar), never raises: it is applied or
refused with a code, and a refused line changes nothing (state and journal head).

`make test` runs a small number of cases; a nightly run sets STOREFRONT_FUZZ_EXAMPLES=10000
(docs/reliability.md)."""

from __future__ import annotations

import json
import os
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.errors import CODES, Refusal
from engine.money import AmountError, format_fen, format_micro, parse_fen, parse_micro, parse_rate
from engine.replay import Replayer
from engine.state import snapshot
from engine.times import parse_at
from handlers import parsing
from storage.db import Database
from storage.models import Head
from tests.conftest import migrated

EXAMPLES = int(os.environ.get("STOREFRONT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 500,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# -- values an attacker (or a careless scenario writer) could put anywhere -----------------
TRICKY_TEXT = ["", " ", "0", "-1", "1e3", "NaN", "Infinity", "１００.００", "100.000", "0.001",
               "9" * 40, "100.00\n", "\u202e00.001", "A\u0000B", "<b>x</b>", "*x*", "`x`",
               "💸", "ｔｅａ", "tea", "TEA", "A", "B", "ZZ", "queue", "points",
               "2026-08-01T10:00:00+08:00", "0001-01-01T00:00:00+14:00",
               "9999-12-31T23:59:59-14:00", "2026-02-30T00:00:00+08:00",
               "2026-08-01T10:00:00", "2026-08-01"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                    st.sampled_from(TRICKY_TEXT))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=8)
OPS = ["config", "product", "join", "deposit", "buy", "release", "settle", "refund",
       "withdraw_points", "transfer_points", "withdraw_cash"]
FIELDS = ["user", "referrer", "sku", "price", "margin", "lock_days", "scheme", "pool",
          "amount", "qty", "at", "pay_points", "order", "points", "from", "to", "store",
          "queue", "points", "name"]
events = st.builds(
    lambda op, fields: {"op": op, **fields},
    st.one_of(st.sampled_from(OPS), json_values),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=7))
lines = st.one_of(
    events.map(lambda e: json.dumps(e, ensure_ascii=False)),
    events.map(lambda e: json.dumps(e)[: max(1, len(json.dumps(e)) // 2)]),  # cut short
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),  # deep nesting
    st.sampled_from(["#comment", "   ", "\ufeff{}", '{"op": "buy"}', "null", "{}"]))

BASE = [
    {"op": "product", "sku": "tea", "price": "100.00", "margin": "0.50", "lock_days": 15,
     "scheme": "both"},
    {"op": "join", "user": "A"}, {"op": "join", "user": "B", "referrer": "A"},
    {"op": "deposit", "pool": "queue", "amount": "500.00"},
    {"op": "buy", "user": "A", "sku": "tea", "at": "2026-08-01T10:00:00+08:00"},
    {"op": "buy", "user": "B", "sku": "tea", "at": "2026-08-02T10:00:00+08:00"},
]


@pytest.fixture(scope="module")
def replayer() -> Any:
    with migrated("sqlite://") as db:
        rp = Replayer(db)
        for n, ev in enumerate(BASE, start=1):
            rp.line(n, json.dumps(ev))
        assert rp.errors == []
        yield rp


def look(db: Database) -> tuple[Any, ...]:
    def work(s: Any) -> tuple[Any, ...]:
        head = s.get(Head, 1)
        return snapshot(s), head.last_txn, head.last_hash

    return db.read(work)


EDGES = ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-14:00",
         "9999-12-31T23:59:59-14:00", "9999-12-20T00:00:00+08:00"]


def _edge_lines() -> list[str]:
    """Found by this fuzzer: times at the calendar's ends overflowed instead of refusing."""
    out = []
    for at in EDGES:
        out.append(json.dumps({"op": "buy", "user": "A", "sku": "tea", "at": at}))
        out.append(json.dumps({"op": "release", "at": at}))
        out.append(json.dumps({"op": "settle", "at": at}))
    return out + ['{"op": []}', '{"op": {"a": 1}}']  # an unhashable op crashed the replay


def _with_examples(test: Any) -> Any:
    for text in _edge_lines():
        test = example(text=text)(test)
    return test


@FUZZ
@_with_examples
@given(text=lines)
def test_a_replay_line_never_raises_and_a_refused_one_changes_nothing(
        replayer: Replayer, text: str) -> None:
    before = look(replayer.db)
    errors = len(replayer.errors)
    replayer.line(999, text)  # must not raise, whatever the line
    if len(replayer.errors) > errors:
        assert replayer.errors[-1]["code"] in CODES
        assert look(replayer.db) == before, text


# -- the parsers ---------------------------------------------------------------------------

def _exact(text: str, places: int) -> int | None:
    """What a plain decimal string means in units of 10^-places, by Decimal arithmetic."""
    if not text.isascii() or not text.replace(".", "", 1).isdigit() or text.startswith("."):
        return None
    try:
        value = Decimal(text) * 10**places
    except InvalidOperation:
        return None
    return int(value) if value == value.to_integral_value() else None


@FUZZ
@given(value=st.one_of(json_values, st.from_regex(r"\A[0-9]{0,14}(\.[0-9]{0,8})?\Z")))
def test_amount_parsers_return_exact_positive_units_or_refuse(value: Any) -> None:
    for parse, fmt, places in ((parse_fen, format_fen, 2), (parse_micro, format_micro, 6)):
        try:
            units = parse(value)
        except AmountError:
            continue
        assert isinstance(value, str) and isinstance(units, int) and units > 0
        assert _exact(value, places) == units  # exactly what the decimal says, never a float
        assert parse(fmt(units)) == units  # and printing it reads back the same


@FUZZ
@given(value=st.one_of(json_values, st.from_regex(r"\A[0-9]{0,3}(\.[0-9]{0,50})?\Z")))
def test_rate_and_time_parsers_refuse_with_their_own_error_only(value: Any) -> None:
    try:
        rate = parse_rate(value)
        assert rate >= 0 and isinstance(value, str)
    except AmountError:
        pass
    try:
        at = parse_at(value)
        assert at.tzinfo is not None
    except Refusal as refusal:
        assert refusal.code == "invalid_time"


@FUZZ
@given(text=st.one_of(st.text(max_size=60), st.sampled_from(TRICKY_TEXT)))
def test_chat_argument_parsers_refuse_with_a_polite_message_only(text: str) -> None:
    for parse in (parsing.money, parsing.points, parsing.qty, parsing.whole, parsing.sku):
        try:
            parse(text)
        except parsing.BadInput as bad:
            assert bad.key.startswith("bad.")
    try:
        kind, fields = parsing.parse_callback(text)
        assert all(parsing.FIELD.match(f) for f in (kind, *fields))
    except parsing.BadInput as bad:
        assert bad.key == "bad.button"
