"""The accounts whose balances rows also keep, for `journal.Postings` to move (SPEC §6).

`p.fen(ledger.wallet(buyer), journal.REVENUE, cash, ref)` takes `cash` out of the buyer's
stored wallet and writes the two postings, in one call; `verify` checks afterwards that every
stored balance still equals the sum of its account's postings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import journal
from .journal import Stored

if TYPE_CHECKING:
    from storage.models import User
    from storage.rows import UserRow

    from .book import Book


def wallet(user: UserRow | User) -> Stored:
    """Money the user owns (`users.wallet`)."""
    return Stored(journal.wallet(user.id), user, "wallet")


def held(user: UserRow | User) -> Stored:
    """Money set aside for a withdrawal an operator has not decided yet (`users.held`)."""
    return Stored(journal.held(user.id), user, "held")


def holding(user: UserRow | User) -> Stored:
    """The user's points, in micro-points (`users.points`)."""
    return Stored(journal.holding(user.id), user, "points")


def pool(book: Book, name: str) -> Stored:
    """The `queue` or `points` pool's money (`pools.balance`)."""
    return Stored(f"pool:{name}", book.pool(name), "balance")


def queue_pool(book: Book) -> Stored:
    return Stored(journal.QUEUE_POOL, book.pool("queue"), "balance")


def points_pool(book: Book) -> Stored:
    return Stored(journal.POINTS_POOL, book.pool("points"), "balance")


def issued(book: Book) -> Stored:
    """Points in circulation: the supply is minus the balance of `points:issued`."""
    return Stored(journal.POINTS_ISSUED, book.pool("points"), "supply", -1)
