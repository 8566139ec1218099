"""Every update is durable before Telegram is told it arrived (docs/telegram.md, "The inbox").

Telegram sends an update until it is acknowledged, and never again after: by `getUpdates`
with a higher offset (polling), or by a 200 (webhook). python-telegram-bot's own updater moves
the offset on before its handlers have run, so a crash then lost paid orders. Here:

* polling (`poll`): fetch a batch, store it in the inbox in one commit, and only then ask for
  the next batch with `offset = last + 1`, which is what confirms the batch to Telegram;
* webhook (bot/telegram/webhook.py): store the update, then answer 200 (503 if it cannot be
  stored: Telegram sends it again);
* `InboxProcessor` reads pending rows in `update_id` order and runs each through the PTB
  Application's handlers: one user's (or chat's) updates in order, different users at once.
  A successful payment's row is marked done by the engine in the payment's own transaction;
  other rows are marked done after their handler ran, those finished together in one commit
  (while one batch commits the next gathers); a row's user waits for its mark before its
  next row, and a row is not read again as pending while its mark is under way. Pending
  rows are resumed on start.
  A payment the engine did not record is spooled and its row `spooled`, and a row that keeps
  failing `failed`: each in the same transaction as an outbox message to every operator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from telegram import Bot, Update
from telegram.error import TelegramError
from telegram.ext import Application

from handlers.base import Database
from handlers.stores import inbox

from .claims import Key, UserClaims
from .request import UpdatesRequest

log = logging.getLogger(__name__)

BATCH = 100  # Telegram's own most per getUpdates
IDLE = 1.0  # seconds between looks at the inbox when nobody wakes the processor
MAX_ATTEMPTS = 5  # a non-payment update that keeps failing is set aside as `failed`
PRECHECK_STALE = timedelta(seconds=10)  # Telegram no longer takes an answer after this
PRUNE_EVERY = 6 * 3600.0
PARSED = 20 * BATCH  # updates kept parsed, as polled, for the rows that hold them


def kind_of(update: Update) -> str:
    message = update.message
    if message is not None and message.successful_payment is not None:
        return "payment"
    if update.pre_checkout_query is not None:
        return "pre_checkout"
    if update.callback_query is not None:
        return "callback"
    if message is not None:
        return "message"
    return "other"


def item_of(update: Update, raw: dict[str, Any] | None = None) -> inbox.Item:
    """The inbox row of an update: its raw JSON (as received, or PTB's own rendering)."""
    body = raw if raw is not None else update.to_dict()
    chat, user = update.effective_chat, update.effective_user
    return inbox.Item(update_id=update.update_id, kind=kind_of(update),
                      body=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                      chat_id=chat.id if chat is not None else None,
                      user_id=user.id if user is not None else None)


def charge_of(update: Update) -> dict[str, Any]:
    """A successful payment as the charge spool holds it (bot/charge_spool.py)."""
    message, user = update.effective_message, update.effective_user
    assert message is not None and message.successful_payment is not None
    sp = message.successful_payment
    return {"channel": "telegram", "token": sp.invoice_payload, "amount": sp.total_amount,
            "currency": sp.currency, "charge_id": sp.telegram_payment_charge_id,
            "identity": f"tg:{user.id}" if user is not None else None,
            "update_id": update.update_id}


def spool_notices(db: Database, operators: Iterable[str]
                  ) -> Callable[[dict[str, Any], bool], Awaitable[object]]:
    """The charge spool's `told`: each operator is owed a message once a spooled charge is
    recorded late, or while it still waits (engine/inbox.py; keyed by the charge)."""
    targets = frozenset(operators)

    async def told(charge: dict[str, Any], recorded: bool) -> object:
        tell = inbox.tell_recorded_late if recorded else inbox.tell_waiting
        return await asyncio.to_thread(tell, db, targets, charge)

    return told


def _key(row: inbox.Row) -> Key:
    """Whose rows run in order: the user's, else the chat's, else the row alone."""
    return (("u", row.user_id) if row.user_id is not None else
            ("c", row.chat_id) if row.chat_id is not None else ("n", row.update_id))


def _backoff(failures: int) -> float:
    return float(min(0.2 * 2 ** min(failures, 8), 30.0))


class InboxProcessor:
    """Runs pending inbox rows through the Application's handlers (see the module doc)."""

    def __init__(self, application: Application, db: Database, *, concurrency: int = 16,
                 on_unrecorded: Callable[[Update], None] | None = None,
                 operators: Iterable[str] = (), claims: UserClaims | None = None) -> None:
        self.application = application
        self.db = db
        self.on_unrecorded = on_unrecorded
        self.operators = frozenset(operators)  # told about spooled and failed rows
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: set[int] = set()
        # a user (or chat) whose row failed: none of its rows is taken before this time, so
        # its later updates never overtake the failed one
        self._held: dict[tuple[str, int], float] = {}
        self._queues: dict[tuple[str, int], deque[inbox.Row]] = {}
        self._workers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        # the last look left pending rows unread because 10 × BATCH rows were in hand
        self._full = False
        # finished rows waiting for their `done` mark, and the task committing them
        self._marks: list[tuple[int, asyncio.Future[None]]] = []
        self._marker: asyncio.Task[None] | None = None
        # the Updates `poll` parsed and stored, by update id: a row taken in this process is
        # handled as that object instead of its stored JSON parsed again (the same content:
        # the row's body is that object's `to_dict`); the oldest are forgotten past PARSED
        self._parsed: dict[int, Update] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failures = 0
        self._stopping = False
        self.processed = 0
        # several processes on one database: a user's rows only while we hold its claim
        self.claims = claims
        self._claimed: set[Key] = set()
        self._renewed = 0.0
        self._claims_down = False

    def stored(self, updates: Iterable[Update]) -> None:
        """`updates` are in the inbox now (as their `to_dict`): keep them parsed for their
        rows, and look at the inbox."""
        parsed = self._parsed
        for u in updates:
            parsed[u.update_id] = u
        while len(parsed) > PARSED:
            del parsed[next(iter(parsed))]
        self.wake()

    def wake(self) -> None:
        """Look at the inbox now; callable from any thread (an HTTP server may run the
        webhook in a loop of its own)."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            self._wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def prune(self) -> int:
        """Finished rows past their retention deleted (`engine.inbox.prune`): a scheduler
        chore every `PRUNE_EVERY` seconds (bot/telegram/lifecycle.py `chores`)."""
        pruned = await asyncio.to_thread(inbox.prune, self.db)
        if pruned:
            log.info("pruned %d finished inbox rows", pruned)
        return pruned

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name="telegram-inbox")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking rows; let those being handled finish (within `grace`)."""
        if self._task is not None:
            # the flag as well as the cancel: on Python 3.11 a cancel that lands as the loop's
            # wait is woken can be lost, and the loop would go on (and `stop` wait) for ever
            self._stopping = True
            self._wake.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for queue in self._queues.values():  # rows not started stay pending for next time
            while len(queue) > 1:
                self._in_flight.discard(queue.pop().update_id)
        workers = list(self._workers.values())
        if workers:
            _done, left = await asyncio.wait(workers, timeout=grace)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        if self._marker is not None:  # marks under way are committed (or fail) first
            await asyncio.gather(self._marker, return_exceptions=True)
        if self.claims is not None and self._claimed:  # (else they expire on their own)
            try:
                await asyncio.to_thread(self.claims.give_back, self._claimed)
                self._claimed.clear()
            except Exception:  # noqa: BLE001
                log.warning("inbox claims not given back: they expire on their own")

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = time.monotonic()
            more = False
            try:
                for key, until in list(self._held.items()):
                    if until <= now:
                        del self._held[key]
                rows = await asyncio.to_thread(inbox.pending, self.db, limit=BATCH,
                                               skip=self._in_flight)
                if self.claims is not None:
                    rows = await self._ours(rows)
                taken = sum(self._queue(row) for row in rows)
                more = len(rows) == BATCH and taken > 0
                self._failures = 0
            except Exception:  # noqa: BLE001 - the database is down: try again later
                self._failures += 1
                log.exception("reading the inbox failed")
                await asyncio.sleep(_backoff(self._failures))
                continue
            self._full = more and len(self._in_flight) >= 10 * BATCH
            if more and not self._full:
                await asyncio.sleep(0)
                continue
            timeout = IDLE
            if self._held:
                timeout = max(0.01, min(timeout, min(self._held.values()) - now))
            try:
                async with asyncio.timeout(timeout):  # unlike wait_for, never loses a cancel
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _ours(self, rows: list[inbox.Row]) -> list[inbox.Row]:
        """Of `rows`, those of users whose claim we hold (bot/telegram/claims.py): claims of
        users with no worker here given back, live ones renewed, new ones taken — and the
        rows of a newly taken user read again, in case their last holder just finished
        them. Redis unreachable: every row, as a lone process."""
        assert self.claims is not None
        claims = self.claims
        idle = {k for k in self._claimed if k not in self._workers}
        now = time.monotonic()
        renew = bool(self._claimed - idle) and now - self._renewed > claims.lease_ms / 3000
        new = {_key(r) for r in rows} - set(self._workers)
        try:
            if idle:
                await asyncio.to_thread(claims.give_back, idle)
                self._claimed -= idle
            if renew:
                lost = await asyncio.to_thread(claims.renew, self._claimed)
                self._renewed = now
                if lost:
                    log.warning("inbox claims lost while handling: %s", sorted(lost))
            got = await asyncio.to_thread(claims.take, new) if new else set()
        except Exception as exc:  # noqa: BLE001 - Redis down: one process's behaviour
            if not self._claims_down:  # once an outage, not once a look at the inbox
                log.warning("inbox claims unavailable (%s): handling rows unclaimed",
                            type(exc).__name__)
            self._claims_down = True
            return rows
        if self._claims_down:
            log.warning("inbox claims available again")
            self._claims_down = False
        self._claimed |= got
        if got:
            again = await asyncio.to_thread(inbox.pending, self.db, limit=BATCH,
                                            skip=self._in_flight)
            still = {r.update_id for r in again}
            rows = [r for r in rows if _key(r) not in got or r.update_id in still]
        return [r for r in rows if _key(r) in self._workers or _key(r) in got]

    def _queue(self, row: inbox.Row) -> bool:
        """Hand a row to its user's worker; False if it is in hand already or held."""
        key = _key(row)
        if row.update_id in self._in_flight or key in self._held:
            return False
        self._in_flight.add(row.update_id)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(row)
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._worker(key, queue))
        return True

    async def _worker(self, key: tuple[str, int], queue: deque[inbox.Row]) -> None:
        """One user's rows, one after the other."""
        try:
            while queue:
                row = queue[0]
                ok = await self._handle(row)
                queue.popleft()
                self._in_flight.discard(row.update_id)
                if not ok:  # keep this user's order: the rest waits for the failed row
                    self._held[key] = time.monotonic() + _backoff(
                        self._failures + row.attempts + 1)
                    while queue:
                        self._in_flight.discard(queue.popleft().update_id)
        finally:
            del self._queues[key], self._workers[key]
            # A finished user makes rows takeable only when the last look left rows unread
            # (too many in hand), when this user is now held (the look sets its time-out),
            # or when claims are in play (its claim goes back, other users' may come): then
            # look now. Otherwise the rows not in hand are new ones, which `stored` (or the
            # webhook) announces, or another process's, found within IDLE. (Looking after
            # every row was one read of the inbox per ten `/me` answered, docs/perf.md.)
            if self._full or key in self._held or self.claims is not None:
                self.wake()

    async def _handle(self, row: inbox.Row) -> bool:
        uid = row.update_id
        parsed = self._parsed.pop(uid, None)
        try:
            if row.kind == "pre_checkout" and datetime.now(UTC) - row.received_at \
                    > PRECHECK_STALE:
                # Telegram has already given up on the answer (and charged nobody)
                await asyncio.to_thread(inbox.finish, self.db, uid, inbox.EXPIRED)
                return True
            async with self._slots:
                update = parsed or Update.de_json(json.loads(row.body), self.application.bot)
                await self.application.process_update(update)
                if row.kind == "payment":
                    await self._settle_payment(uid, update)
            if row.kind != "payment":
                await self._mark_done(uid)  # outside the slot: others go on meanwhile
            self.processed += 1
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the row stays pending and is tried again
            log.exception("inbox update %s failed", uid)
            try:
                attempts = await asyncio.to_thread(inbox.failed_attempt, self.db, uid,
                                                   f"{type(exc).__name__}: {exc}")
                if attempts >= MAX_ATTEMPTS and row.kind != "payment":
                    await asyncio.to_thread(inbox.set_aside, self.db, uid, inbox.FAILED,
                                            error=f"{type(exc).__name__}: {exc}",
                                            operators=self.operators)
                    return True
            except Exception:  # noqa: BLE001 - the database is down: later
                pass
            return False

    async def _mark_done(self, uid: int) -> None:
        """Mark the row done, with the other rows finished meanwhile, in one commit; returns
        once it is durable (raises as the commit did if it failed)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marks.append((uid, done))
        if self._marker is None or self._marker.done():
            self._marker = asyncio.create_task(self._commit_marks(), name="telegram-inbox-done")
        await done  # (cancelled with its worker: the batch is committed all the same)

    async def _commit_marks(self) -> None:
        while self._marks:
            batch, self._marks = self._marks, []
            try:
                await asyncio.to_thread(inbox.finish_many, self.db, [u for u, _ in batch])
            except Exception as exc:  # noqa: BLE001 - each row's worker handles it
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _settle_payment(self, uid: int, update: Update) -> None:
        """The engine marks a recorded (or flagged) payment's row done in its own
        transaction. A row still pending here was not recorded: the charge goes to the
        durable spool (replayed until recorded) and the row becomes `spooled`, in the same
        transaction as a `payment_waiting` message to every operator (`storefront inbox`
        and /pool show it too). Raises while the database is down: the row then stays
        pending and is tried again."""
        status = await asyncio.to_thread(inbox.status_of, self.db, uid)
        if status != inbox.PENDING:
            return
        if self.on_unrecorded is not None:
            self.on_unrecorded(update)  # durable before the row says so
        await asyncio.to_thread(inbox.set_aside, self.db, uid, inbox.SPOOLED,
                                error="payment not recorded: in the charge spool",
                                operators=self.operators, charge=charge_of(update))


async def store(db: Database, updates: Sequence[tuple[Update, dict[str, Any] | None]]) -> int:
    """Store updates in the inbox in one commit (raises if the database cannot)."""
    return await asyncio.to_thread(inbox.receive, db, [item_of(u, raw) for u, raw in updates])


async def poll(bot: Bot, db: Database, processor: InboxProcessor, *, timeout: float,
               allowed_updates: Sequence[str], raw: UpdatesRequest | None = None) -> None:
    """The polling loop: a batch is in the inbox before the next getUpdates confirms it.
    With `raw` (the bot's getUpdates request) each update is stored as received, else as
    PTB's `to_dict` of it."""
    await bot.delete_webhook()
    offset: int | None = None
    failures = 0
    while True:
        try:
            updates = await bot.get_updates(offset=offset, timeout=timedelta(seconds=timeout),
                                            limit=BATCH, allowed_updates=list(allowed_updates))
        except asyncio.CancelledError:
            raise
        except TelegramError as exc:
            failures += 1
            log.warning("getUpdates failed: %s", exc)
            await asyncio.sleep(_backoff(failures))
            continue
        received = raw.take() if raw is not None else {}
        if updates:
            try:
                await store(db, [(u, received.get(u.update_id)) for u in updates])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - not confirmed: Telegram keeps them for us
                failures += 1
                log.exception("storing %d updates failed; they stay unconfirmed", len(updates))
                await asyncio.sleep(_backoff(failures))
                continue
            offset = max(u.update_id for u in updates) + 1
            processor.stored(updates)
        failures = 0
