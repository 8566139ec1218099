"""The journal over time: money flows inside a window, and daily figures walked back from
today (docs/reports.md).

Both read only the journal inside their window: the window's transaction ids come from
`ix_journal_at`, then one account's postings are a range search on (account, txn_id), so the
cost follows the window, never the journal's whole history. History starts from the current
balances and subtracts what was recorded after each day instead of summing from the start.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta
from fractions import Fraction
from typing import Any

from sqlalchemy import and_, case, func, literal_column, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from storage.db import Database
from storage.models import Entry, JournalTxn, Pool, Posting

from . import journal
from .config import Config
from .config import stored as config
from .money import MICRO_PER_POINT
from .points import Price

DAY = timedelta(days=1)
HISTORY_DAYS = 90
WAITING = Entry.status == "waiting"
OWED = Entry.amount - Entry.released


def pools(session: Session) -> dict[str, Pool]:
    return {p.name: p for p in session.execute(select(Pool)).scalars()}


# -- the journal inside a window ------------------------------------------------------------
def in_window(session: Session, *when: ColumnElement[bool]) -> ColumnElement[bool] | None:
    """Postings of the journal transactions whose time satisfies `when`, as a condition on
    `Posting.txn_id`, or None if there are none.

    The id range comes first (`ix_journal_at`), so the postings read is a range search on
    (account, txn_id) the size of the window; the membership test keeps it exact even if
    journal times are not in id order (a replay may record events out of time order)."""
    lo, hi = session.execute(
        select(func.min(JournalTxn.id), func.max(JournalTxn.id)).where(*when)).one()
    if lo is None:
        return None
    return and_(Posting.txn_id >= lo, Posting.txn_id <= hi,
                Posting.txn_id.in_(select(JournalTxn.id).where(*when)))


def pool_flows(session: Session, since: datetime, until: datetime) -> tuple[int, int]:
    """(inflow, outflow) of the queue pool for journal times in (since, until]: contributions
    and deposits in, payments to entries (releases and accelerations) out."""
    window = in_window(session, JournalTxn.at > since, JournalTxn.at <= until)
    if window is None:
        return 0, 0
    row = session.execute(
        select(func.coalesce(func.sum(case((Posting.amount > 0, Posting.amount), else_=0)), 0),
               func.coalesce(func.sum(case((Posting.amount < 0, -Posting.amount), else_=0)), 0))
        .where(Posting.account == journal.QUEUE_POOL, window)
    ).one()
    return int(row[0]), int(row[1])


def pool_inflows(session: Session, since: datetime, until: datetime) -> tuple[int, int]:
    """(sales, deposits): the queue pool's inflow for journal times in (since, until], split
    into what sales contributed and what operators deposited (journal kind `deposit`).
    A deposit is a one-off, so the estimate's daily rate counts sales only."""
    window = in_window(session, JournalTxn.at > since, JournalTxn.at <= until)
    if window is None:
        return 0, 0
    deposit = JournalTxn.kind == "deposit"
    row = session.execute(
        select(func.coalesce(func.sum(case((and_(Posting.amount > 0, ~deposit), Posting.amount),
                                           else_=0)), 0),
               func.coalesce(func.sum(case((and_(Posting.amount > 0, deposit), Posting.amount),
                                           else_=0)), 0))
        .join(JournalTxn, JournalTxn.id == Posting.txn_id)
        .where(Posting.account == journal.QUEUE_POOL, window)
    ).one()
    return int(row[0]), int(row[1])


def queue_flows(db: Database, since: datetime, until: datetime) -> tuple[int, int]:
    """(inflow, outflow) of the queue pool in fen for journal times in (since, until]."""
    return db.read(lambda s: pool_flows(s, since, until))


def daily_inflow(session: Session, at: datetime) -> Fraction:
    """The 30-day average daily inflow from sales into the queue pool, exact (fen per day).
    Deposits are left out: a one-off is not a rate (they are in the balance already)."""
    sales, _deposits = pool_inflows(session, at - 30 * DAY, at)
    return Fraction(sales, 30)


# -- history: daily figures walked back from today ----------------------------------------
def history(db: Database, at: datetime, days: int = HISTORY_DAYS) -> list[dict[str, Any]]:
    """One row per store-local day for the last `days` days up to `at`'s day: queue pool,
    liability, points pool, supply and price (micro, floored; None while supply is 0 and
    no earlier price is in the window) at the end of that day."""
    return db.read(lambda s: history_in(s, at, days, config(s)))


def _local_day(session: Session, column: Any, offset_seconds: int) -> ColumnElement[Any]:
    """The store-local date of a UTC timestamp column, using the store's offset now (a DST
    change moves an hour of activity between two days on the charts, nothing more)."""
    if session.get_bind().dialect.name == "postgresql":
        shifted = column + literal_column(f"interval '{int(offset_seconds)} seconds'")
        return func.date(shifted)
    return func.date(column, literal_column(f"'{int(offset_seconds):+d} seconds'"))


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def history_in(session: Session, at: datetime, days: int, cfg: Config) -> list[dict[str, Any]]:
    """`history` inside an open session (the pool report reads it in its own snapshot)."""
    tz = cfg.timezone
    offset = int((at.astimezone(tz).utcoffset() or timedelta(0)).total_seconds())
    today = at.astimezone(tz).date()
    first = today - timedelta(days=max(1, days) - 1)
    since = datetime.combine(first, time(0), tzinfo=tz)
    day = _local_day(session, JournalTxn.at, offset)
    moves: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    window = in_window(session, JournalTxn.at >= since)
    for d, account, out_sum, total in [] if window is None else session.execute(
        select(day, Posting.account,
               func.sum(case((Posting.amount < 0, -Posting.amount), else_=0)),
               func.sum(Posting.amount))
        .join(JournalTxn, JournalTxn.id == Posting.txn_id)
        .where(window, Posting.account.in_((journal.QUEUE_POOL, journal.POINTS_POOL,
                                            journal.POINTS_ISSUED)))
        .group_by(day, Posting.account)
    ):
        bucket = moves[_as_date(d)]
        bucket[account] += int(total)
        if account == journal.QUEUE_POOL:
            bucket["paid"] += int(out_sum)
    eday = _local_day(session, Entry.created_at, offset)
    for d, created in session.execute(
        select(eday, func.sum(Entry.amount)).where(Entry.created_at >= since).group_by(eday)
    ):
        moves[_as_date(d)]["created"] += int(created)

    now = pools(session)
    liability = int(session.execute(select(func.coalesce(func.sum(OWED), 0))
                                    .where(WAITING)).scalar_one())
    state = {"queue": now["queue"].balance, "points": now["points"].balance,
             "supply": now["points"].supply, "liability": liability}
    # Walk back: the end of day D is now minus everything recorded after D.
    for d in sorted((d for d in moves if d > today), reverse=True):
        _undo(state, moves[d])
    rows: list[dict[str, Any]] = []
    for i in range(max(1, days)):
        d = today - timedelta(days=i)
        end = at if d == today else datetime.combine(d + DAY, time(0), tzinfo=tz)
        price = (Price(state["points"], state["supply"]).display_micro()
                 if state["supply"] > 0 else None)
        rows.append({"day": d, "at": end.astimezone(tz), "queue_balance": state["queue"],
                     "liability": state["liability"], "points_balance": state["points"],
                     "supply": state["supply"], "price_micro": price})
        _undo(state, moves.get(d, {}))
    rows.reverse()
    # Zero supply mid-window keeps the price it last had (SPEC §4).
    last = None
    for row in rows:
        if row["price_micro"] is None:
            row["price_micro"] = last
        last = row["price_micro"]
    while len(rows) > 1 and not any(rows[0][k] for k in ("queue_balance", "liability",
                                                          "points_balance", "supply")):
        rows.pop(0)
    return rows


def _undo(state: dict[str, int], day: dict[str, int]) -> None:
    state["queue"] -= day.get(journal.QUEUE_POOL, 0)
    state["points"] -= day.get(journal.POINTS_POOL, 0)
    state["supply"] += day.get(journal.POINTS_ISSUED, 0)  # points:issued holds −supply
    state["liability"] += day.get("paid", 0) - day.get("created", 0)


# -- the points price at each change ------------------------------------------------------
def price_changes(db: Database, at: datetime, days: int = HISTORY_DAYS) -> list[tuple[datetime, int]]:
    """[(time, price_micro)]: the points price (SPEC §4, displayed rounded down) after every
    journal transaction that moved the points pool or the supply in the `days` store-local
    days up to `at`, preceded by the price when the window opened and followed by `at`.

    Not one sample a day: a shop's first purchases lift the price from `initial_price` within
    hours, and a daily sample would hide that jump. Walked back from today's pool like
    `history`, so it reads only the window's postings."""
    return db.read(lambda s: _price_changes(s, at, days, config(s)))


def _price_changes(session: Session, at: datetime, days: int,
                   cfg: Config) -> list[tuple[datetime, int]]:
    tz = cfg.timezone
    since = datetime.combine(at.astimezone(tz).date() - timedelta(days=max(1, days) - 1),
                             time(0), tzinfo=tz)
    # Everything since the window opened, later than `at` too: the walk back starts from
    # today's pool, so a chart drawn for an earlier `at` must undo what came after it.
    window = in_window(session, JournalTxn.at >= since)
    moves: list[tuple[int, datetime, int, int]] = []  # (txn id, at, Δpool, Δsupply)
    if window is not None:
        by_txn: dict[int, list[Any]] = {}
        for txn_id, when, account, total in session.execute(
            select(Posting.txn_id, JournalTxn.at, Posting.account, func.sum(Posting.amount))
            .join(JournalTxn, JournalTxn.id == Posting.txn_id)
            .where(window, Posting.account.in_((journal.POINTS_POOL, journal.POINTS_ISSUED)))
            .group_by(Posting.txn_id, JournalTxn.at, Posting.account)
        ):
            row = by_txn.setdefault(txn_id, [when, 0, 0])
            if account == journal.POINTS_POOL:
                row[1] += int(total)
            else:
                row[2] -= int(total)  # points:issued holds −supply
        moves = [(txn, w, dp, ds) for txn, (w, dp, ds) in sorted(by_txn.items())]
    now = pools(session)["points"]
    pool, supply = now.balance, now.supply
    for _txn, _w, dp, ds in moves:  # walk back to the window's start
        pool, supply = pool - dp, supply - ds
    start: int | None = None
    if supply > 0:
        start = Price(pool, supply).display_micro()
    elif now.zero_price_num is None:
        # The supply never returned to zero, so zero at the window's start means nothing had
        # been minted yet: the price was the initial one.
        start = Price(cfg.initial_price, MICRO_PER_POINT).display_micro()
    elif not moves and now.zero_price_num is not None and now.zero_price_den:
        start = Price(now.zero_price_num, now.zero_price_den).display_micro()
    opened = since
    if supply == 0 and pool == 0 and start is not None:
        # Nothing minted before: the line starts on the day of the first change (or today),
        # not months before the shop existed.
        first = moves[0][1] if moves else at
        opened = max(since, datetime.combine(first.astimezone(tz).date(), time(0), tzinfo=tz))
    out: list[tuple[datetime, int]] = []
    if start is not None:
        out.append((opened.astimezone(tz), start))
    last = start
    for _txn, when, dp, ds in moves:
        if when > at:
            break
        pool, supply = pool + dp, supply + ds
        if supply > 0:
            last = Price(pool, supply).display_micro()
        if last is not None and (not out or out[-1][1] != last):
            out.append((when.astimezone(tz), last))
    if last is not None:
        out.append((at.astimezone(tz), last))
    return out

