"""Large fixtures, prepared fast: a shop's whole history written with bulk inserts.

A million queue entries or a million journal transactions would take an hour through the
engine (one durable commit each). Instead `build_history` makes the shop through the real
engine (schema by Alembic, catalogue, seed deposit), then lets `benchmarks.history` play its
history in memory by the engine's rules and streams the rows into the SQLite file with
`executemany` inside one transaction — a writer thread inserting while the history is played,
secondary indexes dropped during the load and rebuilt from their own stored SQL after it.
The state tables are written last, as the sums of the postings, so `storefront verify`
passes on the result and the engine carries on from it as from any shop.

With `Plan(split_settle=True)` an order is two journal transactions, `purchase` then
`settle`, exactly as the engine writes them (the verify row uses that). Without it — the shop
with a million entries, where only the tables' sizes matter — an order is one `purchase`
transaction holding both sets of postings, which halves the preparation; docs/perf.md says
so. Everything else has the engine's keys, kinds and shapes.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine import service
from engine.points import exit_key
from storage.db import Database
from storage.migrate import migrate

from .history import SHANGHAI, Moment, Plan, ShopHistory, sql_time
from .workload import T0, setup_catalogue

__all__ = ["Built", "Plan", "build_history", "describe", "holder_shop", "sql_time"]
CHUNK = 20_000


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


class BulkRows:
    """Buffers of rows per table, flushed with executemany every CHUNK rows."""

    SQL = {
        "journal": "INSERT INTO journal (id, key, kind, at, actor, body, result, prev_hash, hash)"
                   " VALUES (?,?,?,?,?,?,?,?,?)",
        "postings": "INSERT INTO postings (txn_id, account, unit, amount, ref) VALUES (?,?,?,?,?)",
        "orders": "INSERT INTO orders (no, ref, user_id, sku, qty, total, points_used, "
                  "points_value, cash, method, currency, status, created_at, paid_at, settles_at,"
                  " matures_at, settled_at, terms, payment_ref, entry_seq, minted, accelerated) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        "order_lines": "INSERT INTO order_lines (order_no, line_no, sku, qty, unit_price, "
                       "total, cash, matures_at, entry_seq, minted, accelerated) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
    rows = BulkRows(conn)
    h = ShopHistory(plan, conn, rows)
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
    rows.close()
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
                 end=at, seconds=time.perf_counter() - started, counts=dict(rows.counts))


def _join_users(h: ShopHistory, conn: sqlite3.Connection) -> None:
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


def _write_state(h: ShopHistory, conn: sqlite3.Connection) -> None:
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
