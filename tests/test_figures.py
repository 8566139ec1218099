"""Issue 14, "Wrong figures": what /queue, /pool, the export and the acceleration notice say
must be what the engine then does (docs/reports.md)."""

from __future__ import annotations

import io
import json
import random
from datetime import date, datetime, timedelta
from fractions import Fraction

from alembic import command
from sqlalchemy import select, text

from bot.cli_reports import format_report
from engine import export, report, service
from engine.estimate import ahead_of, release_estimate
from handlers import notify
from storage.db import Database
from storage.migrate import alembic_config
from storage.models import Entry, JournalTxn, Outbox, Pool, User
from tests.helpers import seed_shop
from tests.test_report import TZ, local

SALE = 9900  # fen a day into the queue pool: one DRIP sale, margin 1, pool share 1


def _shop(db: Database, locks: dict[str, tuple[str, int]], *, drip: str = "99.00",
          min_order: str = "100.00") -> None:
    """Products that put nothing into the pool (margin 0) and make entries, plus DRIP: 99.00
    below `min_order`, all of it into the queue pool, no entry. So the only inflow is sales of
    DRIP, one a day at 10:00, and it is exactly `SALE` a day."""
    t = local(0, 0)
    service.configure(db, {"queue": {"pool_share": "1", "min_order": min_order}}, at=t)
    service.upsert_product(db, sku="DRIP", price=drip, margin="1", lock_days=0,
                           scheme="queue", at=t)
    for sku, (price, lock) in locks.items():
        service.upsert_product(db, sku=sku, price=price, margin="0", lock_days=lock,
                               scheme="queue", at=t)
    service.join(db, user="S", at=t)


def _day(db: Database, day: int, buys: list[tuple[str, str]]) -> None:
    """Day `day`: the release at 00:05, the DRIP sale at 10:00, then the entries' purchases."""
    service.release(db, at=local(day, 0, 5))
    service.buy(db, user="S", sku="DRIP", at=local(day, 10), order=f"drip{day}")
    for n, (user, sku) in enumerate(buys):
        service.buy(db, user=user, sku=sku, at=local(day, 11, n), order=f"d{day}n{n}")


def _releases(db: Database) -> list[tuple[int, int, datetime]]:
    """(seq, paid, at) of every static-release payment, in the order the engine made them."""
    rows = db.read(lambda s: s.execute(select(JournalTxn.body, JournalTxn.result, JournalTxn.at)
                                       .where(JournalTxn.kind == "release")
                                       .order_by(JournalTxn.id)).all())
    return [(json.loads(b)["entry"], json.loads(r)["paid"], at) for b, r, at in rows]


# -- /queue: what is owed ahead ------------------------------------------------------------------
def test_entries_that_have_not_matured_do_not_count_as_owed_ahead(memdb: Database):
    """The issue's example: tg:2's #8 and #9 were shown "1400/1500 owed ahead" because seven
    entries earlier in the queue, maturing months later, were counted; they were paid days
    before the estimate. Only what the release pays before an entry stands ahead of it."""
    _shop(memdb, {"LONG": ("200.00", 60), "SHORT": ("100.00", 5)})
    service.join(memdb, user="X", at=local(0))
    service.join(memdb, user="tg:2", at=local(0))
    for day in range(29):
        _day(memdb, day, [])
    _day(memdb, 29, [("X", "LONG")] * 7 + [("tg:2", "SHORT")] * 2)  # seq 1–7, then 8 and 9
    at = local(30, 9)  # after the day's release, before its sale
    service.release(memdb, at=local(30, 0, 5))
    view = report.queue_view(memdb, "tg:2", at)
    assert [v["seq"] for v in view] == [8, 9]
    # Before: owed_ahead 1400.00 / 1500.00 and estimates 46 days away.
    assert [v["owed_ahead"] for v in view] == [0, 10000]
    assert [v["position"] for v in view] == [1, 2]
    assert [v["estimate"] for v in view] == [local(34, 0), local(34, 0)]  # they mature on day 34
    for day in range(30, 35):
        if day > 30:
            service.release(memdb, at=local(day, 0, 5))
        service.buy(memdb, user="S", sku="DRIP", at=local(day, 10), order=f"drip{day}")
    assert [(seq, at.astimezone(TZ)) for seq, _paid, at in _releases(memdb)] == [
        (8, local(34, 0, 5)), (9, local(34, 0, 5))]
    # The long entries still wait, each with only what the walk pays before it ahead.
    x = report.queue_view(memdb, "X", local(35, 9))
    assert [v["owed_ahead"] for v in x] == [20000 * k for k in range(7)]


# Entries bought each day (user, sku): locks of 0, 3, 10 and 20 days interleaved, so later
# entries often mature before earlier ones.
PLAN = [("A", "L20"), ("B", "L3"), ("C", "L0"), ("A", "L10"), ("B", "L20"), ("C", "L3"),
        ("A", "L0"), ("B", "L10"), ("C", "L20"), ("A", "L3")]


def test_estimate_and_owed_ahead_are_what_daily_releases_then_pay(memdb: Database):
    """Run the real releases day by day after the view: every waiting entry is paid on its
    estimated day, and what was paid before it is exactly the `owed_ahead` shown — including
    entries behind it in `seq` that matured first, and excluding entries ahead of it that had
    not matured."""
    _shop(memdb, {"L0": ("600.00", 0), "L3": ("1000.00", 3), "L10": ("800.00", 10),
                  "L20": ("500.00", 20)}, drip="499.00", min_order="500.00")
    for user in "ABC":
        service.join(memdb, user=user, at=local(0))
    for day in range(30):
        _day(memdb, day, [PLAN[(day + k) % len(PLAN)] for k in range(1 + (day % 3 == 0))])
    service.release(memdb, at=local(30, 0, 5))
    at = local(30, 9)
    already = len(_releases(memdb))
    views = [v for user in "ABC" for v in report.queue_view(memdb, user, at)]
    balance = memdb.read(lambda s: s.get(Pool, "queue").balance)
    assert len(views) >= 10 and all(v["released"] == 0 for v in views)
    assert all(v["daily_inflow"] == 49900 and v["deposits_30d"] == 0 for v in views)
    for day in range(30, 140):  # the same sale a day, and the daily release
        if day > 30:
            service.release(memdb, at=local(day, 0, 5))
        service.buy(memdb, user="S", sku="DRIP", at=local(day, 10), order=f"drip{day}")
    paid = _releases(memdb)[already:]
    assert {seq for seq, _p, _at in paid} == {v["seq"] for v in views}  # all paid, once
    before = 0
    owed_before: dict[int, int] = {}
    paid_on: dict[int, datetime] = {}
    for seq, amount, when in paid:
        owed_before[seq], paid_on[seq] = before, when.astimezone(TZ)
        before += amount
    out_of_seq = 0
    for v in views:
        assert v["owed_ahead"] == owed_before[v["seq"]], v
        assert v["estimate"] is not None
        assert v["estimate"] + timedelta(minutes=5) == paid_on[v["seq"]], v
        assert v["position"] == 1 + sum(1 for s in owed_before if owed_before[s] <
                                        owed_before[v["seq"]])
        # The old figure (every waiting entry earlier in seq) differs for some of them.
        earlier = sum(w["remaining"] for w in views if w["seq"] < v["seq"])
        out_of_seq += earlier != v["owed_ahead"]
    assert out_of_seq >= 3
    # And the documented formula holds: D = max(maturity day, first day the inflow covers
    # owed_ahead + remaining).
    for v in views:
        assert v["estimate"] == release_estimate(
            balance=balance, needed=v["owed_ahead"] + v["remaining"],
            daily_inflow=Fraction(49900), matures_at=v["matures_at"], today=at.date(), tz=TZ)


def test_the_walk_pays_later_entries_first_only_while_the_earlier_one_is_not_mature():
    today = local(0).date()
    d = [today + timedelta(days=n) for n in range(12)]
    # seq 1 matures on day 5; seq 2 (behind it) on day 1; seq 3 (behind) on day 8.
    waiting = [(1, 100, d[5]), (2, 100, d[1]), (3, 100, d[8])]
    fast = ahead_of(waiting, balance=0, daily_inflow=Fraction(50), today=today)
    assert [(fast[s].owed_ahead, fast[s].paid_on) for s in (1, 2, 3)] == [
        (100, d[5]), (0, d[2]), (200, d[8])]  # 2 is paid on day 2, before 1 matures
    slow = ahead_of(waiting, balance=0, daily_inflow=Fraction(10), today=today)
    # 100 takes 10 days: by then 1 has matured and is first in seq, so it goes first.
    assert [(slow[s].owed_ahead, slow[s].paid_on) for s in (1, 2, 3)] == [
        (0, today + timedelta(days=10)), (100, today + timedelta(days=20)),
        (200, today + timedelta(days=30))]
    never = ahead_of(waiting, balance=150, daily_inflow=Fraction(0), today=today)
    assert [(never[s].owed_ahead, never[s].paid_on, never[s].position) for s in (1, 2, 3)] == [
        (100, None, 2), (0, d[1], 1), (200, None, 3)]


def test_estimate_inflow_counts_sales_only_and_shows_deposits_apart(memdb: Database):
    _shop(memdb, {"L3": ("250.00", 3)})
    service.join(memdb, user="A", at=local(0))
    for day in range(30):
        _day(memdb, day, [("A", "L3")] if day == 29 else [])
    service.deposit(memdb, pool="queue", amount="500.00", at=local(29, 12))
    at = local(30, 9)
    (v,) = report.queue_view(memdb, "A", at)
    assert (v["daily_inflow"], v["deposits_30d"]) == (SALE, 50000)
    r = report.pool_report(memdb, at)
    assert (r["inflow_30d"], r["deposits_30d"]) == (30 * SALE + 50000, 50000)


# -- released_at for entries completed by acceleration ---------------------------------------
def _accelerated(db: Database) -> None:
    """R's entry of 100.00 is completed by one referee's 500.00 purchase (20% = 100.00)."""
    t = local(0)
    service.upsert_product(db, sku="TEA", price="100.00", margin="0.5", lock_days=30,
                           scheme="queue", at=t)
    service.deposit(db, pool="queue", amount="1000.00", at=t)
    service.join(db, user="R", at=t)
    service.join(db, user="E", referrer="R", at=t)
    service.buy(db, user="R", sku="TEA", at=local(1), order="r1")
    service.buy(db, user="E", sku="TEA", qty=5, at=local(2, 15), order="e1")


def test_an_entry_completed_by_acceleration_is_released_at_that_time(memdb: Database):
    _accelerated(memdb)
    (entry,) = memdb.read(lambda s: s.execute(select(Entry).where(Entry.seq == 1)).scalars()
                          .all())
    assert (entry.status, entry.released, entry.released_at) == ("released", 10000, local(2, 15))
    out = io.BytesIO()
    export.stream(memdb, "entries", "jsonl", out)
    row = json.loads(out.getvalue().decode().splitlines()[0])
    assert row["status"] == "released" and row["released_at"] == "2026-08-03T07:00:00+00:00"


def test_migration_0011_backfills_released_at_from_the_journal(db: Database):
    _accelerated(db)
    # A row written before the fix: released by acceleration, no time.
    db.run(lambda s: s.execute(text("UPDATE entries SET released_at = NULL")))
    cfg = alembic_config(db.url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0007")
        command.upgrade(cfg, "head")
    got = db.read(lambda s: s.execute(select(Entry.seq, Entry.status, Entry.released_at)
                                      .order_by(Entry.seq)).all())
    # The completed entry gets its journal time; the buyer's waiting entry stays null.
    assert [tuple(r) for r in got] == [(1, "released", local(2, 15)), (2, "waiting", None)]


# -- /pool: holders near forced exit -----------------------------------------------------------
def _price_to(db: Database, target: Fraction, at: datetime) -> None:
    """Deposit into the points pool until price = pool ÷ supply reaches `target` (fen per
    micro-point)."""
    pool = db.read(lambda s: s.get(Pool, "points"))
    need = -(-target.numerator * pool.supply // target.denominator) - pool.balance
    service.deposit(db, pool="points", amount=f"{need // 100}.{need % 100:02d}", at=at)


def test_near_exit_counts_holders_within_ten_percent_of_their_exit_price(memdb: Database):
    t = local(0)
    service.upsert_product(memdb, sku="RICE", price="100.00", margin="0.5", lock_days=0,
                           scheme="points", at=t)
    for user in ("NEAR", "FAR"):
        service.join(memdb, user=user, at=t)
    service.buy(memdb, user="NEAR", sku="RICE", at=local(1), order="n1")  # 21 pts at 1.00
    # Exit at holdings × price ≥ 2 × basis: NEAR exits at 200/21 ≈ 9.52. FAR buys at a
    # price of 4.75, so FAR exits at 5 × the final price: 400% away.
    _price_to(memdb, Fraction(475, 1_000_000), local(2))
    service.buy(memdb, user="FAR", sku="RICE", at=local(3), order="f1")
    _price_to(memdb, Fraction(200 * 95, 21 * 100) / 10_000, local(4))  # NEAR at 95% of exit
    r = report.pool_report(memdb, local(5))
    ratios = {h["handle"]: h["exit_ratio"] for h in r["holders_near_exit"]}
    assert Fraction(9, 10) <= ratios["NEAR"] < 1 and ratios["FAR"] <= Fraction(21, 100)
    assert {h["handle"]: h["near"] for h in r["holders_near_exit"]} == {"NEAR": True,
                                                                         "FAR": False}
    assert r["near_exit_count"] == 1 and r["near_exit_within"] == Fraction(1, 10)
    assert ("1 holders within 10.00% of their exit price (points × price ≥ 90.00% of exit "
            "multiple × basis)") in format_report(r)


# -- acceleration capped by the pool ---------------------------------------------------------
def test_an_acceleration_capped_by_the_pool_is_explained_to_the_referrer(memdb: Database):
    seed_shop(memdb, products=[("SOFA", "1000.00", "0.09", 30, "queue")], users=("R", "E"),
              referrals={"E": "R"}, langs={"R": "en"}, at=local(0))
    service.buy(memdb, user="R", sku="SOFA", at=local(1), order="r1")  # pool 18.00
    service.buy(memdb, user="E", sku="SOFA", at=local(2), order="e1")  # + 18.00 → 36.00
    service.buy(memdb, user="E", sku="SOFA", at=local(3), order="e2")  # the pool holds 18.00
    notes = memdb.read(lambda s: [(o.key, json.loads(o.params)) for o in s.execute(
        select(Outbox).where(Outbox.kind == "acceleration").order_by(Outbox.id)).scalars()])
    assert [k for k, _p in notes] == ["accel:e1", "accel:e2"]
    _key, p = notes[1]
    assert (p["amount"], p["due"], p["pool"], p["cash"], p["rate"]) == (
        1800, 20000, 1800, 100000, "0.20")
    en = notify.render("acceleration", p, "en", currency="CNY")
    assert en.endswith("20% of 1000.00 CNY would be 200.00 CNY; the queue pool held 18.00 CNY, "
                       "so 18.00 CNY was paid now.")
    zh = notify.render("acceleration", p, "zh", currency="CNY")
    assert "1000.00 CNY 的 20% 应为 200.00 CNY；奖金池当时只有 18.00 CNY，所以现在支付了 18.00 CNY。" in zh


def test_an_acceleration_the_entries_needed_less_of_is_not_called_capped(memdb: Database):
    _accelerated(memdb)
    (p,) = memdb.read(lambda s: [json.loads(o.params) for o in s.execute(
        select(Outbox).where(Outbox.kind == "acceleration")).scalars()])
    assert p == {"amount": 10000, "buyer": "E", "order": "e1"}
    assert "pool held" not in notify.render("acceleration", p, "en", currency="CNY")


def test_an_empty_pool_still_tells_the_referrer_why_nothing_came(memdb: Database):
    seed_shop(memdb, products=[("FREE", "100.00", "0", 30, "queue")], users=("R", "E"),
              referrals={"E": "R"}, langs={"R": "zh"}, at=local(0))
    service.buy(memdb, user="R", sku="FREE", at=local(1), order="r1")
    service.buy(memdb, user="E", sku="FREE", at=local(2), order="e1")
    (o,) = memdb.read(lambda s: s.execute(select(Outbox).where(Outbox.kind == "acceleration"))
                      .scalars().all())
    p = json.loads(o.params)
    assert (p["amount"], p["due"], p["pool"]) == (0, 2000, 0)
    assert "奖金池当时只有 0.00 CNY，所以现在支付了 0.00 CNY" in notify.render(
        "acceleration", p, o.lang, currency="CNY")
    assert memdb.read(lambda s: s.execute(select(User.wallet).where(User.handle == "R"))
                      .scalar_one()) == 0


def _step_by_step(waiting: list[tuple[int, int, date]], balance: int, rate: Fraction,
                  today: date, days: int) -> dict[int, tuple[int, date]]:
    """The static release stepped one day at a time, written plainly: {seq: (paid before it,
    day paid)}."""
    paid, out = 0, {}
    for n in range(days):
        day = today + timedelta(days=n)
        funds = balance + n * rate - paid
        for seq, rem, matures in sorted(waiting):
            if seq in out or matures > day:
                continue
            if rem > funds:
                break
            out[seq] = (paid, day)
            paid, funds = paid + rem, funds - rem
    return out


def test_the_walk_agrees_with_a_day_by_day_release_on_random_queues():
    rng = random.Random(14)
    today = date(2026, 8, 1)
    for _case in range(40):
        waiting = [(seq, rng.randrange(1, 50) * 1000,
                    today + timedelta(days=rng.randrange(-5, 25)))
                   for seq in range(1, rng.randrange(2, 25))]
        balance = rng.randrange(0, 30_000)
        rate = Fraction(rng.randrange(0, 9000), rng.choice((1, 7, 30)))
        walk = ahead_of(waiting, balance=balance, daily_inflow=rate, today=today)
        stepped = _step_by_step(waiting, balance, rate, today, 400)
        for seq, _rem, _m in waiting:
            if seq in stepped:
                assert (walk[seq].owed_ahead, walk[seq].paid_on) == stepped[seq]
            else:
                assert walk[seq].paid_on is None or walk[seq].paid_on >= today + timedelta(400)
        mine = {seq for seq, _r, _m in waiting if rng.random() < 0.3}
        some = ahead_of(waiting, balance=balance, daily_inflow=rate, today=today, wanted=mine)
        assert {seq: some[seq] for seq in mine} == {seq: walk[seq] for seq in mine}
