"""The database work of a channel's payment gateway (WeChat Pay, bot/wechatpay/gateway.py):
what a checkout asks the channel for, and the `channel_refunds` rows.

Each function is a pure function of its session, because `Database.run` may call it again
when a transaction is retried.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from storage.models import ChannelRefund, Checkout, Identity, Order, OrderLine

from .users import store_config

REFUND_BATCH = 20
REFUND_MAX_ATTEMPTS = 12  # then the refund is `abnormal` and the operators are told


def checkout_facts(s: Session, token: str) -> dict[str, Any] | None:
    if not 0 < len(token) <= 64:
        return None
    row = s.get(Checkout, token)
    if row is None:
        return None
    order = s.execute(select(Order).where(Order.ref == row.order_ref)).scalar_one()
    openid = s.execute(select(Identity.identity).where(
        Identity.user_id == order.user_id, Identity.identity.like("wx:%"))
        .order_by(Identity.identity).limit(1)).scalar_one_or_none()
    lines = s.execute(select(func.count()).select_from(OrderLine).where(
        OrderLine.order_no == order.no)).scalar_one()
    return {"order": order.ref, "amount": order.cash, "currency": order.currency,
            "sku": order.sku, "qty": order.qty, "lines": max(lines, 1),
            "status": row.status, "channel": row.channel,
            "order_status": order.status, "expires_at": row.expires_at,
            "openid": openid[3:] if openid else None, "paused": store_config(s).paused}


def due_refunds(s: Session, now: datetime) -> list[tuple[str, int, str]]:
    new = s.execute(select(Order.ref, Order.cash, Order.currency).where(
        Order.status == "refunded", Order.method == "wechat", Order.cash > 0,
        Order.payment_ref.is_not(None),
        ~exists().where(ChannelRefund.order_ref == Order.ref)).limit(REFUND_BATCH)).all()
    for ref, cash, currency in new:
        s.add(ChannelRefund(order_ref=ref, channel="wechat", amount=cash, currency=currency,
                            status="requested", attempts=0, next_at=now, created_at=now,
                            updated_at=now))
    s.flush()
    rows = s.execute(select(ChannelRefund).where(
        ChannelRefund.status.in_(("requested", "failed")), ChannelRefund.next_at <= now)
        .order_by(ChannelRefund.next_at).limit(REFUND_BATCH).with_for_update()).scalars().all()
    for row in rows:
        # Claimed: another sweeper skips it for a minute; the request itself is idempotent.
        row.next_at = now + timedelta(minutes=1)
    return [(r.order_ref, r.amount, r.currency) for r in rows]


def refund_requested(s: Session, ref: str, data: dict[str, Any], error: str | None,
                      now: datetime) -> bool:
    """Record WeChat Pay's answer to a refund request; True when we stop retrying."""
    row = s.get(ChannelRefund, ref)
    if row is None or row.status not in ("requested", "failed"):
        return False
    row.attempts += 1
    row.updated_at = now
    if error is None:
        row.status = "success" if data.get("status") == "SUCCESS" else "processing"
        row.refund_id = str(data.get("refund_id") or "")[:64] or None
        row.last_error = None
        return False
    row.last_error = error[:255]
    if row.attempts >= REFUND_MAX_ATTEMPTS:
        row.status = "abnormal"
        return True
    row.status = "failed"
    row.next_at = now + timedelta(seconds=min(3600, 30 * 2 ** row.attempts))
    return False


def refund_settled(s: Session, ref: str, status: str, refund_fen: object, refund_id: str,
                    now: datetime) -> str:
    row = s.execute(select(ChannelRefund).where(ChannelRefund.order_ref == ref)
                    .with_for_update()).scalar_one_or_none()
    if row is None:
        return "unknown"
    if refund_fen != row.amount:
        return "mismatch"
    final = status.lower()
    if row.status == final:
        return "same"
    row.status, row.updated_at = final, now
    row.refund_id = refund_id[:64] or row.refund_id
    return "changed"
