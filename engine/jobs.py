"""Jobs run by the scheduler, the CLI (`storefront release`) and the chat `/release`.

`run_release` is the one way a release runs outside replay: it takes the cross-process lock
(storage/locks.py), settles what is due and pays matured entries page by page
(`service.release`, SPEC §3, §7, §8), then records that it ran so a scheduler that starts
after a missed slot knows to catch up. A process that finds the lock held skips and says who
holds it. A crash at any moment loses nothing: each page is its own transaction and each
payment is keyed by its entry, so running it again finishes the work exactly once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import faults
from storage.db import Database
from storage.locks import job_lock, make_holder
from storage.models import JobRun

from . import service
from .book import Book
from .config import stored
from .queue import RELEASE_PAGE
from .times import parse_at
from .users import IDENTITY

log = logging.getLogger(__name__)

RELEASE = "release"


class LockLost(RuntimeError):
    """The run's lock could not be renewed; it stopped between pages (nothing half-done)."""


def run_release(db: Database, *, at: object = None,
                progress: Callable[[int, int], None] | None = None,
                redis_url: str | None = None, holder: str | None = None,
                actor: str | None = None, batch: int = RELEASE_PAGE) -> dict[str, Any]:
    """Settle what is due at `at` (default now), then pay matured entries, under the lock.

    Returns `{"skipped": True, "holder": <who holds it>}` when another run holds the lock,
    else `{"skipped": False, "holder", "at", "settled", "paid", "amount", "blocked"}` (amount
    in fen). `progress(paid, amount)` is called after every committed page. `actor` (who
    asked: `cli`, `scheduler`, `tg:42`) is appended to the holder, so whoever finds the lock
    held is told who holds it. Raises `Refusal` (`invalid_time`) for a bad `at`, before
    taking any lock."""
    when = parse_at(service.now() if at is None else at)
    me = holder or (make_holder() + (f"/{actor[:40]}" if actor else ""))
    locks = job_lock(db, RELEASE, redis_url=redis_url)
    if not locks.acquire(me):
        log.info("release as of %s skipped: %s holds the lock", when.isoformat(),
                 locks.blocked_by)
        return {"skipped": True, "holder": locks.blocked_by, "at": when.isoformat()}
    try:
        faults.point("release.locked")
        settled = service.settle(db, at=when)
        faults.point("release.after_settle")

        def step(paid: int, amount: int) -> None:
            faults.point("release.after_page")
            if locks.lost.is_set():
                raise LockLost("release lock lost; stopped after a committed page")
            if progress is not None:
                progress(paid, amount)

        result = service.release(db, at=when, batch=batch, progress=step)
        result["settled"] += len(settled)
        faults.point("release.before_record")
        record_run(db, RELEASE, when, me, result, actor=actor)
    finally:
        locks.release()
    log.info("release as of %s: settled %d orders, paid %d entries (%d fen)%s",
             when.isoformat(), result["settled"], result["paid"], result["amount"],
             ", stopped at an entry the pool cannot pay" if result["blocked"] else "")
    return {"skipped": False, "holder": me, "at": when.isoformat(), "locks": locks.kinds,
            **result}


def record_run(db: Database, name: str, at: datetime, holder: str,
               result: dict[str, Any], *, actor: str | None = None) -> None:
    """Remember that job `name` completed as of `at` (never moving the mark backwards).

    A run an operator started from a chat (`actor` is a chat identity, `tg:42`) is also
    journaled with who started it, in the same transaction: every operator action is in
    the journal (docs/reliability.md). The payments themselves are the rules at work."""
    finished = service.now()

    def work(session: Session) -> None:
        if actor is not None and IDENTITY.match(actor):
            book = Book(session)
            book.record(key=f"{name}_run:{book.head.last_txn + 1}", kind=f"{name}_run",
                        at=at, actor=actor, body={k: result.get(k) for k in (
                            "settled", "paid", "amount", "blocked")})
        row = session.get(JobRun, name, with_for_update=True)
        body = json.dumps(result, sort_keys=True, default=str)
        if row is None:
            session.add(JobRun(name=name, last_at=at, finished_at=finished, holder=holder,
                               result=body))
        else:
            row.last_at = max(row.last_at, at)
            row.finished_at, row.holder, row.result = finished, holder, body

    db.run(work)


def last_run(db: Database, name: str = RELEASE) -> datetime | None:
    """The `at` of the latest completed run of `name`, or None if it never ran."""
    return db.read(lambda s: s.execute(select(JobRun.last_at).where(JobRun.name == name))
                   .scalar_one_or_none())


def store_timezone(db: Database) -> ZoneInfo:
    """`store.timezone` (SPEC §3): the scheduler's release times are store-local."""
    return db.read(stored).timezone
