"""Honest numbers for consumers and operators (docs/reports.md defines every figure).

Read-only: every function here reads one snapshot (`Database.read`) except
`write_pool_warnings`, which only adds outbox rows. Money is integer fen, points integer
micro-points, ratios exact Fractions; nothing here rounds in anyone's favour but the
displayed price, which is floored like SPEC §7's.

Costs stay bounded as the shop grows: pool figures are aggregates over indexed ranges,
windows read only the journal inside the window (`ix_journal_at`), and history walks
backwards from the current balances instead of summing the journal from its beginning.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from typing import Any

from sqlalchemy import case, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from storage.db import Database
from storage.models import (
    Entry,
    Identity,
    JournalTxn,
    Outbox,
    Pool,
    Posting,
    Setting,
    User,
    Withdrawal,
)

from . import journal
from .config import Config
from .errors import Refusal
from .estimate import release_estimate
from .journal import canonical
from .money import MICRO_PER_POINT
from .points import Price

DAY = timedelta(days=1)
HISTORY_DAYS = 90
NEAR_EXIT = 10
_WAITING = Entry.status == "waiting"
_OWED = Entry.amount - Entry.released


def config(session: Session) -> Config:
    return Config.from_values({r.key: r.value for r in session.execute(select(Setting)).scalars()})


def current_price(pool: Pool, cfg: Config) -> Price:
    """SPEC §4's price: pool ÷ supply, else the price when supply last hit zero, else initial."""
    if pool.supply > 0:
        return Price(pool.balance, pool.supply)
    if pool.zero_price_num is not None and pool.zero_price_den:
        return Price(pool.zero_price_num, pool.zero_price_den)
    return Price(cfg.initial_price, MICRO_PER_POINT)


def _pools(session: Session) -> dict[str, Pool]:
    return {p.name: p for p in session.execute(select(Pool)).scalars()}


# -- the journal inside a window ------------------------------------------------------------
def _pool_flows(session: Session, since: datetime, until: datetime) -> tuple[int, int]:
    """(inflow, outflow) of the queue pool for journal times in (since, until]: contributions
    and deposits in, payments to entries (releases and accelerations) out."""
    txns = select(JournalTxn.id).where(JournalTxn.at > since, JournalTxn.at <= until)
    row = session.execute(
        select(func.coalesce(func.sum(case((Posting.amount > 0, Posting.amount), else_=0)), 0),
               func.coalesce(func.sum(case((Posting.amount < 0, -Posting.amount), else_=0)), 0))
        .where(Posting.account == journal.QUEUE_POOL, Posting.txn_id.in_(txns))
    ).one()
    return int(row[0]), int(row[1])


def queue_flows(db: Database, since: datetime, until: datetime) -> tuple[int, int]:
    """(inflow, outflow) of the queue pool in fen for journal times in (since, until]."""
    return db.read(lambda s: _pool_flows(s, since, until))


def daily_inflow(session: Session, at: datetime) -> Fraction:
    """The 30-day average daily inflow into the queue pool, exact (fen per day)."""
    inflow, _out = _pool_flows(session, at - 30 * DAY, at)
    return Fraction(inflow, 30)


# -- consumers: /queue and /me ----------------------------------------------------------------
def queue_view(db: Database, handle: str, at: datetime, *, limit: int = 50) -> list[dict[str, Any]]:
    """The user's waiting entries in `seq` order (at most `limit`), each with its place in the
    queue and the release estimate of engine/estimate.py. `unknown_user` if no such user."""
    return db.read(lambda s: _queue_view(s, handle, at, limit))


def _queue_view(session: Session, handle: str, at: datetime, limit: int) -> list[dict[str, Any]]:
    user_id = session.execute(select(User.id).where(User.handle == handle)).scalar_one_or_none()
    if user_id is None:
        raise Refusal("unknown_user", str(handle))
    cfg = config(session)
    tz = cfg.timezone
    balance = _pools(session)["queue"].balance
    inflow = daily_inflow(session, at)
    today = at.astimezone(tz).date()
    mine = session.execute(
        select(Entry.seq, Entry.amount, Entry.released, Entry.matures_at)
        .where(Entry.user_id == user_id, _WAITING).order_by(Entry.seq).limit(limit)
    ).all()
    out: list[dict[str, Any]] = []
    ahead_count, ahead_owed, last = 0, 0, 0
    for seq, amount, released, matures_at in mine:
        # Waiting entries in [last, seq): an indexed range on (status, seq), walked once.
        n, owed = session.execute(
            select(func.count(), func.coalesce(func.sum(_OWED), 0))
            .where(_WAITING, Entry.seq >= last, Entry.seq < seq)
        ).one()
        ahead_count += int(n)
        ahead_owed += int(owed)
        remaining = amount - released
        out.append({
            "seq": seq, "amount": amount, "released": released, "remaining": remaining,
            "position": ahead_count + 1, "owed_ahead": ahead_owed,
            "matures_at": matures_at.astimezone(tz),
            "estimate": release_estimate(balance=balance, needed=ahead_owed + remaining,
                                         daily_inflow=inflow, matures_at=matures_at,
                                         today=today, tz=tz),
            "daily_inflow": inflow.numerator // inflow.denominator,
        })
        last = seq
    return out


# -- operators: /pool and `storefront report` -------------------------------------------------
def pool_report(db: Database, at: datetime, *, near_exit: int = NEAR_EXIT,
                history_days: int = HISTORY_DAYS) -> dict[str, Any]:
    """Every figure of the operator's pool report; docs/reports.md defines each one."""
    return db.read(lambda s: _pool_report(s, at, near_exit, history_days))


def _days(later: datetime, earlier: datetime | None) -> int | None:
    return None if earlier is None else max(0, (later - earlier) // DAY)


def _pool_report(session: Session, at: datetime, near_exit: int,
                 history_days: int) -> dict[str, Any]:
    cfg = config(session)
    pools = _pools(session)
    queue_pool, points_pool = pools["queue"], pools["points"]
    waiting, liability = session.execute(
        select(func.count(), func.coalesce(func.sum(_OWED), 0)).where(_WAITING)).one()
    liability = int(liability)
    matured_count, matured = session.execute(
        select(func.count(), func.coalesce(func.sum(_OWED), 0))
        .where(_WAITING, Entry.matures_at <= at)).one()
    first_seq = session.execute(select(func.min(Entry.seq)).where(_WAITING)).scalar()
    oldest = (session.execute(select(Entry.created_at).where(Entry.seq == first_seq)).scalar()
              if first_seq is not None else None)
    first_matured = session.execute(
        select(func.min(Entry.matures_at)).where(_WAITING, Entry.matures_at <= at)).scalar()
    inflow_7, released_7 = _pool_flows(session, at - 7 * DAY, at)
    inflow_30, released_30 = _pool_flows(session, at - 30 * DAY, at)
    price = current_price(points_pool, cfg)
    pending_n, pending_amount = session.execute(
        select(func.count(), func.coalesce(func.sum(Withdrawal.amount), 0))
        .where(Withdrawal.status == "pending")).one()
    history = _history(session, at, history_days, cfg)
    return {
        "at": at.astimezone(cfg.timezone),
        "currency": cfg.currency,
        "queue_balance": queue_pool.balance,
        "liability": liability,
        "coverage": Fraction(queue_pool.balance, liability) if liability else None,
        "waiting_entries": int(waiting),
        "matured_unpaid": int(matured),
        "matured_entries": int(matured_count),
        "oldest_waiting_days": _days(at, oldest),
        "longest_matured_wait_days": _days(at, _aware(first_matured)),
        "inflow_7d": inflow_7, "inflow_30d": inflow_30,
        "released_7d": released_7, "released_30d": released_30,
        "points_balance": points_pool.balance,
        "supply": points_pool.supply,
        "price_micro": price.display_micro(),
        "price_history": [(h["at"], h["price_micro"]) for h in history
                          if h["price_micro"] is not None],
        "holders_near_exit": _near_exit(session, cfg, price, near_exit),
        "pending_withdrawals": {"count": int(pending_n), "amount": int(pending_amount)},
    }


def _aware(value: datetime | None) -> datetime | None:
    """Aggregates (`min`) bypass the column type on SQLite; read them back as UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _near_exit(session: Session, cfg: Config, price: Price, limit: int) -> list[dict[str, Any]]:
    """The `limit` holders closest to forced exit, straight off the exit-price index
    (`ix_users_exit`): the smallest basis ÷ holdings exits first (SPEC §4)."""
    m = cfg.exit_multiple
    if m == 0 or limit <= 0:
        return []
    rows = session.execute(
        select(User.handle, User.points, User.basis).where(User.exit_key.is_not(None))
        .order_by(User.exit_key, User.id).limit(limit)).all()
    out = []
    for handle, held, basis in rows:
        value = price.value_of(held)
        out.append({"handle": handle, "points": held, "basis": basis, "value": value,
                    # ≥ 1 means the next event forces the exit; exact, for display only.
                    "exit_ratio": Fraction(held * price.num, price.den) / (m * basis),
                    "exit_price_micro": int(m * basis * MICRO_PER_POINT * 10_000 // held)})
    return out


# -- history: daily figures walked back from today ----------------------------------------
def history(db: Database, at: datetime, days: int = HISTORY_DAYS) -> list[dict[str, Any]]:
    """One row per store-local day for the last `days` days up to `at`'s day: queue pool,
    liability, points pool, supply and price (micro, floored; None while supply is 0 and
    no earlier price is in the window) at the end of that day."""
    return db.read(lambda s: _history(s, at, days, config(s)))


def _local_day(session: Session, column: Any, offset_seconds: int) -> ColumnElement[Any]:
    """The store-local date of a UTC timestamp column, using the store's offset now (a DST
    change moves an hour of activity between two days on the charts, nothing more)."""
    if session.get_bind().dialect.name == "postgresql":
        shifted = column + literal_column(f"interval '{int(offset_seconds)} seconds'")
        return func.date(shifted)
    return func.date(column, literal_column(f"'{int(offset_seconds):+d} seconds'"))


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _history(session: Session, at: datetime, days: int, cfg: Config) -> list[dict[str, Any]]:
    tz = cfg.timezone
    offset = int((at.astimezone(tz).utcoffset() or timedelta(0)).total_seconds())
    today = at.astimezone(tz).date()
    first = today - timedelta(days=max(1, days) - 1)
    since = datetime.combine(first, time(0), tzinfo=tz)
    day = _local_day(session, JournalTxn.at, offset)
    moves: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for d, account, out_sum, total in session.execute(
        select(day, Posting.account,
               func.sum(case((Posting.amount < 0, -Posting.amount), else_=0)),
               func.sum(Posting.amount))
        .join(JournalTxn, JournalTxn.id == Posting.txn_id)
        .where(JournalTxn.at >= since,
               Posting.account.in_((journal.QUEUE_POOL, journal.POINTS_POOL,
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

    pools = _pools(session)
    liability = int(session.execute(select(func.coalesce(func.sum(_OWED), 0))
                                    .where(_WAITING)).scalar_one())
    state = {"queue": pools["queue"].balance, "points": pools["points"].balance,
             "supply": pools["points"].supply, "liability": liability}
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


# -- warnings pushed to operators -----------------------------------------------------------
def warnings(db: Database, at: datetime, coverage_threshold: Fraction,
             matured_wait_days: int) -> list[tuple[str, dict[str, Any]]]:
    """The pool conditions operators must hear about, as (message key, JSON-able params):
    `coverage_low` when balance ÷ liability < threshold (liability > 0), and
    `matured_waiting` when a matured entry has waited more than `matured_wait_days` whole
    days since its maturity (the pool could not pay it at that many daily releases)."""
    return db.read(lambda s: _warnings(s, at, coverage_threshold, matured_wait_days))


def _warnings(session: Session, at: datetime, threshold: Fraction,
              wait_days: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    balance = _pools(session)["queue"].balance
    liability = int(session.execute(select(func.coalesce(func.sum(_OWED), 0))
                                    .where(_WAITING)).scalar_one())
    if liability and Fraction(balance, liability) < threshold:
        out.append(("coverage_low", {
            "balance": balance, "liability": liability,
            "coverage_pct": balance * 100 // liability,
            "threshold_pct": math.floor(threshold * 100)}))
    first = session.execute(select(Entry.seq, Entry.matures_at)
                            .where(_WAITING, Entry.matures_at <= at - (wait_days + 1) * DAY)
                            .order_by(Entry.seq).limit(1)).first()
    if first is not None:
        matured_n, matured = session.execute(
            select(func.count(), func.coalesce(func.sum(_OWED), 0))
            .where(_WAITING, Entry.matures_at <= at)).one()
        oldest = session.execute(select(func.min(Entry.matures_at))
                                 .where(_WAITING, Entry.matures_at <= at)).scalar()
        out.append(("matured_waiting", {
            "days": _days(at, _aware(oldest)), "limit_days": wait_days,
            "entries": int(matured_n), "amount": int(matured), "first_seq": first.seq}))
    return out


def write_pool_warnings(db: Database, at: datetime, operators: Iterable[str],
                        coverage_threshold: Fraction, matured_wait_days: int) -> int:
    """Owe each operator (an identity such as `tg:42`, resolved to its user; unknown ones are
    skipped) one `pool_warning` outbox row per condition per store-local day. Returns the
    number of rows newly written; running it again the same day writes none."""
    found = warnings(db, at, coverage_threshold, matured_wait_days)
    if not found:
        return 0
    identities = sorted(set(operators))

    def work(session: Session) -> int:
        day = at.astimezone(config(session).timezone).date().isoformat()
        users = session.execute(
            select(User.id, User.lang).join(Identity, Identity.user_id == User.id)
            .where(Identity.identity.in_(identities))).all() if identities else []
        rows = [{"key": f"pool_warning:{cond}:{day}:{uid}", "user_id": uid,
                 "kind": "pool_warning", "params": canonical({"warning": cond, **params}),
                 "lang": lang or "zh", "status": "pending", "attempts": 0, "next_at": at,
                 "created_at": at}
                for uid, lang in sorted(set(users)) for cond, params in found]
        if not rows:
            return 0
        dialect_insert = pg_insert if db.is_postgres else sqlite_insert
        written = 0
        for row in rows:  # a handful: operators × conditions
            result = session.execute(dialect_insert(Outbox).values(**row)
                                     .on_conflict_do_nothing(index_elements=["key"]))
            written += max(0, getattr(result, "rowcount", 0) or 0)
        return written

    return db.run(work)


__all__ = ["current_price", "daily_inflow", "history", "pool_report", "queue_flows", "queue_view",
           "warnings", "write_pool_warnings"]
