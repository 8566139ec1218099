"""WeChat Pay merchant transfers paying withdrawals: the database side (issue 17).

A transfer is born when an operator approves a withdrawal to a WeChat balance (`start`, in
the approval's transaction): state `NEW`, `out_bill_no` = `WD` + the withdrawal id — WeChat
Pay's idempotency key, so however often it is asked, one withdrawal is one transfer. The
hold (`user:<id>:held`) stays until the transfer ends:

- `SUCCESS`: held → `world:payouts` (journal key `transfer:<no>:SUCCESS`), withdrawal `paid`;
- `FAIL` / `CANCELLED` (WeChat said no, the user did not confirm in time and we cancelled,
  or WeChat refused the request outright): held → the wallet (`transfer:<no>:<state>`),
  withdrawal `failed`, and the user is told why.

The follower (scheduler/transfers.py) claims due transfers (`claim_due`), asks WeChat Pay
(create, or query first whenever an earlier attempt may have reached it; cancel when the
user left it unconfirmed too long) and records the answer (`record_answer`); WeChat's
notifications record theirs the same way. Every step is its own transaction, so a crash
between any two leaves a row that the next claim looks up by its key: never paid twice,
never a hold lost.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Transfer, Withdrawal

from . import journal, ledger, outbox, payouts
from .book import Book
from .errors import Refusal

FINAL = ("SUCCESS", "FAIL", "CANCELLED")
OPEN = ("NEW", "ACCEPTED", "PROCESSING", "WAIT_USER_CONFIRM", "TRANSFERING", "CANCELING")
CLAIM_BATCH = 20
POLL = timedelta(minutes=10)  # how soon a transfer in flight is queried again
RETRY_CAP = timedelta(hours=1)


def out_bill_no(withdrawal_id: int) -> str:
    """WeChat Pay's key for the transfer paying this withdrawal (digits and letters only)."""
    return f"WD{withdrawal_id:010d}"


def start(book: Book, w: Withdrawal, owner: Any, at: datetime) -> dict[str, Any]:
    """Inside the approval: a `NEW` transfer for withdrawal `w` (method `wechat`), due now.
    The withdrawal becomes `transfer`; no money moves yet (the hold stays)."""
    payee = payouts.payee_of(book.s, owner.id)
    if payee is None:
        raise Refusal("no_payout_method")
    openid, real_name = payee
    if w.amount >= payouts.REAL_NAME_FROM and not real_name:
        raise Refusal("real_name_required")
    payouts.check_shop_total(book, w.amount, at)
    no = out_bill_no(w.id)
    book.s.add(Transfer(out_bill_no=no, withdrawal_id=w.id, user_id=owner.id,
                        amount=w.amount, openid=openid, user_name=real_name,
                        state="NEW", confirm_token=secrets.token_hex(16),
                        attempts=0, next_at=at, created_at=at, updated_at=at))
    w.status = "transfer"
    return {"out_bill_no": no}


def _backoff(attempts: int) -> timedelta:
    return min(RETRY_CAP, timedelta(seconds=30 * 2 ** min(attempts, 12)))


def _view(t: Transfer) -> dict[str, Any]:
    return {"out_bill_no": t.out_bill_no, "withdrawal": t.withdrawal_id, "amount": t.amount,
            "openid": t.openid, "user_name": t.user_name,
            "state": t.state, "attempts": t.attempts, "created_at": t.created_at,
            "transfer_bill_no": t.transfer_bill_no}


def claim_due(db: Database, now: datetime, *, limit: int = CLAIM_BATCH) -> list[dict[str, Any]]:
    """The open transfers due by `now`, each claimed: its attempt counted and its next time
    pushed back (another follower skips it meanwhile; a crash retries it then)."""
    def claim(s: Session) -> list[dict[str, Any]]:
        rows = s.execute(select(Transfer).where(Transfer.state.in_(OPEN),
                                                Transfer.next_at <= now)
                         .order_by(Transfer.next_at).limit(limit).with_for_update()).scalars()
        out = []
        for t in rows:
            t.attempts += 1
            t.next_at = now + _backoff(t.attempts)
            t.updated_at = now
            out.append(_view(t))
        return out

    return db.run(claim, label="claim_transfers")


def _locked(book: Book, no: str) -> Transfer:
    t = book.s.execute(select(Transfer).where(Transfer.out_bill_no == no)
                       .with_for_update()).scalar_one_or_none()
    if t is None:
        raise Refusal("unknown_withdrawal", no)
    return t


def _finish(book: Book, t: Transfer, state: str, reason: str | None, at: datetime) -> None:
    """The hold leaves: paid out on SUCCESS, back to the wallet otherwise; one journal
    transaction keyed by the transfer and its final state, the user told in the same one."""
    w = book.s.get(Withdrawal, t.withdrawal_id)
    assert w is not None
    owner = book.user_by_id(t.user_id)
    paid = state == "SUCCESS"
    p = journal.Postings()
    p.fen(ledger.held(owner), journal.PAYOUTS_OUT if paid else ledger.wallet(owner), t.amount,
          f"withdrawal:{w.id}")
    t.state, t.fail_reason, t.updated_at = state, (reason or None) and reason[:64], at
    w.status = "paid" if paid else "failed"
    key = f"transfer:{t.out_bill_no}:{state}"
    result = {"withdrawal": w.id, "user": owner.handle, "amount": t.amount, "status": w.status,
              "state": state}
    book.record(key=key, kind="transfer_paid" if paid else "transfer_failed", at=at,
                postings=p, body={"withdrawal": w.id, "amount": t.amount,
                                  "out_bill_no": t.out_bill_no, "state": state,
                                  "reason": t.fail_reason}, result=result)
    book.notify(owner, "transfer_paid" if paid else "transfer_failed", key, at,
                withdrawal=w.id, amount=t.amount, reason=t.fail_reason or state)


def _apply(book: Book, no: str, answer: dict[str, Any], at: datetime,
           confirm_url: Callable[[str], str] | None) -> dict[str, Any]:
    t = _locked(book, no)
    state = answer.get("state")
    if t.state in FINAL:  # ended already; a different ending is reported, never applied
        return {"out_bill_no": no, "state": t.state, "changed": False,
                "conflict": state in FINAL and state != t.state}
    amount = answer.get("transfer_amount")
    if amount is not None and amount != t.amount:
        raise Refusal("payment_mismatch", f"{no}: {amount} != {t.amount}")
    if state in FINAL:
        _finish(book, t, str(state), answer.get("fail_reason"), at)
        return {"out_bill_no": no, "state": state, "changed": True}
    if state not in OPEN or state == "NEW":
        raise Refusal("invalid_event", f"transfer state {state!r}")
    changed = state != t.state
    t.state, t.updated_at = str(state), at
    t.transfer_bill_no = str(answer.get("transfer_bill_no") or t.transfer_bill_no or "")[:64] \
        or None
    if answer.get("package_info"):
        t.package_info = str(answer["package_info"])
    t.next_at = at + POLL  # followed by queries until it ends (or a notification ends it)
    t.last_error = None
    if changed and state == "WAIT_USER_CONFIRM" and t.package_info:
        owner = book.user_by_id(t.user_id)
        # once per transfer (the outbox key is the transfer's): when WeChat Pay first waits
        book.notify(owner, "transfer_confirm", f"transfer:{no}:confirm", at,
                    withdrawal=t.withdrawal_id, amount=t.amount,
                    url=confirm_url(t.confirm_token) if confirm_url else "")
    return {"out_bill_no": no, "state": state, "changed": changed}


def record_answer(db: Database, no: str, answer: dict[str, Any], at: datetime, *,
                  confirm_url: Callable[[str], str] | None = None) -> dict[str, Any]:
    """What WeChat Pay said about transfer `no` (a create, query or cancel answer, or a
    verified notification's resource): its state recorded; a final state ends it
    (`_finish`). A repeated final answer changes nothing. An amount that is not ours is
    `payment_mismatch` and changes nothing. `confirm_url(token)`: the page where the user
    confirms receipt, sent to them once when WeChat Pay waits for it."""
    return db.run(lambda s: _apply(Book(s), no, answer, at, confirm_url),
                  label="record_transfer")


def refused(db: Database, no: str, code: str, at: datetime) -> dict[str, Any]:
    """WeChat Pay refused to create the transfer for good (a parameter or permission
    error): it never existed there, so it ends `FAIL` and the hold goes back."""
    return record_answer(db, no, {"state": "FAIL", "fail_reason": code}, at)


def failed_attempt(db: Database, no: str, error: str, at: datetime, *,
                   operators: frozenset[str] = frozenset(), flag: str | None = None) -> None:
    """A try that got no answer (a timeout, a 5xx, no funds): noted; the claim already set
    when to try again. With `flag`, the operators are told (once per transfer and code)."""
    def work(s: Session) -> None:
        t = s.get(Transfer, no)
        if t is None or t.state in FINAL:
            return
        t.last_error, t.updated_at = error[:255], at
        if flag and operators:
            outbox.to_operators(s, operators, kind="transfer_flag",
                                params={"code": flag, "withdrawal": t.withdrawal_id,
                                        "amount": t.amount, "out_bill_no": no}, at=at,
                                row_key=lambda ident: f"flag:transfer:{no}:{flag}:{ident}")

    db.run(work, label="transfer_attempt")


def confirm_facts(db: Database, token: str) -> dict[str, Any] | None:
    """What the confirm-receipt page needs for one transfer (by its unguessable token)."""
    if not 0 < len(token) <= 64:
        return None

    def read(s: Session) -> dict[str, Any] | None:
        t = s.execute(select(Transfer).where(Transfer.confirm_token == token)).scalar_one_or_none()
        if t is None:
            return None
        return {"out_bill_no": t.out_bill_no, "state": t.state, "amount": t.amount,
                "package_info": t.package_info, "openid": t.openid}

    return db.read(read)


__all__ = ["FINAL", "OPEN", "claim_due", "confirm_facts", "failed_attempt", "out_bill_no",
           "record_answer", "refused", "start"]
