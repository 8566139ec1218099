"""What a channel's own payment gateway (WeChat Pay, bot/wechatpay/gateway.py) asks of the
shop: the facts of a checkout for its pay page, recording a charge it reports, the refunds
to request and their outcomes, and flagging the operators. The gateway calls these (in a
thread: each blocks on the database) and never the engine itself; `handlers.shop.paid` is
the same recording for channels that pay inside the chat (Telegram).

Each raises `DatabaseUnavailable` when the database cannot answer: the gateway answers
WeChat Pay 503 and it retries.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from engine import checkout, pay_records
from engine.database import Database


def checkout_facts(db: Database, token: str) -> dict[str, Any] | None:
    """What the pay page of checkout `token` needs (None: no such checkout)."""
    return db.read(lambda s: pay_records.checkout_facts(s, token))


def record_payment(db: Database, *, order: str, charge_id: str, amount: int, currency: str,
                   buyer: str, operators: Iterable[str], at: datetime) -> dict[str, Any]:
    """Record a WeChat Pay charge of `order` exactly once (`checkout.record_payment`)."""
    return checkout.record_payment(db, channel="wechat", order=order, charge_id=charge_id,
                                   amount=amount, currency=currency, buyer=buyer,
                                   operators=operators, at=at)


def due_refunds(db: Database, now: datetime) -> list[tuple[str, int, str]]:
    """(order ref, fen, currency) of each refund to request now; each claimed for a minute."""
    return db.run(lambda s: pay_records.due_refunds(s, now))


def refund_requested(db: Database, ref: str, data: dict[str, Any], error: str | None,
                     now: datetime) -> bool:
    """Record WeChat Pay's answer to a refund request; True when we stop retrying."""
    return db.run(lambda s: pay_records.refund_requested(s, ref, data, error, now))


def refund_settled(db: Database, ref: str, status: str, refund_fen: object, refund_id: str,
                   now: datetime) -> str:
    """Record WeChat Pay's notice of how a refund ended; the outcome's name."""
    return db.run(lambda s: pay_records.refund_settled(s, ref, status, refund_fen, refund_id,
                                                       now))


def flag_operators(db: Database, operators: Iterable[str], *, key: str,
                   params: dict[str, Any]) -> int:
    """Tell every operator (once per `key`) about a charge or refund that went wrong."""
    return checkout.flag_operators(db, operators, key=key, params=params)
