"""Outbox notifications as text: `render(kind, params, lang)` for the scheduler's deliverer.

The engine writes a row per movement (`Book.notify`) with the facts as JSON params; this turns
them into a message in the user's language. It never raises: a row with an unknown kind or
unexpected params still becomes a readable generic line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from fractions import Fraction
from typing import Any

from engine.config import DEFAULTS
from engine.orders import ORDER_REF

from . import i18n
from .parsing import callback, echo

log = logging.getLogger(__name__)

KINDS = ("order_settled", "acceleration", "release_paid", "forced_exit", "points_received",
         "withdrawal_approved", "withdrawal_rejected", "order_refunded", "broadcast",
         "payment_flag", "paused_payment", "pool_warning", "payment_waiting", "payment_late",
         "update_failed", "order_shipped", "order_received", "support_message",
         "support_answer", "support_closed", "digital_codes")


def _fen(value: Any, currency: str | None) -> str:
    """An amount with its currency, always: a bare "60.00 paid" says too little."""
    return i18n.money(int(value or 0), currency or DEFAULTS["store.currency"])


def _moment(value: Any) -> str:
    if not value:
        return "-"
    return i18n.when(datetime.fromisoformat(str(value)))


def _order_settled(p: dict[str, Any], lang: str, cur: str | None) -> str:
    lines = [i18n.t(lang, "note.order_settled", order=echo(p.get("order", "-"), 64))]
    if p.get("entry"):
        lines.append(i18n.t(lang, "receipt.entry", seq=int(p["entry"]),
                            amount=_fen(p.get("amount"), cur), matures=_moment(p.get("matures_at"))))
    if p.get("minted"):
        lines.append(i18n.t(lang, "receipt.minted", points=i18n.pts(int(p["minted"]))))
    return "\n".join(lines)


def _refunded(p: dict[str, Any], lang: str, cur: str | None) -> str:
    lines = [i18n.t(lang, "note.order_refunded", order=echo(p.get("order", "-"), 64))]
    if p.get("cash"):
        key = "note.refund_wallet" if p.get("method") == "wallet" else "note.refund_channel"
        lines.append(i18n.t(lang, key, cash=_fen(p["cash"], cur)))
    if p.get("points_value"):
        lines.append(i18n.t(lang, "note.refund_points", value=_fen(p["points_value"], cur)))
    return "\n".join(lines)


def _days(lang: str, value: Any) -> str:
    return i18n.days(lang, value) if isinstance(value, int) else "-"


def _pool_warning(p: dict[str, Any], lang: str, cur: str | None) -> str:
    warning = p.get("warning")
    if warning == "coverage_low":
        return i18n.t(lang, "note.coverage_low", balance=_fen(p.get("balance"), cur),
                      liability=_fen(p.get("liability"), cur),
                      coverage=p.get("coverage_pct", "-"), threshold=p.get("threshold_pct", "-"))
    if warning == "matured_waiting":
        return i18n.t(lang, "note.matured_waiting", days=_days(lang, p.get("days")),
                      limit=_days(lang, p.get("limit_days")), entries=p.get("entries", "-"),
                      amount=_fen(p.get("amount"), cur), seq=p.get("first_seq", "-"))
    return i18n.t(lang, "note.pool_warning", warning=echo(warning or "-", 40))


def _percent(rate: Any) -> str:
    """`"0.20"` → `"20"`, `"0.125"` → `"12.5"`: a rate as a percentage, exactly."""
    try:
        hundred = Fraction(str(rate)) * 100
    except (ValueError, ZeroDivisionError):
        return "-"
    if hundred.denominator == 1:
        return str(hundred.numerator)
    return f"{float(hundred):g}"  # display only: a rate has at most a few places


def _acceleration(p: dict[str, Any], lang: str, cur: str | None) -> str:
    text = i18n.t(lang, "note.acceleration", amount=_fen(p.get("amount"), cur),
                  buyer=echo(p.get("buyer") or "-", 40), order=echo(p.get("order", "-"), 64))
    if "due" in p and "pool" in p:
        # The pool held less than the acceleration was worth: say so, with the figures.
        text += "\n" + i18n.t(lang, "note.acceleration_capped", rate=_percent(p.get("rate")),
                               cash=_fen(p.get("cash"), cur), due=_fen(p["due"], cur),
                               pool=_fen(p["pool"], cur), amount=_fen(p.get("amount"), cur))
    return text


_SIMPLE: dict[str, Callable[[dict[str, Any], str | None], dict[str, Any]]] = {
    "release_paid": lambda p, c: {"entry": int(p.get("entry") or 0),
                                  "amount": _fen(p.get("amount"), c),
                                  "total": _fen(p.get("total"), c)},
    "forced_exit": lambda p, c: {"points": i18n.pts(int(p.get("points") or 0)),
                                 "paid": _fen(p.get("paid"), c), "fee": _fen(p.get("fee"), c)},
    "points_received": lambda p, c: {"points": i18n.pts(int(p.get("points") or 0)),
                                     "sender": echo(p.get("sender") or "-", 40)},
    "withdrawal_approved": lambda p, c: {"id": int(p.get("withdrawal") or 0),
                                         "amount": _fen(p.get("amount"), c)},
    "withdrawal_rejected": lambda p, c: {"id": int(p.get("withdrawal") or 0),
                                         "amount": _fen(p.get("amount"), c)},
    "payment_flag": lambda p, c: {"code": echo(p.get("code") or "-", 40),
                                  "order": echo(p.get("order") or "-", 64),
                                  "amount": _fen(p.get("amount"), p.get("currency") or c),
                                  "channel": echo(p.get("channel") or "-", 16),
                                  "charge": echo(p.get("charge") or "-", 64),
                                  "buyer": echo(p.get("buyer") or "-", 64)},
}
# Paid while sales were paused (engine/checkout.py): the same facts as a payment flag.
_SIMPLE["paused_payment"] = _SIMPLE["payment_flag"]
# A charge taken but not recorded yet, or recorded late from the charge spool (engine/inbox.py)
_SIMPLE["payment_waiting"] = _SIMPLE["payment_late"] = lambda p, c: {
    "order": echo(p.get("order") or "-", 64),
    "amount": _fen(p.get("amount"), p.get("currency") or c),
    "channel": echo(p.get("channel") or "-", 16), "charge": echo(p.get("charge") or "-", 64),
    "buyer": echo(p.get("buyer") or "-", 64)}
_SIMPLE["update_failed"] = lambda p, c: {"update": echo(str(p.get("update") or "-"), 24),
                                         "kind": echo(p.get("kind") or "-", 24),
                                         "buyer": echo(p.get("buyer") or "-", 64),
                                         "error": echo(p.get("error") or "-", 200)}
# Delivery (engine/delivery.py, docs/delivery.md)
_SIMPLE["order_shipped"] = lambda p, c: {"order": echo(p.get("order") or "-", 64),
                                         "carrier": echo(p.get("carrier") or "-", 40),
                                         "tracking": echo(p.get("tracking") or "-", 64)}


def _received(p: dict[str, Any], lang: str, cur: str | None) -> str:
    how = "note.received_auto" if p.get("by") == "auto" else "note.received_by_shop"
    text = i18n.t(lang, "note.order_received", order=echo(p.get("order") or "-", 64),
                  how=i18n.t(lang, how))
    if p.get("settles_at"):
        text += "\n" + i18n.t(lang, "note.received_settles", settles=_moment(p["settles_at"]))
    return text


# Support threads (engine/support.py): the words of the buyer or the operator, lines kept.
_SIMPLE["support_message"] = lambda p, c: {"thread": int(p.get("thread") or 0),
                                           "buyer": echo(p.get("buyer") or "-", 40),
                                           "text": str(p.get("text") or "")[:3000]}
_SIMPLE["support_answer"] = lambda p, c: {"thread": int(p.get("thread") or 0),
                                          "text": str(p.get("text") or "")[:3000]}
_SIMPLE["support_closed"] = lambda p, c: {"thread": int(p.get("thread") or 0)}


def _digital_codes(p: dict[str, Any], lang: str, cur: str | None) -> str:
    """The receipt of a digital order (engine/codes.py): every code on its own line, as
    given (a code is the buyer's to copy, never shortened)."""
    lines = [i18n.t(lang, "note.digital_codes", order=echo(p.get("order", "-"), 64))]
    for sku, code in p.get("codes") or []:
        lines.append(i18n.t(lang, "note.digital_code_line", sku=echo(sku, 64), code=str(code)))
    if p.get("owed"):
        lines.append(i18n.t(lang, "note.digital_owed", count=int(p["owed"])))
    lines.append(i18n.t(lang, "note.digital_keep"))
    return "\n".join(lines)


# Withdrawals paid by WeChat Pay merchant transfers (engine/transfers.py, issue 17).
_SIMPLE["transfer_started"] = _SIMPLE["transfer_paid"] = lambda p, c: {
    "id": int(p.get("withdrawal") or 0), "amount": _fen(p.get("amount"), c)}
_SIMPLE["transfer_failed"] = lambda p, c: {
    "id": int(p.get("withdrawal") or 0), "amount": _fen(p.get("amount"), c),
    "reason": echo(p.get("reason") or "-", 64)}
_SIMPLE["transfer_confirm"] = lambda p, c: {
    "id": int(p.get("withdrawal") or 0), "amount": _fen(p.get("amount"), c),
    "url": echo(p.get("url") or "-", 300)}
_SIMPLE["transfer_flag"] = lambda p, c: {
    "id": int(p.get("withdrawal") or 0), "amount": _fen(p.get("amount"), c),
    "code": echo(p.get("code") or "-", 40)}
_COMPOSED: dict[str, Callable[[dict[str, Any], str, str | None], str]] = {
    "order_settled": _order_settled, "order_refunded": _refunded, "pool_warning": _pool_warning,
    "acceleration": _acceleration, "order_received": _received,
    "digital_codes": _digital_codes,
}


def buttons(kind: str, params: Mapping[str, Any], lang: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The inline buttons under an outbox message, as rows of (label, callback data): an
    operator's reply and close buttons under a support message; the buyer's receipt button
    (`recv:v1:ORDER`) under a shipping notice; none for the rest. WeChat shows them as menu
    links; its template messages carry the text alone, which says what to type instead."""
    lang = lang if lang in i18n.LANGS else "en"
    if kind == "order_shipped":
        order = params.get("order")
        data = callback("recv", order) if isinstance(order, str) and ORDER_REF.match(order) \
            else None
        return (((i18n.t(lang, "receive.button", order=order), data),),) if data else ()
    if kind == "support_message":
        thread = params.get("thread")
        if isinstance(thread, int) and not isinstance(thread, bool) and thread > 0:
            return ((i18n.t(lang, "support.reply_button", thread=thread), f"sup:v1:reply:{thread}"),
                    (i18n.t(lang, "support.close_button", thread=thread), f"sup:v1:close:{thread}")),
    return ()


def render(kind: str, params: dict[str, Any], lang: str, *, currency: str | None = None) -> str:
    """The message for one outbox row, in `lang` (zh or en; anything else is English).
    Amounts are formatted by `engine.money`, each with its currency: `currency`, else the
    row's own `currency` param (the deliverer adds the store's), else the default store
    currency."""
    lang = lang if lang in i18n.LANGS else "en"
    p = params if isinstance(params, dict) else {}
    if currency is None and isinstance(p.get("currency"), str):
        currency = echo(p["currency"], 8)
    try:
        if kind == "broadcast":
            # the operator's own words, as they wrote them (plain text, never markup)
            return str(p.get("text") or "")[:4000] or i18n.t(lang, "note.generic", kind=kind)
        if kind in _COMPOSED:
            return _COMPOSED[kind](p, lang, currency)
        if kind in _SIMPLE:
            return i18n.t(lang, f"note.{kind}", **_SIMPLE[kind](p, currency))
    except (TypeError, ValueError, KeyError, ZeroDivisionError):
        log.warning("outbox %s row with unexpected params; rendered generically", kind)
    return i18n.t(lang, "note.generic", kind=echo(kind, 32))
