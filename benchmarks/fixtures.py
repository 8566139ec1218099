"""Large fixtures, prepared fast: a shop's whole history written with bulk inserts.

A million queue entries or a million journal transactions would take an hour through the
engine (one durable commit each). Instead `build_history` plays the same rules in memory —
SPEC §3 queue contribution, entries and acceleration, §4 minting at the price before the
contribution, paying with points, selling points with the fee, forced exit cheapest first
after every event, the daily static release, cash withdrawals — and streams the rows into a
SQLite file with `executemany` inside one transaction. The journal is hash-chained with the
engine's own `engine.journal.txn_hash`, the state tables are the sums of the postings, and the
shop's catalogue and seed deposit are made through the real engine first, so
`storefront verify` passes on the result and the engine carries on from it as from any shop.

With `Plan(split_settle=True)` an order is two journal transactions, `purchase` then
`settle`, exactly as the engine writes them (the verify row uses that). Without it — the shop
with a million entries, where only the tables' sizes matter — an order is one `purchase`
transaction holding both sets of postings, which halves the preparation; docs/perf.md says
so. Everything else has the engine's keys, kinds and shapes.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import queue
import random
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine import journal, service
from engine.journal import FEN, MICRO
from engine.points import exit_key
from storage.db import Database
from storage.migrate import migrate

from .workload import PRODUCTS, T0, setup_catalogue

# The engine's defaults (engine/config.py), as integers: every rate below is exact.
MIN_ORDER = 10_000  # queue.min_order 100.00
INITIAL_PRICE = (100, 1_000_000)  # points.initial_price 1.00 in fen per micro-point
SHANGHAI = timedelta(hours=8)  # Asia/Shanghai has had no DST since 1991
CHUNK = 20_000


def sql_time(at: datetime) -> str:
    """A UTC instant as SQLAlchemy stores DATETIME on SQLite (storage.models.UTCDateTime)."""
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


# `engine.journal.canonical` is `json.dumps` with these options; one encoder made once gives
# the same text without building an encoder per call. `_History` checks the first hash it
# makes against `engine.journal.txn_hash` itself.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


class Moment:
    """One instant in the three spellings the rows need."""

    __slots__ = ("at", "iso", "sql")

    def __init__(self, at: datetime) -> None:
        self.at = at
        naive = at.astimezone(UTC).replace(tzinfo=None)
        self.iso = naive.isoformat(timespec="microseconds")  # as engine.journal.iso
        self.sql = naive.isoformat(" ", "microseconds")


def local_midnight_after(at: datetime, days: int) -> datetime:
    day = (at + SHANGHAI).date() + timedelta(days=days)
    return datetime(day.year, day.month, day.day, tzinfo=UTC) - SHANGHAI


@dataclass
class Plan:
    """What to build. `entries` stops the history once that many queue entries exist;
    `orders` stops it after that many orders (whichever is given; both: the first reached).
    `round_robin` makes every user buy in turn (so every user ends up holding points)."""

    users: int
    entries: int | None = None
    orders: int | None = None
    seed: int = 7
    days: int = 180
    round_robin: bool = False
    identities: bool = False  # handles are `tg:<n>` with an Identity row each
    split_settle: bool = False  # two transactions per order, as the engine writes them
    txns: int | None = None  # stop once the journal holds this many transactions
    mix: tuple[tuple[str, float], ...] = (("tea", 0.45), ("rice", 0.25), ("sofa", 0.30))
    pay_points_share: float = 0.10
    sell_points_share: float = 0.01
    withdraw_cash_share: float = 0.005


@dataclass
class Built:
    path: Path
    users: int
    handles: list[str]
    holders: list[str]
    entries: int
    waiting: int
    txns: int
    orders: int
    end: datetime  # the history's last instant: the benchmark's purchases come after it
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


class _Rows:
    """Buffers of rows per table, flushed with executemany every CHUNK rows."""

    SQL = {
        "journal": "INSERT INTO journal (id, key, kind, at, actor, body, result, prev_hash, hash)"
                   " VALUES (?,?,?,?,?,?,?,?,?)",
        "postings": "INSERT INTO postings (txn_id, account, unit, amount, ref) VALUES (?,?,?,?,?)",
        "orders": "INSERT INTO orders (no, ref, user_id, sku, qty, total, points_used, "
                  "points_value, cash, method, currency, status, created_at, paid_at, settles_at,"
                  " matures_at, settled_at, terms, payment_ref, entry_seq, minted, accelerated) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        "outbox": "INSERT INTO outbox (key, user_id, kind, params, lang, status, attempts, "
                  "next_at, created_at, sent_at, last_error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        "withdrawals": "INSERT INTO withdrawals (id, user_id, amount, status, requested_at, "
                       "decided_at, decided_by) VALUES (?,?,?,?,?,?,?)",
    }

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.buf: dict[str, list[tuple]] = {k: [] for k in self.SQL}
        self.counts: dict[str, int] = dict.fromkeys(self.SQL, 0)
        # SQLite releases the GIL while it writes: a writer thread inserts one chunk while the
        # history goes on being played, so both cores work.
        self.chunks: queue.Queue[tuple[str, list[tuple]] | None] = queue.Queue(maxsize=8)
        self.failed: list[BaseException] = []
        self.writer = threading.Thread(target=self._write, name="fixture-writer", daemon=True)
        self.writer.start()

    def _write(self) -> None:
        while (item := self.chunks.get()) is not None:
            if not self.failed:
                try:
                    self.conn.executemany(*item)
                except BaseException as exc:  # noqa: BLE001 - reported by close()
                    self.failed.append(exc)

    def add(self, table: str, row: tuple) -> None:
        buf = self.buf[table]
        buf.append(row)
        if len(buf) >= CHUNK:
            self.flush(table)

    def flush(self, table: str | None = None) -> None:
        for name in [table] if table else list(self.SQL):
            if self.buf[name]:
                self.chunks.put((self.SQL[name], self.buf[name]))
                self.counts[name] += len(self.buf[name])
                self.buf[name] = []

    def close(self) -> None:
        self.flush()
        self.chunks.put(None)
        self.writer.join()
        if self.failed:
            raise self.failed[0]


class _History:
    """The shop's state while its history is played (plain ints, no ORM)."""

    def __init__(self, plan: Plan, conn: sqlite3.Connection) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.rows = _Rows(conn)
        head = conn.execute("SELECT last_txn, last_hash, last_entry_seq, last_order_no "
                            "FROM head WHERE id = 1").fetchone()
        self.last_txn, self.last_hash, self.last_seq, self.last_order = head
        pools = dict(conn.execute("SELECT name, balance FROM pools"))
        self.queue_pool = pools["queue"]
        self.points_pool = pools["points"]
        self.supply = 0
        self.zero_price: tuple[int, int] | None = None
        self.next_user_id = 1 + (conn.execute("SELECT coalesce(max(id), 0) FROM users")
                                 .fetchone()[0])
        self.next_withdrawal = 1
        n = plan.users
        self.handle = [""] * n
        self.referrer: list[int | None] = [None] * n
        self.wallet = [0] * n
        self.held = [0] * n
        self.points = [0] * n
        self.basis = [0] * n
        self.exits: list[tuple[bytes, int]] = []  # heap of (exit key, user index)
        # entries: parallel lists indexed by seq - first_seq
        self.first_seq = self.last_seq + 1
        self.e_user: list[int] = []
        self.e_order: list[int] = []
        self.e_amount: list[int] = []
        self.e_released: list[int] = []
        self.e_matures: list[Moment] = []
        self.e_created: list[Moment] = []
        self.e_released_at: list[Moment | None] = []
        self.waiting_by_user: dict[int, deque[int]] = {}
        self.fifo: deque[int] = deque()  # waiting seqs in seq order, for the static release
        self.products = {p.sku: p for p in PRODUCTS}
        self.checked = False
        self.terms = {p.sku: _CANONICAL({
            "margin": p.margin, "scheme": p.scheme, "lock_days": p.lock_days,
            "pool_share": "0.20", "accel_rate": "0.20", "pool_rate": "0.30", "mint_rate": "0.70",
            "min_order": MIN_ORDER, "unit_price": p.price}) for p in PRODUCTS}
        self.midnights: dict[tuple[object, int], Moment] = {}

    # -- journal ------------------------------------------------------------------------------
    def record(self, key: str, kind: str, at: Moment, lines: list, body: dict,
               result: dict | None = None) -> int:
        txn_id = self.last_txn + 1
        body_text = _CANONICAL(body)
        result_text = _CANONICAL(result) if result is not None else None
        content = _CANONICAL([txn_id, key, kind, at.iso, None, body_text, result_text, lines])
        digest = hashlib.sha256((self.last_hash + content).encode()).hexdigest()
        if not self.checked:  # the shortcut above must be the engine's hash, exactly
            assert digest == journal.txn_hash(self.last_hash, txn_id, key, kind, at.at, None,
                                              body_text, result_text, lines)
            self.checked = True
        self.rows.add("journal", (txn_id, key, kind, at.sql, None, body_text, result_text,
                                  self.last_hash, digest))
        add = self.rows.add
        for account, unit, amount, ref in lines:
            add("postings", (txn_id, account, unit, amount, ref))
        self.last_txn, self.last_hash = txn_id, digest
        return txn_id

    def notify(self, user: int, kind: str, key: str, at: Moment, params: dict) -> None:
        t = at.sql
        self.rows.add("outbox", (key, self.uid(user), kind, _CANONICAL(params), "en",
                                 "sent", 1, t, t, t, None))

    def uid(self, user: int) -> int:
        return self.next_user_id + user

    # -- points -------------------------------------------------------------------------------
    def price(self) -> tuple[int, int]:
        if self.supply > 0:
            return self.points_pool, self.supply
        return self.zero_price or INITIAL_PRICE

    def touch(self, user: int) -> None:
        key = exit_key(self.basis[user], self.points[user])
        if key is not None:
            heapq.heappush(self.exits, (key, user))

    def take(self, user: int, q: int) -> int:
        moved = self.basis[user] if q == self.points[user] else \
            self.basis[user] * q // self.points[user]
        self.points[user] -= q
        self.basis[user] -= moved
        self.touch(user)
        return moved

    def burn(self, user: int, q: int, lines: list, ref: str) -> int:
        num, den = self.price()
        value = q * num // den
        self.take(user, q)
        self.supply -= q
        self.points_pool -= value
        if self.supply == 0:
            self.zero_price = (num, den)
        lines += [(journal.holding(self.uid(user)), MICRO, -q, ref),
                  (journal.POINTS_ISSUED, MICRO, q, ref)]
        return value

    def sell(self, user: int, q: int, lines: list, ref: str) -> tuple[int, int]:
        num, den = self.price()
        gross = q * num // den
        fee = -(-gross // 10)  # withdraw_fee 0.10, rounded up (stays in the pool)
        self.burn(user, q, lines, ref)
        self.points_pool += fee
        net = gross - fee
        self.wallet[user] += net
        _move(lines, FEN, journal.POINTS_POOL, journal.wallet(self.uid(user)), net, ref)
        return net, fee

    def forced_exits(self, at: Moment, cause: str) -> None:
        """SPEC §4: exit_multiple 2, cheapest exit first, re-checked after each exit."""
        while self.exits and self.supply > 0:
            key, user = self.exits[0]
            if exit_key(self.basis[user], self.points[user]) != key:
                heapq.heappop(self.exits)  # stale
                continue
            num, den = self.price()
            if self.points[user] * num < 2 * self.basis[user] * den:
                return
            heapq.heappop(self.exits)
            q = self.points[user]
            lines: list = []
            n = self.last_txn + 1
            net, fee = self.sell(user, q, lines, f"exit:{self.uid(user)}")
            h = self.handle[user]
            self.record(f"exit:{n}", "forced_exit", at, lines,
                        {"user": h, "points": q, "fee": fee, "cause": cause},
                        {"user": h, "points": q, "paid": net})
            self.notify(user, "forced_exit", f"exit:{n}", at,
                        {"points": q, "paid": net, "fee": fee})

    # -- queue --------------------------------------------------------------------------------
    def pay_entry(self, seq: int, amount: int, lines: list) -> None:
        i = seq - self.first_seq
        self.e_released[i] += amount
        self.queue_pool -= amount
        owner = self.e_user[i]
        self.wallet[owner] += amount
        _move(lines, FEN, journal.QUEUE_POOL, journal.wallet(self.uid(owner)), amount,
              f"entry:{seq}")

    def static_release(self, at: Moment) -> None:
        """Pay matured waiting entries in seq order, each in full; stop at the first the pool
        cannot pay. Not-yet-matured entries neither block nor get paid (SPEC §3)."""
        kept: list[int] = []
        while self.fifo:
            seq = self.fifo[0]
            i = seq - self.first_seq
            owed = self.e_amount[i] - self.e_released[i]
            if owed == 0:
                self.fifo.popleft()
                continue
            if self.e_matures[i].at > at.at:
                kept.append(self.fifo.popleft())
                continue
            if owed > self.queue_pool:
                break
            self.fifo.popleft()
            lines: list = []
            self.pay_entry(seq, owed, lines)
            self.e_released_at[i] = at
            owner = self.e_user[i]
            waiting = self.waiting_by_user[owner]
            waiting.remove(seq)
            key = f"release:entry:{seq}"
            self.record(key, "release", at, lines, {"entry": seq, "user": self.handle[owner]},
                        {"entry": seq, "paid": owed})
            self.notify(owner, "release_paid", key, at,
                        {"entry": seq, "amount": owed, "total": self.e_amount[i]})
        self.fifo.extendleft(reversed(kept))

    # -- one order ----------------------------------------------------------------------------
    def midnight(self, at: datetime, days: int) -> Moment:
        """00:00 Asia/Shanghai on the local date of `at` plus `days`, cached per day."""
        day = (at + SHANGHAI).date()
        found = self.midnights.get((day, days))
        if found is None:
            found = self.midnights[(day, days)] = Moment(local_midnight_after(at, days))
        return found

    def order(self, user: int, sku: str, qty: int, at: Moment, pay_points: int) -> None:
        product = self.products[sku]
        self.last_order += 1
        no = self.last_order
        ref = f"N{no}"
        r = f"order:{ref}"
        total = product.price * qty
        lines: list = []
        value = 0
        if pay_points:
            num, den = self.price()
            pay_points = min(pay_points, self.points[user], total * den // num)
            if pay_points:
                value = self.burn(user, pay_points, lines, r)
                _move(lines, FEN, journal.POINTS_POOL, journal.REVENUE, value, r)
        cash = total - value
        _move(lines, FEN, journal.PAYMENTS_IN, journal.REVENUE, cash, r)
        handle = self.handle[user]
        if self.plan.split_settle:  # the engine's shape: the purchase, then its settlement
            self.record(r, "purchase", at, lines,
                        {"order": ref, "user": handle, "sku": sku, "qty": qty, "total": total,
                         "cash": cash, "points": pay_points, "method": "cash"})
            lines = []
        seq = None
        accelerated: list[list[int]] = []
        matures = self.midnight(at.at, product.lock_days)
        referrer = self.referrer[user]
        if product.scheme in ("queue", "both"):
            c = -(-cash * product.margin_permille * 20 // 100_000)  # × margin × pool_share 0.20
            self.queue_pool += c
            _move(lines, FEN, journal.REVENUE, journal.QUEUE_POOL, c, r)
            if cash >= MIN_ORDER:
                self.last_seq += 1
                seq = self.last_seq
                self.e_user.append(user)
                self.e_order.append(no)
                self.e_amount.append(cash)
                self.e_released.append(0)
                self.e_matures.append(matures)
                self.e_created.append(at)
                self.e_released_at.append(None)
                self.waiting_by_user.setdefault(user, deque()).append(seq)
                self.fifo.append(seq)
                if referrer is not None:
                    budget = min(cash * 20 // 100, self.queue_pool)  # accel_rate 0.20
                    waiting = self.waiting_by_user.get(referrer)
                    while budget > 0 and waiting:
                        s = waiting[0]
                        i = s - self.first_seq
                        pay = min(budget, self.e_amount[i] - self.e_released[i])
                        self.pay_entry(s, pay, lines)
                        budget -= pay
                        accelerated.append([s, pay])
                        if self.e_released[i] == self.e_amount[i]:
                            waiting.popleft()
                            self.e_released_at[i] = at
        minted = 0
        if product.scheme in ("points", "both"):
            c = -(-cash * 3 // 10)  # pool_rate 0.30, into the pool: up
            v = c * 7 // 10  # mint_rate 0.70, out of the pool: down
            num, den = self.price()
            minted = v * den // num
            self.points_pool += c
            self.supply += minted
            self.points[user] += minted
            self.basis[user] += cash
            self.touch(user)
            _move(lines, FEN, journal.REVENUE, journal.POINTS_POOL, c, r)
            _move(lines, MICRO, journal.POINTS_ISSUED, journal.holding(self.uid(user)), minted, r)
        if self.plan.split_settle:
            self.record(f"settle:{ref}", "settle", at, lines,
                        {"order": ref, "entry": seq, "minted": minted,
                         "accelerated": accelerated})
        else:
            self.record(r, "purchase", at, lines,
                        {"order": ref, "user": handle, "sku": sku, "qty": qty, "total": total,
                         "cash": cash, "points": pay_points, "method": "cash", "entry": seq,
                         "minted": minted, "accelerated": accelerated})
        t = at.sql
        paid = sum(a[1] for a in accelerated)
        self.rows.add("orders", (no, ref, self.uid(user), sku, qty, total, pay_points, value,
                                 cash, "cash", "CNY", "settled", t, t, t, matures.sql, t,
                                 self.terms[sku], None, seq, minted, paid))
        self.notify(user, "order_settled", f"settle:{ref}", at,
                    {"order": ref, "entry": seq, "amount": cash if seq else 0,
                     "matures_at": matures.at.isoformat(), "minted": minted})
        if paid and referrer is not None:
            self.notify(referrer, "acceleration", f"accel:{ref}", at,
                        {"amount": paid, "buyer": handle, "order": ref})
        self.forced_exits(at, r)

    def sell_points(self, user: int, at: Moment) -> None:
        q = self.points[user] // 2
        if q <= 0:
            return
        n = self.last_txn + 1
        lines: list = []
        net, fee = self.sell(user, q, lines, f"sell:{n}")
        h = self.handle[user]
        self.record(f"sell:{n}", "withdraw_points", at, lines,
                    {"user": h, "points": q, "fee": fee},
                    {"user": h, "points": q, "paid": net, "fee": fee})
        self.forced_exits(at, "withdraw_points")

    def withdraw_cash(self, user: int, at: Moment) -> None:
        amount = self.wallet[user] // 2
        if amount <= 0:
            return
        w = self.next_withdrawal
        self.next_withdrawal += 1
        uid, h = self.uid(user), self.handle[user]
        ref = f"withdrawal:{w}"
        self.wallet[user] -= amount
        lines: list = []
        _move(lines, FEN, journal.wallet(uid), journal.held(uid), amount, ref)
        pending = {"withdrawal": w, "user": h, "amount": amount, "status": "pending"}
        self.record(ref, "withdrawal_request", at, lines,
                    {"withdrawal": w, "user": h, "amount": amount}, pending)
        lines = []
        _move(lines, FEN, journal.held(uid), journal.PAYOUTS_OUT, amount, ref)
        key = f"{ref}:approved"
        self.record(key, "withdrawal_approved", at, lines, {"withdrawal": w, "amount": amount},
                    {**pending, "status": "approved"})
        self.notify(user, "withdrawal_approved", key, at, {"withdrawal": w, "amount": amount})
        t = at.sql
        self.rows.add("withdrawals", (w, uid, amount, "approved", t, t, "bench"))


def _move(lines: list, unit: str, src: str, dst: str, amount: int, ref: str | None) -> None:
    if amount:
        lines.append((src, unit, -amount, ref))
        lines.append((dst, unit, amount, ref))


def build_history(path: Path, plan: Plan) -> Built:
    """A migrated SQLite file at `path` holding the shop and its whole history."""
    import time

    started = time.perf_counter()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = Database(f"sqlite:///{path}")
    migrate(db)
    setup_catalogue(db)
    service.deposit(db, pool="queue", amount="5000.00", at=T0, key="seed:queue")
    db.dispose()

    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # Bulk preparation only: no journal, no syncs (a crash here just means building again).
    # The file goes back to WAL at the end, and the benchmarks open it as the shop does
    # (storage/db.py: WAL, synchronous=FULL).
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-400000")
    conn.execute("BEGIN IMMEDIATE")
    # Secondary indexes are dropped during the load and made again from their own stored SQL
    # afterwards: one sorted build instead of millions of random B-tree inserts.
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                           "AND sql IS NOT NULL").fetchall()
    for name, _sql in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    h = _History(plan, conn)
    rng = h.rng
    _join_users(h, conn)
    limit_orders = plan.orders or 10**12
    limit_entries = plan.entries or 10**12
    expect = min(limit_orders, int(limit_entries * 1.5) + 10,
                 (plan.txns or 10**12) // (2 if plan.split_settle else 1) + 10)
    step = timedelta(days=plan.days) / max(expect, 1)
    at = T0 + timedelta(minutes=1)
    day = (at + SHANGHAI).date()
    skus = [s for s, _ in plan.mix]
    weights = [w for _, w in plan.mix]
    n_orders = 0
    limit_txns = plan.txns or 10**12
    while n_orders < limit_orders and len(h.e_amount) < limit_entries \
            and h.last_txn < limit_txns:
        at += step
        today = (at + SHANGHAI).date()
        if today != day:  # the scheduler's daily release, at local midnight
            day = today
            h.static_release(h.midnight(at, 0))
        user = n_orders % plan.users if plan.round_robin else rng.randrange(plan.users)
        sku = rng.choices(skus, weights)[0]
        qty = 1 if rng.random() < 0.8 else 2
        roll = rng.random()
        pay = 1_000_000 if roll < plan.pay_points_share and h.points[user] else 0
        moment = Moment(at)
        h.order(user, sku, qty, moment, pay)
        n_orders += 1
        roll = rng.random()
        if roll < plan.sell_points_share:
            h.sell_points(rng.randrange(plan.users), moment)
        elif roll < plan.sell_points_share + plan.withdraw_cash_share:
            h.withdraw_cash(rng.randrange(plan.users), moment)
    h.rows.close()
    _write_state(h, conn)
    for _name, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    holders = [h.handle[u] for u in range(plan.users) if h.points[u] > 0]
    waiting = sum(1 for i in range(len(h.e_amount)) if h.e_released[i] < h.e_amount[i])
    return Built(path=path, users=plan.users, handles=list(h.handle), holders=holders,
                 entries=len(h.e_amount), waiting=waiting, txns=h.last_txn, orders=n_orders,
                 end=at, seconds=time.perf_counter() - started, counts=dict(h.rows.counts))


def _join_users(h: _History, conn: sqlite3.Connection) -> None:
    """Users join first (SPEC §5: the referrer is fixed at first contact), one journal
    transaction each, as `engine.accounts.join` writes them."""
    plan = h.plan
    at = Moment(T0)
    for u in range(plan.users):
        h.handle[u] = f"tg:{100_000 + u}" if plan.identities else f"u{u}"
        if u >= 3 and h.rng.random() < 0.7:
            h.referrer[u] = h.rng.randrange(u)
        ref = h.handle[h.referrer[u]] if h.referrer[u] is not None else None
        h.record(f"join:{h.handle[u]}", "join", at, [], {"user": h.handle[u], "referrer": ref})


def _write_state(h: _History, conn: sqlite3.Connection) -> None:
    created = sql_time(T0)
    rows = []
    for u in range(h.plan.users):
        ref = h.referrer[u]
        rows.append((h.uid(u), h.handle[u], h.uid(ref) if ref is not None else None, "en", None,
                     created, h.wallet[u], h.held[u], h.points[u], h.basis[u],
                     exit_key(h.basis[u], h.points[u]), None, 0))
        if len(rows) >= CHUNK:
            _insert_users(conn, rows)
            rows = []
    _insert_users(conn, rows)
    if h.plan.identities:
        # Seen just now (by the wall clock engine.users.resolve compares with): a user who
        # chats is usually one who chatted within the hour, whose `last_seen_at` is not
        # rewritten (engine/users.py refreshes it at most hourly).
        seen = sql_time(datetime.now(UTC))
        conn.executemany("INSERT INTO identities (identity, user_id, created_at, last_seen_at) "
                         "VALUES (?,?,?,?)",
                         ((h.handle[u], h.uid(u), created, seen) for u in range(h.plan.users)))
    conn.executemany(
        "INSERT INTO entries (seq, user_id, order_no, amount, released, status, matures_at, "
        "created_at, released_at) VALUES (?,?,?,?,?,?,?,?,?)",
        ((h.first_seq + i, h.uid(h.e_user[i]), h.e_order[i], h.e_amount[i], h.e_released[i],
          "released" if h.e_released[i] == h.e_amount[i] else "waiting",
          h.e_matures[i].sql, h.e_created[i].sql,
          h.e_released_at[i].sql if h.e_released_at[i] else None)
         for i in range(len(h.e_amount))))
    zero = h.zero_price or (None, None)
    conn.execute("UPDATE pools SET balance = ? WHERE name = 'queue'", (h.queue_pool,))
    conn.execute("UPDATE pools SET balance = ?, supply = ?, zero_price_num = ?, "
                 "zero_price_den = ? WHERE name = 'points'",
                 (h.points_pool, h.supply, zero[0], zero[1]))
    conn.execute("UPDATE head SET last_txn = ?, last_hash = ?, last_entry_seq = ?, "
                 "last_order_no = ? WHERE id = 1",
                 (h.last_txn, h.last_hash, h.last_seq, h.last_order))


def _insert_users(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    conn.executemany(
        "INSERT INTO users (id, handle, referrer_id, lang, display_name, created_at, wallet, "
        "held, points, basis, exit_key, invite_code, blocked) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows)


def holder_shop(path: Path, holders: int, *, seed: int = 11) -> Built:
    """`holders` users who each bought points once, in turn (SPEC §4 forced-exit index)."""
    return build_history(path, Plan(users=holders, orders=holders, round_robin=True, seed=seed,
                                    mix=(("rice", 1.0),), pay_points_share=0.0,
                                    sell_points_share=0.0, withdraw_cash_share=0.0,
                                    days=30))


def describe(built: Built) -> dict[str, object]:
    return json.loads(json.dumps({
        "users": built.users, "holders": len(built.holders), "entries": built.entries,
        "waiting_entries": built.waiting, "journal_txns": built.txns, "orders": built.orders,
        "prepared_in_s": round(built.seconds, 1)}))
