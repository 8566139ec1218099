"""Honest numbers for consumers and operators (docs/reports.md defines every figure).

Read-only: every function here reads one snapshot (`Database.read`) except
`write_pool_warnings`, which only adds outbox rows. Money is integer fen, points integer
micro-points, ratios exact Fractions; nothing here rounds in anyone's favour but the
displayed price, which is floored like SPEC §7's.

Costs stay bounded as the shop grows: pool figures are aggregates over indexed ranges, and
windows and daily history read only the journal inside their window (engine/history.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, time
from fractions import Fraction
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import (
    Entry,
    Identity,
    Outbox,
    Pool,
    User,
    Withdrawal,
)

from . import inbox, outbox, payouts
from .config import Config
from .errors import Refusal
from .estimate import ahead_of, maturity_date
from .history import (
    DAY,
    HISTORY_DAYS,
    OWED,
    WAITING,
    config,
    daily_inflow,
    history,
    history_in,
    pool_flows,
    pool_inflows,
    pools,
    queue_flows,
)
from .money import MICRO_PER_POINT
from .points import Price, exit_key, price_of

NEAR_EXIT = 10
# "Near forced exit": within 10% of the exit price, i.e. holdings × price ≥ 0.9 × exit_multiple
# × basis (docs/reports.md). Stated in /pool and `storefront report`.
NEAR_EXIT_WITHIN = Fraction(1, 10)


def current_price(pool: Pool, cfg: Config) -> Price:
    """SPEC §4's price (`points.price_of`)."""
    return price_of(pool, cfg.initial_price)


# -- consumers: /queue and /me ----------------------------------------------------------------
def queue_view(db: Database, handle: str, at: datetime, *, limit: int = 50) -> list[dict[str, Any]]:
    """The user's waiting entries in `seq` order (at most `limit`), each with where it stands
    in the order the static release will pay (what is paid before it) and the release
    estimate, both from engine/estimate.py's walk. `unknown_user` if no such user."""
    return db.read(lambda s: _queue_view(s, handle, at, limit))


def _queue_view(session: Session, handle: str, at: datetime, limit: int) -> list[dict[str, Any]]:
    user_id = session.execute(select(User.id).where(User.handle == handle)).scalar_one_or_none()
    if user_id is None:
        raise Refusal("unknown_user", str(handle))
    cfg = config(session)
    tz = cfg.timezone
    balance = pools(session)["queue"].balance
    sales, deposits = pool_inflows(session, at - 30 * DAY, at)
    inflow = Fraction(sales, 30)
    today = at.astimezone(tz).date()
    mine = session.execute(
        select(Entry.seq, Entry.amount, Entry.released, Entry.matures_at)
        .where(Entry.user_id == user_id, WAITING).order_by(Entry.seq).limit(limit)
    ).all()
    if not mine:
        return []
    # Only these can be paid before one of the user's entries: any waiting entry up to their
    # last seq, and later ones that mature before their last maturity (a later entry maturing
    # no earlier than all of theirs is behind all of theirs). One indexed read of the waiting
    # queue on (status, seq): the cost follows the waiting queue, as the sums it replaces did.
    last_seq, last_maturity = mine[-1].seq, max(e.matures_at for e in mine)
    waiting = [(seq, owed, maturity_date(_aware(matures_at) or at, tz))
               for seq, owed, matures_at in session.execute(
                   select(Entry.seq, OWED, Entry.matures_at)
                   .where(WAITING, or_(Entry.seq <= last_seq, Entry.matures_at < last_maturity))
               )]
    order = ahead_of(waiting, balance=balance, daily_inflow=inflow, today=today,
                     wanted={e.seq for e in mine})
    out: list[dict[str, Any]] = []
    for seq, amount, released, matures_at in mine:
        stands = order[seq]
        out.append({
            "seq": seq, "amount": amount, "released": released, "remaining": amount - released,
            "position": stands.position, "owed_ahead": stands.owed_ahead,
            "matures_at": matures_at.astimezone(tz),
            "estimate": (datetime.combine(stands.paid_on, time(0), tzinfo=tz)
                         if stands.paid_on is not None else None),
            "daily_inflow": inflow.numerator // inflow.denominator,
            "deposits_30d": deposits,
        })
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
    now = pools(session)
    queue_pool, points_pool = now["queue"], now["points"]
    waiting, liability = session.execute(
        select(func.count(), func.coalesce(func.sum(OWED), 0)).where(WAITING)).one()
    liability = int(liability)
    matured_count, matured = session.execute(
        select(func.count(), func.coalesce(func.sum(OWED), 0))
        .where(WAITING, Entry.matures_at <= at)).one()
    first_seq = session.execute(select(func.min(Entry.seq)).where(WAITING)).scalar()
    oldest = (session.execute(select(Entry.created_at).where(Entry.seq == first_seq)).scalar()
              if first_seq is not None else None)
    first_matured = session.execute(
        select(func.min(Entry.matures_at)).where(WAITING, Entry.matures_at <= at)).scalar()
    inflow_7, released_7 = pool_flows(session, at - 7 * DAY, at)
    inflow_30, released_30 = pool_flows(session, at - 30 * DAY, at)
    _sales_30, deposits_30 = pool_inflows(session, at - 30 * DAY, at)
    price = current_price(points_pool, cfg)
    pending_n, pending_amount = session.execute(
        select(func.count(), func.coalesce(func.sum(Withdrawal.amount), 0))
        .where(Withdrawal.status == "pending")).one()
    history = history_in(session, at, history_days, cfg)
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
        "inflow_7d": inflow_7, "inflow_30d": inflow_30, "deposits_30d": deposits_30,
        "released_7d": released_7, "released_30d": released_30,
        "points_balance": points_pool.balance,
        "supply": points_pool.supply,
        # Money in the points pool that no points stand for: all of it while the supply is
        # zero (fees left by the last holders, or a deposit made before SPEC §4 refused one).
        "points_unbacked": points_pool.balance if points_pool.supply == 0 else 0,
        "price_micro": price.display_micro(),
        "price_history": [(h["at"], h["price_micro"]) for h in history
                          if h["price_micro"] is not None],
        "holders_near_exit": _near_exit(session, cfg, price, near_exit),
        "near_exit_count": _near_exit_count(session, cfg, price),
        "near_exit_within": NEAR_EXIT_WITHIN,
        "pending_withdrawals": {"count": int(pending_n), "amount": int(pending_amount)},
        "payouts": payouts.report_figures(session, at, cfg.timezone),  # issue 17
        # chat payments taken but not recorded yet (engine/inbox.py: spooled, or retrying)
        "payments_waiting": inbox.unrecorded(session),
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
        ratio = Fraction(held * price.num, price.den) / (m * basis)
        out.append({"handle": handle, "points": held, "basis": basis, "value": value,
                    # ≥ 1 means the next event forces the exit; exact, for display only.
                    "exit_ratio": ratio, "near": ratio >= 1 - NEAR_EXIT_WITHIN,
                    # The lowest displayed price at which the exit happens: rounded up.
                    "exit_price_micro": math.ceil(m * basis * MICRO_PER_POINT * 10_000 / held)})
    return out


def _near_exit_count(session: Session, cfg: Config, price: Price) -> int:
    """How many holders are within `NEAR_EXIT_WITHIN` of their exit price: holdings × price ≥
    (1 − within) × exit_multiple × basis, i.e. basis ÷ holdings ≤ price ÷ ((1 − within) × m).

    An index range on `ix_users_exit`: keys below the threshold's key are near for sure (a key
    is the floor of basis × 10²⁴ ÷ holdings); the few sharing the threshold's key are checked
    exactly. The cost follows the number of near holders, never all holders."""
    m = cfg.exit_multiple * (1 - NEAR_EXIT_WITHIN)
    if m == 0:
        return 0
    bound = exit_key(price.num * m.denominator, price.den * m.numerator)
    if bound is None:
        return 0
    below = session.execute(select(func.count()).select_from(User)
                            .where(User.exit_key.is_not(None), User.exit_key < bound)).scalar_one()
    tied = session.execute(select(User.points, User.basis).where(User.exit_key == bound)).all()
    return int(below) + sum(1 for held, basis in tied
                            if held * price.num * m.denominator >= m.numerator * basis * price.den)


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
    balance = pools(session)["queue"].balance
    liability = int(session.execute(select(func.coalesce(func.sum(OWED), 0))
                                    .where(WAITING)).scalar_one())
    if liability and Fraction(balance, liability) < threshold:
        out.append(("coverage_low", {
            "balance": balance, "liability": liability,
            "coverage_pct": _percent(Fraction(balance, liability)),
            "threshold_pct": _percent(threshold)}))
    first = session.execute(select(Entry.seq, Entry.matures_at)
                            .where(WAITING, Entry.matures_at <= at - (wait_days + 1) * DAY)
                            .order_by(Entry.seq).limit(1)).first()
    if first is not None:
        matured_n, matured = session.execute(
            select(func.count(), func.coalesce(func.sum(OWED), 0))
            .where(WAITING, Entry.matures_at <= at)).one()
        oldest = session.execute(select(func.min(Entry.matures_at))
                                 .where(WAITING, Entry.matures_at <= at)).scalar()
        out.append(("matured_waiting", {
            "days": _days(at, _aware(oldest)), "limit_days": wait_days,
            "entries": int(matured_n), "amount": int(matured), "first_seq": first.seq}))
    return out


def _percent(ratio: Fraction) -> str:
    """`Fraction(7, 2000)` → `"0.35"`: a percentage with two places, rounded down."""
    hundredths = math.floor(ratio * 10_000)
    return f"{hundredths // 100}.{hundredths % 100:02d}"


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
        rows = [outbox.message_fields(f"pool_warning:{cond}:{day}:{uid}", uid, "pool_warning",
                                      {"warning": cond, **params}, lang, at)
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


__all__ = ["HISTORY_DAYS", "config", "current_price", "daily_inflow", "history", "pool_report",
           "queue_flows", "queue_view", "warnings",
           "write_pool_warnings"]
