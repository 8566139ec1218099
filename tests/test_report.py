"""Honest numbers (issue 6): every figure of the pool report, the queue view and the daily
history equals what the state and the journal imply, computed independently here."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from engine import report, service
from engine.errors import Refusal
from engine.estimate import HORIZON_DAYS, days_to_fund, release_estimate
from engine.history import price_changes
from engine.points import Price
from storage.db import Database
from storage.models import Entry, Identity, JournalTxn, Outbox, Pool, Posting, User

TZ = ZoneInfo("Asia/Shanghai")


def local(day: int, hour: int = 10, minute: int = 0) -> datetime:
    """Day `day` of the test calendar (day 0 = 1 Aug 2026), store-local time."""
    return datetime.combine(date(2026, 8, 1) + timedelta(days=day), time(hour, minute),
                            tzinfo=TZ)


def busy_shop(db: Database) -> datetime:
    """Twelve days of trade: entries, referrals and accelerations, deposits, releases,
    points sold and moved, a pending withdrawal. Returns the time to report at."""
    t = local(0, 0)
    service.upsert_product(db, sku="TEA", price="100.00", margin="0.50", lock_days=3,
                           scheme="both", at=t)
    service.upsert_product(db, sku="POT", price="250.00", margin="0.40", lock_days=6,
                           scheme="queue", at=t)
    service.upsert_product(db, sku="CUP", price="30.00", margin="0.50", lock_days=0,
                           scheme="both", at=t)  # below min_order: pool money, no entry
    service.join(db, user="A", at=t)
    service.join(db, user="B", referrer="A", at=t)
    service.join(db, user="C", referrer="B", at=t)
    service.join(db, user="D", at=t)
    n = 0
    plan = ["A:TEA", "B:POT", "C:TEA", "D:CUP", "B:TEA", "A:POT", "C:CUP", "D:TEA"]
    for day in range(12):
        for k in range(1 + day % 3):
            user, sku = plan[(day + k) % len(plan)].split(":")
            n += 1
            service.buy(db, user=user, sku=sku, at=local(day, 9 + k), order=f"o{n}")
        if day == 4:
            service.deposit(db, pool="queue", amount="30.00", at=local(day, 15))
        if day == 6:
            service.withdraw_points(db, user="A", points="5", at=local(day, 16))
            service.transfer_points(db, sender="B", receiver="D", points="3",
                                    at=local(day, 16))
        if day % 2 == 1:
            service.release(db, at=local(day + 1, 0, 5))
    service.release(db, at=local(10, 0, 5))
    service.request_withdrawal(db, user="A", amount="1.00", at=local(11, 12))
    return local(11, 18)


def all_rows(db: Database, model):  # type: ignore[no-untyped-def]
    return db.read(lambda s: s.execute(select(model)).scalars().all())


def journal_postings(db: Database) -> list[tuple[datetime, int, str, int, str | None]]:
    return db.read(lambda s: [
        (at, txn, acc, amt, ref) for at, txn, acc, amt, ref in s.execute(
            select(JournalTxn.at, Posting.txn_id, Posting.account, Posting.amount, Posting.ref)
            .join(JournalTxn, JournalTxn.id == Posting.txn_id).order_by(Posting.id))])


def test_liability_and_coverage_equal_what_the_state_implies(db: Database):
    at = busy_shop(db)
    r = report.pool_report(db, at)
    entries = all_rows(db, Entry)
    postings = journal_postings(db)
    # Independent liability, twice: from the entry rows, and from the journal (every entry's
    # amount less every payment the queue pool made to it).
    waiting = [e for e in entries if e.status == "waiting"]
    liability = sum(e.amount - e.released for e in waiting)
    paid: dict[int, int] = defaultdict(int)
    for _at, _txn, account, amount, ref in postings:
        if account == "pool:queue" and amount < 0:
            paid[int(ref.split(":")[1])] -= amount
    assert liability == sum(e.amount - paid[e.seq] for e in waiting)
    assert any(e.released for e in waiting), "the scenario must include partly paid entries"
    balance = sum(a for _t, _x, acc, a, _r in postings if acc == "pool:queue")
    assert r["liability"] == liability > 0
    assert r["queue_balance"] == balance
    assert r["coverage"] == Fraction(balance, liability)
    assert r["waiting_entries"] == len(waiting)
    matured = [e for e in waiting if e.matures_at <= at]
    assert r["matured_unpaid"] == sum(e.amount - e.released for e in matured)
    assert r["matured_entries"] == len(matured)
    first = min(waiting, key=lambda e: e.seq)
    assert r["oldest_waiting_days"] == (at - first.created_at).days
    assert r["longest_matured_wait_days"] == (at - min(e.matures_at for e in matured)).days


def test_windowed_flows_and_points_figures_match_the_journal(db: Database):
    at = busy_shop(db)
    r = report.pool_report(db, at)
    postings = journal_postings(db)
    for days in (7, 30):
        window = [(acc, a) for t, _x, acc, a, _r in postings if at - timedelta(days=days) < t <= at]
        assert r[f"inflow_{days}d"] == sum(a for acc, a in window if acc == "pool:queue" and a > 0)
        assert r[f"released_{days}d"] == -sum(a for acc, a in window
                                              if acc == "pool:queue" and a < 0)
    assert r["inflow_7d"] < r["inflow_30d"]
    users = all_rows(db, User)
    supply = sum(u.points for u in users)
    pool = sum(a for _t, _x, acc, a, _r in postings if acc == "pool:points")
    assert (r["supply"], r["points_balance"]) == (supply, pool)
    assert r["price_micro"] == pool * 10**10 // supply
    assert r["pending_withdrawals"] == {"count": 1, "amount": 100}
    assert r["price_history"][-1] == (at, r["price_micro"])
    prices = [p for _t, p in r["price_history"]]
    assert prices == sorted(prices), "the points price never falls"


def test_holders_near_exit_are_the_smallest_exit_prices_in_order(db: Database):
    at = busy_shop(db)
    r = report.pool_report(db, at, near_exit=2)
    pool = db.read(lambda s: s.get(Pool, "points"))
    price = Price(pool.balance, pool.supply)
    holders = sorted((u for u in all_rows(db, User) if u.points and u.basis),
                     key=lambda u: (Fraction(u.basis, u.points), u.id))
    assert [h["handle"] for h in r["holders_near_exit"]] == [u.handle for u in holders[:2]]
    top, user = r["holders_near_exit"][0], holders[0]
    assert top["value"] == user.points * pool.balance // pool.supply == price.value_of(user.points)
    assert top["exit_ratio"] == Fraction(user.points * pool.balance, pool.supply * 2 * user.basis)
    assert top["exit_ratio"] < 1  # anyone at 1 would already have been forced out
    assert r["holders_near_exit"][0]["exit_ratio"] >= r["holders_near_exit"][1]["exit_ratio"]


def test_history_walks_back_to_the_same_daily_figures_as_a_full_replay(db: Database):
    at = busy_shop(db)
    rows = report.history(db, at, days=20)
    postings = journal_postings(db)
    entries = all_rows(db, Entry)
    assert rows[-1]["day"] == at.date() and rows[-1]["at"] == at
    assert len(rows) == 12, "leading days before the shop opened are trimmed"
    for row in rows:
        end = row["at"]
        upto = [(acc, a, ref) for t, _x, acc, a, ref in postings if t < end or t == at == end]
        queue = sum(a for acc, a, _r in upto if acc == "pool:queue")
        owed = sum(e.amount for e in entries if e.created_at < end) + sum(
            a for acc, a, _r in upto if acc == "pool:queue" and a < 0)
        supply = -sum(a for acc, a, _r in upto if acc == "points:issued")
        points = sum(a for acc, a, _r in upto if acc == "pool:points")
        assert (row["queue_balance"], row["liability"]) == (queue, owed), row["day"]
        assert (row["points_balance"], row["supply"]) == (points, supply), row["day"]
        assert row["price_micro"] == (points * 10**10 // supply if supply else None)


def test_history_of_an_empty_shop_is_one_quiet_day(memdb: Database):
    rows = report.history(memdb, local(0), days=30)
    assert len(rows) == 1 and rows[0]["queue_balance"] == 0 and rows[0]["price_micro"] is None
    r = report.pool_report(memdb, local(0))
    assert r["coverage"] is None and r["liability"] == 0 and r["oldest_waiting_days"] is None
    assert r["price_micro"] == 1_000_000 and r["price_history"] == []


# -- the queue view and the release estimate -------------------------------------------------
def test_queue_view_positions_and_amount_ahead_match_the_waiting_queue(db: Database):
    at = busy_shop(db)
    waiting = sorted((e for e in all_rows(db, Entry) if e.status == "waiting"),
                     key=lambda e: e.seq)
    ids = {u.handle: u.id for u in all_rows(db, User)}
    seen = 0
    for handle in "ABCD":
        view = report.queue_view(db, handle, at)
        mine = [e for e in waiting if e.user_id == ids[handle]]
        assert [v["seq"] for v in view] == [e.seq for e in mine]
        for v, e in zip(view, mine, strict=True):
            ahead = [w for w in waiting if w.seq < e.seq]
            assert v["position"] == len(ahead) + 1
            assert v["owed_ahead"] == sum(w.amount - w.released for w in ahead)
            assert (v["amount"], v["released"], v["remaining"]) == (
                e.amount, e.released, e.amount - e.released)
            assert v["matures_at"] == e.matures_at and v["matures_at"].tzinfo is not None
            seen += 1
    assert seen == len(waiting) > 3


def test_queue_view_of_an_unknown_user_is_refused(memdb: Database):
    with pytest.raises(Refusal) as err:
        report.queue_view(memdb, "nobody", local(0))
    assert err.value.code == "unknown_user"


def _queue_without_inflow(db: Database, *, lock: int = 0) -> None:
    """Entries worth 100, 200, 100 bought on day 0 from a product that puts nothing into the
    pool (margin 0), so only deposits move it."""
    service.upsert_product(db, sku="FREE", price="100.00", margin="0", lock_days=lock,
                           scheme="queue", at=local(0, 0))
    service.join(db, user="A", at=local(0, 0))
    service.join(db, user="B", at=local(0, 0))
    for n, (handle, qty) in enumerate((("A", 1), ("B", 2), ("A", 1)), start=1):
        service.buy(db, user=handle, sku="FREE", qty=qty, at=local(0, 9), order=f"f{n}")


def _daily_sales(db: Database, at: datetime, *, days: int = 30) -> None:
    """One sale a day below `min_order` for the `days` days up to `at`: 1.00 into the queue
    pool each (ceil(10.00 × 0.5 × 0.20)), no entry."""
    service.upsert_product(db, sku="DRIP", price="10.00", margin="0.5", lock_days=0,
                           scheme="queue", at=at - timedelta(days=days))
    service.join(db, user="S", at=at - timedelta(days=days))
    for back in range(days):
        service.buy(db, user="S", sku="DRIP", at=at - timedelta(days=back, hours=1),
                    order=f"drip{back}")


def test_estimate_says_not_reached_when_nothing_flows_in(memdb: Database):
    _queue_without_inflow(memdb)
    service.deposit(memdb, pool="queue", amount="150.00", at=local(1))  # before the window
    at = local(40)
    assert report.pool_report(memdb, at)["inflow_30d"] == 0
    a, b = report.queue_view(memdb, "A", at), report.queue_view(memdb, "B", at)
    # The first entry is covered by the balance: payable now (today's date), not "never".
    assert a[0]["estimate"] == datetime.combine(at.date(), time(0), tzinfo=TZ)
    assert b[0]["estimate"] is None and a[1]["estimate"] is None


def test_estimate_gives_the_right_day_for_a_constant_inflow(memdb: Database):
    _queue_without_inflow(memdb)
    at = local(100, 13)
    _daily_sales(memdb, at)  # 1.00 a day into the pool for the 30 days up to `at`
    r = report.pool_report(memdb, at)
    assert (r["queue_balance"], r["inflow_30d"], r["deposits_30d"]) == (3000, 3000, 0)
    views = report.queue_view(memdb, "A", at) + report.queue_view(memdb, "B", at)
    assert sorted(v["owed_ahead"] + v["remaining"] for v in views) == [10000, 30000, 40000]
    for v in views:
        needed = v["owed_ahead"] + v["remaining"]
        day, balance = 0, 3000
        while balance < needed:  # walk the days: 1.00 more each day
            day, balance = day + 1, balance + 100
        assert v["estimate"] == datetime.combine(at.date() + timedelta(days=day), time(0),
                                                 tzinfo=TZ)
    assert [v["estimate"].date() - at.date() for v in views] == [
        timedelta(days=70), timedelta(days=370), timedelta(days=270)]


def test_estimate_never_precedes_maturity(memdb: Database):
    _queue_without_inflow(memdb, lock=200)
    service.deposit(memdb, pool="queue", amount="1000.00", at=local(1))
    view = report.queue_view(memdb, "B", local(2))
    assert view[0]["estimate"] == view[0]["matures_at"] == local(200, 0)


def test_estimate_arithmetic_edges():
    assert days_to_fund(100, 100, Fraction(0)) == 0
    assert days_to_fund(0, 100, Fraction(0)) is None
    assert days_to_fund(0, 100, Fraction(1000, 30)) == 3  # exactly 100.0 after 3 days
    assert days_to_fund(0, 101, Fraction(1000, 30)) == 4
    assert days_to_fund(0, 10**12, Fraction(1, 30)) is None  # beyond the horizon
    assert days_to_fund(0, HORIZON_DAYS, Fraction(1)) == HORIZON_DAYS
    # An instant that is not a local midnight (the timezone changed) counts from the next day.
    odd = datetime(2026, 8, 16, 3, tzinfo=TZ)
    assert release_estimate(balance=1, needed=1, daily_inflow=Fraction(0), matures_at=odd,
                            today=date(2026, 8, 1), tz=TZ) == datetime(2026, 8, 17, tzinfo=TZ)


# -- warnings to operators ---------------------------------------------------------------------
def test_warnings_name_low_coverage_and_long_matured_waits(memdb: Database):
    _queue_without_inflow(memdb)
    service.deposit(memdb, pool="queue", amount="100.00", at=local(1))
    at = local(10)
    found = dict(report.warnings(memdb, at, Fraction(1, 2), 7))
    assert found["coverage_low"] == {"balance": 10000, "liability": 40000,
                                     "coverage_pct": "25.00", "threshold_pct": "50.00"}
    service.deposit(memdb, pool="queue", amount="0.14", at=local(1))
    assert dict(report.warnings(memdb, at, Fraction(1, 2), 7))["coverage_low"][
        "coverage_pct"] == "25.03"  # 100.14 / 400.00 = 25.035%, rounded down
    # Lock 0: matured at 00:00 on day 0, ten days and ten hours before `at`.
    assert found["matured_waiting"] == {"days": 10, "limit_days": 7, "entries": 3,
                                        "amount": 40000, "first_seq": 1}
    assert [k for k, _p in report.warnings(memdb, at, Fraction(1, 4), 9)] == ["matured_waiting"]
    assert report.warnings(memdb, at, Fraction(1, 4), 10) == []  # 10 whole days: not > 10


def test_pool_warnings_reach_each_known_operator_once_a_day(memdb: Database):
    _queue_without_inflow(memdb)
    service.join(memdb, user="OPS", at=local(0), lang="en")

    def link(session):  # type: ignore[no-untyped-def]
        uid = session.execute(select(User.id).where(User.handle == "OPS")).scalar_one()
        session.add(Identity(identity="tg:1", user_id=uid, created_at=local(0)))
        session.add(Identity(identity="wx:ops", user_id=uid, created_at=local(0)))

    memdb.run(link)
    operators = ["tg:1", "wx:ops", "tg:404"]  # two identities of one user, one stranger
    assert report.write_pool_warnings(memdb, local(10), operators, Fraction(1, 2), 3) == 2
    assert report.write_pool_warnings(memdb, local(10, 20), operators, Fraction(1, 2), 3) == 0
    assert report.write_pool_warnings(memdb, local(11), operators, Fraction(1, 2), 3) == 2
    rows = all_rows(memdb, Outbox)
    warnings = [o for o in rows if o.kind == "pool_warning"]
    assert len(warnings) == 4 and {o.lang for o in warnings} == {"en"}
    assert {o.key.split(":")[1] for o in warnings} == {"coverage_low", "matured_waiting"}
    assert report.write_pool_warnings(memdb, local(12), ["tg:404"], Fraction(1, 2), 3) == 0


def test_report_reads_no_growing_table_by_a_full_scan(sqlite_db: Database):
    """Every statement behind /pool, /queue and the charts searches an index: the cost follows
    the window and the waiting queue, not the size of the journal (SQLite's query plans)."""
    from sqlalchemy import event

    at = busy_shop(sqlite_db)
    statements: list[tuple[str, tuple]] = []

    def seen(_conn, _cursor, statement, params, *_args):  # type: ignore[no-untyped-def]
        statements.append((statement, params))

    event.listen(sqlite_db.engine, "before_cursor_execute", seen)
    report.pool_report(sqlite_db, at)
    report.queue_view(sqlite_db, "B", at)
    report.warnings(sqlite_db, at, Fraction(1, 2), 3)
    price_changes(sqlite_db, at)
    event.remove(sqlite_db.engine, "before_cursor_execute", seen)
    scans = []
    with sqlite_db.engine.connect() as conn:
        for statement, params in statements:
            for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params):
                detail = row[-1]
                if detail.startswith("SCAN") and not detail.startswith(("SCAN pools",
                                                                        "SCAN settings")):
                    scans.append((detail, statement))
                # One account's postings are read over a range of transactions only.
                if detail.startswith("SEARCH postings") and "txn_id>" not in detail:
                    scans.append((detail, statement))
    assert len(statements) > 15 and scans == []


def test_the_scheduler_job_warns_the_configured_operators(memdb: Database):
    """The scheduler's `pool_warnings` reads the real Settings, and what it writes renders in both
    languages through the notification catalogue."""
    import json

    from bot.settings import Settings
    from handlers.notify import render
    from scheduler import pool_warnings

    _queue_without_inflow(memdb)
    service.join(memdb, user="OPS", at=local(0), lang="zh")
    memdb.run(lambda s: s.add(Identity(identity="tg:7", user_id=s.execute(
        select(User.id).where(User.handle == "OPS")).scalar_one(), created_at=local(0))))
    settings = Settings(STOREFRONT_OPERATORS="tg:7, tg:8", STOREFRONT_COVERAGE_WARNING="0.30",
                        STOREFRONT_MATURED_WAIT_DAYS=5)
    assert pool_warnings(memdb, lambda: local(9), settings) == 2
    assert pool_warnings(memdb, lambda: local(9, 23), settings) == 0
    assert pool_warnings(memdb, lambda: local(9), object()) == 0
    rows = [o for o in all_rows(memdb, Outbox) if o.kind == "pool_warning"]
    assert {o.lang for o in rows} == {"zh"}
    texts = {(lang, json.loads(o.params)["warning"]): render("pool_warning",
                                                           json.loads(o.params), lang)
             for o in rows for lang in ("zh", "en")}
    assert "400.00" in texts[("en", "coverage_low")] and "0.00%" in texts[("en", "coverage_low")]
    assert "30.00%" in texts[("en", "coverage_low")]
    assert "资金池" in texts[("zh", "matured_waiting")] and "9" in texts[("zh", "matured_waiting")]


def test_the_scheduler_runs_the_pool_warnings_hourly(memdb: Database):
    from bot.settings import Settings
    from scheduler import build_scheduler, pool_warnings

    settings = Settings(STOREFRONT_OPERATORS="tg:7")
    sched = build_scheduler(settings, memdb, {}, clock=lambda: local(3))
    job = sched.get_job("pool-warnings")
    assert job.func is pool_warnings and job.args[0] is memdb
    assert job.args[2] is settings and job.trigger.interval == timedelta(hours=1)
