"""Green points (SPEC §4): price, mint, burn, transfer and forced exit.

The price is kept as an exact ratio `num / den` in fen per micro-point: the points pool over
the supply, or, while the supply is zero, the price when it last reached zero (or the
configured initial price). Money out of the pool rounds down, money in rounds up, so the
price never falls.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Protocol

from storage import queries
from storage.rows import UserRow

from . import journal, ledger
from .book import Book
from .journal import FEN, MICRO
from .money import MICRO_PER_POINT, into_pool, out_of_pool

_EXIT_SCALE = 10**24
_EXIT_BYTES = 20
_EXIT_MAX = 256**_EXIT_BYTES - 1


@dataclass(frozen=True)
class Price:
    """fen per micro-point, exact."""

    num: int
    den: int

    def value_of(self, micro: int) -> int:
        """What `micro` points are worth, rounded down (money leaving the pool)."""
        return micro * self.num // self.den

    def points_for(self, fen: int) -> int:
        """How many micro-points `fen` buys, rounded down (points leaving the pool)."""
        return fen * self.den // self.num

    def most_points_within(self, fen: int) -> int:
        """The most micro-points whose value (`value_of`) is at most `fen`."""
        return ((fen + 1) * self.den - 1) // self.num

    def display_micro(self) -> int:
        """The price in currency units with 6 places, rounded down, as an integer."""
        # fen/micro × 10^6 micro/point ÷ 100 fen/unit × 10^6 places
        return self.num * MICRO_PER_POINT * 10_000 // self.den


class PointsPool(Protocol):
    """What the price is made of: the `points` pool row (plain, ORM or a read's tuple)."""

    @property
    def balance(self) -> int: ...
    @property
    def supply(self) -> int: ...
    @property
    def zero_price_num(self) -> int | None: ...
    @property
    def zero_price_den(self) -> int | None: ...


def price_of(pool: PointsPool, initial_price: int) -> Price:
    """SPEC §4's price: pool ÷ supply; while the supply is zero, the price when it last
    reached zero, else the configured initial price. The one rule every view uses."""
    if pool.supply > 0:
        return Price(pool.balance, pool.supply)
    if pool.zero_price_num is not None and pool.zero_price_den:
        return Price(pool.zero_price_num, pool.zero_price_den)
    return Price(initial_price, MICRO_PER_POINT)


def price(book: Book) -> Price:
    """The price now, in this transaction."""
    return price_of(book.pool("points"), book.cfg.initial_price)


def exit_key(basis: int, holdings: int) -> bytes | None:
    """A sortable key for basis ÷ holdings (the exit price up to the factor `exit_multiple`)."""
    if basis <= 0 or holdings <= 0:
        return None
    return min(basis * _EXIT_SCALE // holdings, _EXIT_MAX).to_bytes(_EXIT_BYTES, "big")


def _touch(user: UserRow) -> None:
    user.exit_key = exit_key(user.basis, user.points)


def mint(book: Book, user: UserRow, cash: int, pool_rate: Fraction, mint_rate: Fraction,
         p: journal.Postings, ref: str) -> int:
    """Mint for a recorded cash amount: `c` into the pool, `v` of it minted at the price
    *before* `c` is added; the buyer's basis grows by the cash amount. Returns micro-points."""
    c = into_pool(cash * pool_rate)
    v = out_of_pool(c * mint_rate)
    minted = price(book).points_for(v)
    p.fen(journal.REVENUE, ledger.points_pool(book), c, ref)
    p.micro(ledger.issued(book), ledger.holding(user), minted, ref)
    user.basis += cash
    _touch(user)
    return minted


def _basis_share(user: UserRow, q: int) -> int:
    """The basis that leaves with `q` of a holder's points: pro rata, rounded down (all of
    it when all points go)."""
    return user.basis if q == user.points else out_of_pool(Fraction(user.basis * q, user.points))


def burn(book: Book, user: UserRow, q: int, p: journal.Postings, ref: str) -> int:
    """`q` points leave circulation at the current price; returns their value in fen, which
    the caller must move out of the points pool (in the same journal transaction)."""
    pool = book.pool("points")
    before = price(book)
    value = before.value_of(q)
    moved = _basis_share(user, q)
    p.micro(ledger.holding(user), ledger.issued(book), q, ref)
    user.basis -= moved
    _touch(user)
    if pool.supply == 0:
        pool.zero_price_num, pool.zero_price_den = before.num, before.den
    return value


def withdraw(book: Book, user: UserRow, q: int, p: journal.Postings, ref: str) -> tuple[int, int]:
    """Sell `q` points to the pool: gross rounds down, the fee rounds up and stays in the
    pool (lifting the price). Returns (paid to wallet, fee)."""
    gross = price(book).value_of(q)
    fee = into_pool(gross * book.cfg.withdraw_fee)
    value = burn(book, user, q, p, ref)
    assert value == gross
    net = gross - fee  # the fee never leaves the pool
    p.fen(ledger.points_pool(book), ledger.wallet(user), net, ref)
    return net, fee


def transfer(sender: UserRow, receiver: UserRow, q: int, p: journal.Postings, ref: str) -> None:
    """`q` points change hands with their share of the sender's basis."""
    moved = _basis_share(sender, q)
    p.micro(ledger.holding(sender), ledger.holding(receiver), q, ref)
    sender.basis -= moved
    receiver.basis += moved
    _touch(sender)
    _touch(receiver)


def _next_exit(book: Book) -> UserRow | None:
    """The holder who must exit next, found through the exit-price index (SPEC §4)."""
    m = book.cfg.exit_multiple
    if m == 0:
        return None
    pool = book.pool("points")
    if pool.supply == 0:
        return None
    cur = price(book)
    # holdings × price ≥ m × basis  ⇔  basis / holdings ≤ price / m
    threshold = min(cur.num * m.denominator * _EXIT_SCALE // (cur.den * m.numerator), _EXIT_MAX)
    limit = threshold.to_bytes(_EXIT_BYTES, "big")
    # Holders this transaction has read are as they are in memory (their rows may not be
    # written yet); everyone else is as the index says (in a batch of purchases, as the keys
    # read ahead for the whole batch say: `queries.ExitsAhead`, no round trip).
    held = list(book.rows.known(UserRow))
    ids = tuple(u.id for u in held)
    stored = queries.first_exit_key(book.rows, limit, ids)
    keys = [stored] if stored is not None else []
    keys += [u.exit_key for u in held if u.exit_key is not None and u.exit_key <= limit]
    if not keys:
        return None
    first = min(keys)
    # Rows sharing the smallest key: order them exactly (ties to the earliest user).
    tied = [u for u in held if u.exit_key == first]
    if stored == first:
        tied += queries.users_with_exit_key(book.rows, first, ids)
    best = min(tied, key=lambda u: (Fraction(u.basis, u.points), u.id))
    if best.points * cur.num * m.denominator >= m.numerator * best.basis * cur.den:
        return best
    return None


def forced_exits(book: Book, at: datetime, cause: str) -> list[tuple[UserRow, int, int]]:
    """Withdraw every holder whose points reached `exit_multiple × basis`, cheapest exit
    first, re-checking after each since each fee lifts the price. Returns (user, points,
    paid) for each exit."""
    exits: list[tuple[UserRow, int, int]] = []
    while (user := _next_exit(book)) is not None:
        q = user.points
        p = journal.Postings()
        ref = f"exit:{user.id}"
        net, fee = withdraw(book, user, q, p, ref)
        n = book.head.last_txn + 1
        book.record(key=f"exit:{n}", kind="forced_exit", at=at, postings=p,
                    body={"user": user.handle, "points": q, "fee": fee, "cause": cause},
                    result={"user": user.handle, "points": q, "paid": net})
        book.notify(user, "forced_exit", f"exit:{n}", at, points=q, paid=net, fee=fee)
        exits.append((user, q, net))
    return exits


__all__ = ["FEN", "MICRO", "Price", "burn", "exit_key", "forced_exits", "mint", "price",
           "price_of", "transfer", "withdraw"]
