"""Following WeChat Pay merchant transfers to the end (issue 17; engine/transfers.py).

Every `TRANSFER_INTERVAL` seconds the follower claims the transfers that are due and, for
each, in a worker thread:

1. `NEW` (approved, WeChat Pay has not answered yet): when an earlier attempt may have
   reached WeChat Pay (`attempts > 1`) it first **queries by `out_bill_no`**; only when
   WeChat Pay does not know the bill does it create it. A create that WeChat Pay calls a
   duplicate is answered by a query too. So a crash before the call, after it or before its
   answer was recorded never pays twice: the key is looked up on the next run.
2. In flight (`ACCEPTED`, `PROCESSING`, `WAIT_USER_CONFIRM`, …): a query, in case the
   notification is late or lost; a transfer left unconfirmed by the user longer than
   `confirm_hours` is cancelled (the hold goes back once WeChat Pay says `CANCELLED`).
3. The answer is recorded (`transfers.record_answer`): a final state moves the hold.

A timeout or a 5xx leaves the transfer as it was, to be tried again later (the claim pushed
its next time back); insufficient merchant funds also tell the operators; an outright
refusal of the request (bad parameters, no permission) ends the transfer `FAIL`.

The scheduler is given the API (`TransferAPI`, bot/wechatpay/transfers.py implements it over
wechatpayv3); it imports neither `bot` nor `handlers`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from engine import transfers
from engine.errors import Refusal
from storage import faults
from storage.db import Database

log = logging.getLogger(__name__)

TRANSFER_INTERVAL = 60.0
CONFIRM_HOURS = 24


class TransferUnavailable(Exception):
    """No answer to rely on (a timeout, a 5xx, an unverifiable response): try again later.
    `code` is WeChat Pay's error code when it gave one (`NOT_ENOUGH`: merchant funds)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class TransferRefused(Exception):
    """WeChat Pay refused the request for good (4xx): `code` says why."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


class DuplicateBill(Exception):
    """WeChat Pay already has a bill with this `out_bill_no`."""


class TransferAPI(Protocol):
    """WeChat Pay's transfer calls (synchronous; run in worker threads). Each returns WeChat
    Pay's bill (`out_bill_no`, `transfer_bill_no`, `state`, `package_info`, …) or raises one
    of the errors above; `query` returns None when WeChat Pay has no such bill."""

    def create(self, *, out_bill_no: str, openid: str, amount: int,
               user_name: str | None) -> dict[str, Any]: ...

    def query(self, out_bill_no: str) -> dict[str, Any] | None: ...

    def cancel(self, out_bill_no: str) -> dict[str, Any]: ...


def step(db: Database, api: TransferAPI, t: dict[str, Any], now: datetime, *,
         confirm_hours: float = CONFIRM_HOURS,
         operators: frozenset[str] = frozenset()) -> str:
    """One claimed transfer, one step nearer its end; returns what happened."""
    no = t["out_bill_no"]
    try:
        faults.point("transfer.before_call")
        answer = _ask(api, t, now, confirm_hours)
        faults.point("transfer.after_call")  # WeChat Pay acted; nothing recorded yet
        if answer is None:
            return "unchanged"
        result = transfers.record_answer(db, no, answer, now,
                                         confirm_url=getattr(api, "confirm_url", None))
        if result.get("conflict"):
            log.error("transfer %s ended %s here but WeChat Pay says %s: check it by hand",
                      no, result["state"], answer.get("state"))
        return str(result["state"]).lower()
    except TransferRefused as refused:
        if t["state"] != "NEW":
            log.error("transfer %s: WeChat Pay refused a follow-up: %s", no, refused)
            transfers.failed_attempt(db, no, str(refused), now)
            return "error"
        log.error("transfer %s refused by WeChat Pay: %s", no, refused)
        transfers.refused(db, no, refused.code, now)
        return "refused"
    except TransferUnavailable as exc:
        log.warning("transfer %s: no answer (%s); retried later", no, exc)
        flag = "insufficient_funds" if exc.code == "NOT_ENOUGH" else None
        transfers.failed_attempt(db, no, str(exc), now, operators=operators, flag=flag)
        return "retry"
    except Refusal as refusal:  # an answer that is not ours (another amount, a bad state)
        log.error("transfer %s: answer not recorded: %s", no, refusal)
        transfers.failed_attempt(db, no, str(refusal), now, operators=operators,
                                 flag=refusal.code)
        return "error"


def _ask(api: TransferAPI, t: dict[str, Any], now: datetime,
         confirm_hours: float) -> dict[str, Any] | None:
    no = t["out_bill_no"]
    if t["state"] == "NEW":
        # an earlier attempt may have reached WeChat Pay: look the key up before creating
        found = api.query(no) if t["attempts"] > 1 else None
        if found is not None:
            return found
        try:
            return api.create(out_bill_no=no, openid=t["openid"], amount=t["amount"],
                              user_name=t["user_name"])
        except DuplicateBill:
            return api.query(no)
    if t["state"] == "WAIT_USER_CONFIRM" and \
            now - t["created_at"] >= timedelta(hours=confirm_hours):
        try:
            api.cancel(no)
        except TransferRefused as refused:
            # the bill ended meanwhile, or an earlier try that died before recording the
            # answer cancelled it already: the query below says where it stands
            log.warning("transfer %s: cancel refused (%s); querying", no, refused)
        faults.point("transfer.after_cancel")  # WeChat Pay cancelled; nothing recorded yet
        return api.query(no)  # CANCELLED (or CANCELING, followed up later)
    return api.query(no)


async def follow(db: Database, api: TransferAPI, *, clock: Callable[[], datetime],
                 confirm_hours: float = CONFIRM_HOURS,
                 operators: frozenset[str] = frozenset()) -> Counter[str]:
    """Claim the due transfers and take each one step (in worker threads)."""
    now = clock()
    due = await asyncio.to_thread(transfers.claim_due, db, now)
    faults.point("transfer.claimed")
    done: Counter[str] = Counter()
    for t in due:
        done[await asyncio.to_thread(step, db, api, t, now, confirm_hours=confirm_hours,
                                     operators=operators)] += 1
    return done


async def run_follow(db: Database, api: TransferAPI, clock: Callable[[], datetime],
                     confirm_hours: float, operators: frozenset[str]) -> None:
    """The scheduler's job: `follow`, a failure logged (the next run tries again)."""
    try:
        done = await follow(db, api, clock=clock, confirm_hours=confirm_hours,
                            operators=operators)
    except Exception:  # noqa: BLE001 - a background job must not die
        log.exception("transfer follow-up failed")
        return
    if done:
        log.info("transfers: %s", dict(done))


__all__ = ["CONFIRM_HOURS", "TRANSFER_INTERVAL", "DuplicateBill", "TransferAPI",
           "TransferRefused", "TransferUnavailable", "follow", "run_follow", "step"]
