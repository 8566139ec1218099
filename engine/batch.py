"""Group commit: purchases from many concurrent callers, several to one durable commit.

A chat storefront takes purchases from many buyers at once, and every writer takes the
journal head lock, so purchases run one at a time whatever the number of callers
(docs/engine.md). `GroupCommit.buy` keeps each caller's promise — it returns only once the
purchase is on disk — but one thread records every purchase queued meanwhile, in arrival
order, in **one** transaction: exactly as if they were made one after the other (each sees
the ones before it; the hash chain runs through them in that order), with one commit, one
head lock, one read of the settings and pools, and each table written in one statement.

Issue 19 (docs/perf.md): every purchase's first reads (buyer, referrer, key, due orders,
waiting entries, and the smallest stored exit keys its forced-exit seeks ask for) go in one
round trip for the whole batch (`_read_ahead`); nothing is written until the batch's end —
the seeks are answered from the keys read ahead (`storage.queries.ExitsAhead`), not by
writing the batch so far and asking the index — and then its new rows in one INSERT a table
and, on PostgreSQL, the COMMIT in the same round trip (storage/batch_rows.py `WideCommit`,
sent once `Database.run` commits, after its `commit.before` fault point; a write or the
COMMIT failing there rolls the whole batch back before anyone is answered — then each is
retried alone, below); and a batch waits a moment for the callers the last commit answered
(`_expect`), so 8 busy callers share one commit instead of two halves taking turns. A lone
caller never waits.

- A refused purchase is refused alone: the engine checks a purchase completely before it
  changes anything (SPEC §7), so the others in its batch are recorded as if it never came.
- If the batch's transaction fails for any other reason, each of its purchases is retried in
  a transaction of its own, so one bad request never costs the others theirs.
- A crash before the commit loses the whole batch — and none of its callers had been
  answered, so each retries with its idempotency key and is recorded once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from storage.batch_rows import commit_session_wide, purchase_reads_many
from storage.db import Database
from storage.rows import HeadRow

from . import service
from .book import Book
from .errors import Refusal
from .times import parse_at

log = logging.getLogger(__name__)

# The longest a batch waits for the callers of the last one to come back: a quarter of the
# time the last batch took to record, and never more than this.
FILL_WAIT = 0.02


@dataclass
class _Job:
    kwargs: dict[str, Any]
    done: Future[dict[str, Any]] = field(default_factory=Future)


class GroupCommit:
    """Purchases for `db` from any number of threads; at most `most` per transaction."""

    def __init__(self, db: Database, *, most: int = 64) -> None:
        self.db = db
        self.most = most
        self.batches = 0  # transactions committed (a figure for benchmarks and tests)
        self.purchases = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # How many callers the next batch should hold: the last batch's purchases and those
        # queued behind it when it committed. Its callers, answered, usually buy again at
        # once (a busy shop's handler threads); without waiting for them the batches split
        # in two halves taking turns, each paying the per-commit work. One caller alone
        # makes it 1, so a lone purchase never waits.
        self._expect = 1
        self._took = 0.0  # seconds the last batch took to record
        self._worker = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._worker.start()

    def buy(self, **kwargs: Any) -> dict[str, Any]:
        """`engine.service.buy`'s arguments and answer; returns once the purchase is durable
        (or raises its `Refusal`, or the error that kept it from being recorded)."""
        if not self._worker.is_alive():
            raise RuntimeError("group commit is closed")
        job = _Job(kwargs)
        self._jobs.put(job)
        return job.done.result()

    def close(self) -> None:
        """Finish what is queued, then stop."""
        self._jobs.put(None)
        self._worker.join()

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            stop = self._take(batch, None)
            if not stop and len(batch) < self._expect:
                # The callers the last commit answered are likely coming back: give them a
                # moment to join this batch rather than the next (see `_expect`).
                stop = self._take(batch, time.monotonic() + min(self._took / 4, FILL_WAIT))
            began = time.monotonic()
            self._record(batch)
            self._took = time.monotonic() - began
            if stop:
                return

    def _take(self, batch: list[_Job], until: float | None) -> bool:
        """Add queued purchases to `batch` (up to `most`): those queued now, or with `until`
        those queued by then, stopping early once `_expect` are in. True on `close`."""
        while len(batch) < self.most:
            try:
                if until is None:
                    job = self._jobs.get_nowait()
                else:
                    if len(batch) >= self._expect:
                        return False
                    left = until - time.monotonic()
                    if left <= 0:
                        return False
                    job = self._jobs.get(timeout=left)
            except queue.Empty:
                return False
            if job is None:
                return True
            batch.append(job)
        return False

    def _record(self, batch: list[_Job]) -> None:
        asks = _asks([job.kwargs for job in batch])

        def work(session: Session) -> list[dict[str, Any] | Refusal]:
            book = Book(session, ahead=lambda b: _read_ahead(b, asks))
            outcomes: list[dict[str, Any] | Refusal] = []
            for job in batch:
                try:
                    outcomes.append(service.place(book, **job.kwargs))
                except Refusal as refusal:
                    outcomes.append(refusal)
            # The batch's rows, a statement a table, and the COMMIT in one round trip once
            # `Database.run` commits (storage/batch_rows.py `WideCommit`).
            commit_session_wide(session)
            return outcomes

        try:
            outcomes = self.db.run(work, label="buy")
        except Exception as exc:  # noqa: BLE001 - handed to the callers, never swallowed
            if len(batch) > 1:
                log.warning("a batch of %d purchases failed (%s); recording each alone",
                            len(batch), type(exc).__name__)
                for job in batch:
                    self._record([job])
                return
            batch[0].done.set_exception(exc)
            return
        self.batches += 1
        self.purchases += len(batch)
        self._expect = min(self.most, len(batch) + self._jobs.qsize())
        for job, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Refusal):
                job.done.set_exception(outcome)
            else:
                job.done.set_result(outcome)


def _asks(asked: list[dict[str, Any]]) -> list[tuple[str, str | None, datetime | None]]:
    """(buyer's handle, idempotency key, due-by time) of each purchase whose reads can be
    made ahead: anything not read ahead (an unknown buyer, a time that does not parse) is
    read as it would be alone."""
    asks: list[tuple[str, str | None, datetime | None]] = []
    for kwargs in asked:
        handle, key, at = kwargs.get("user"), kwargs.get("key"), kwargs.get("at")
        if not isinstance(handle, str) or not handle:
            continue
        try:
            due_by = None if at is None else parse_at(at)
        except Refusal:
            due_by = None
        asks.append((handle, key if isinstance(key, str) else None, due_by))
    return asks


def _read_ahead(book: Book, asks: list[tuple[str, str | None, datetime | None]]
                ) -> HeadRow | None:
    """What every purchase of the batch (`_asks`) will read first (`Book.prefetch_purchase`:
    its buyer and their referrer, its idempotency key, the pools, the orders due by its time,
    the referrer's waiting entries), in one round trip for the whole batch instead of one
    each, with the smallest stored exit keys that answer every forced-exit seek of the batch
    (`storage.queries.ExitsAhead`). The head row is the first statement of that round trip,
    so its lock is still taken before anything else is read; it is returned for `Book`.
    A purchase whose buyer and key are read here skips its own read."""
    if not asks:
        return None
    got = purchase_reads_many(book.rows, asks, with_pools=not book._pools, with_head=True)
    for (handle, key, _at), found in zip(asks, got, strict=True):
        if found["buyer"]:
            book._by_handle.setdefault(handle, found["buyer"][0])
        if "pools" in found and not book._pools:
            book._pools = {p.name: p for p in found["pools"]}
        if key is not None and key not in book._stored:
            stored = found["key"]
            book._stored[key] = (stored[0][0], stored[0][1]) if stored else None
    head = got[0]["head"]
    return head[0] if head else None
