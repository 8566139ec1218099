"""A shop's history played in memory, by the engine's rules, as rows to bulk-insert.

`ShopHistory` keeps the state as plain integers and writes every movement as the engine
would: SPEC §3 queue contribution, entries and acceleration, §4 minting at the price before
the contribution, paying with points, selling points with the fee, forced exit cheapest first
after every event, the daily static release, cash withdrawals — each a journal transaction
with the engine's keys, kinds, bodies and postings, hash-chained with the engine's own hash
(checked against `engine.journal.txn_hash` on the first transaction). Rows go to a `RowSink`
(benchmarks/fixtures.py inserts them). Only the engine's default configuration is played.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import sqlite3
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from engine import journal
from engine.journal import FEN, MICRO
from engine.points import exit_key

from .workload import PRODUCTS

# The engine's defaults (engine/config.py), as integers: every rate below is exact.
MIN_ORDER = 10_000  # queue.min_order 100.00
INITIAL_PRICE = (100, 1_000_000)  # points.initial_price 1.00 in fen per micro-point
SHANGHAI = timedelta(hours=8)  # Asia/Shanghai has had no DST since 1991


class RowSink(Protocol):
    def add(self, table: str, row: tuple) -> None: ...


def sql_time(at: datetime) -> str:
    """A UTC instant as SQLAlchemy stores DATETIME on SQLite (storage.models.UTCDateTime)."""
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


# `engine.journal.canonical` is `json.dumps` with these options; one encoder made once gives
# the same text without building an encoder per call. `ShopHistory` checks the first hash it
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
    """What to build. The history stops at the first limit reached of those given: `entries`
    queue entries, `orders` orders, `txns` journal transactions. `round_robin` makes every
    user buy in turn (so every user ends up holding points)."""

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


class ShopHistory:
    """The shop's state while its history is played (plain ints, no ORM)."""

    def __init__(self, plan: Plan, conn: sqlite3.Connection, rows: RowSink) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.rows = rows
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
        self.rows.add("order_lines", (no, 1, sku, qty, total // qty, total, cash, matures.sql,
                                      seq, minted, paid))  # a one-line order's line mirrors it
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
