"""Concurrency on PostgreSQL: 8 worker processes record 2,000 purchases (referrers, points
payments and transfers mixed in) and end in exactly the state — and the very same hash
chain — that applying the same events serially in commit order gives."""

from __future__ import annotations

import multiprocessing as mp
import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from engine import service
from engine.state import snapshot
from engine.verify import verify
from storage.db import Database
from storage.models import Head, JournalTxn

pytestmark = pytest.mark.slow  # eight worker processes, 2,000 purchases: about a minute
T0 = datetime(2026, 8, 1, 8, tzinfo=timezone(timedelta(hours=8)))
USERS = [f"u{i}" for i in range(40)]
WORKERS = 8
EVENTS = 2000


def setup(db: Database) -> None:
    service.configure(db, {"points": {"exit_multiple": "0"}}, at=T0)
    for sku, price, scheme in (("tea", "100.00", "queue"), ("rice", "50.00", "points"),
                               ("sofa", "120.00", "both")):
        service.upsert_product(db, sku=sku, price=price, margin="0.40", lock_days=7,
                               scheme=scheme, at=T0)
    for i, user in enumerate(USERS):
        service.join(db, user=user, referrer=USERS[i // 3] if i >= 3 else None, at=T0)
    service.deposit(db, pool="queue", amount="5000.00", at=T0, key="seed")
    for user in USERS:  # everyone holds points, so small points payments never fail
        service.buy(db, user=user, sku="rice", qty=4, at=T0, key=f"setup-{user}")


def events() -> list[dict]:
    rng = random.Random(20261125)
    out = []
    for i in range(EVENTS):
        at = T0 + timedelta(minutes=1 + i)
        kind = rng.random()
        user = rng.choice(USERS)
        if kind < 0.15:
            other = rng.choice([u for u in USERS if u != user])
            out.append({"op": "transfer", "key": f"ev-{i}", "sender": user, "receiver": other,
                        "points": "0.01", "at": at})
        else:
            out.append({"op": "buy", "key": f"ev-{i}", "user": user,
                        "sku": rng.choice(["tea", "rice", "sofa"]), "qty": rng.randint(1, 2),
                        "pay_points": "0.02" if kind < 0.30 else None, "at": at})
    return out


def apply(db: Database, ev: dict) -> None:
    if ev["op"] == "transfer":
        service.transfer_points(db, sender=ev["sender"], receiver=ev["receiver"],
                                points=ev["points"], at=ev["at"], key=ev["key"])
    else:
        service.buy(db, user=ev["user"], sku=ev["sku"], qty=ev["qty"], at=ev["at"],
                    pay_points=ev["pay_points"], key=ev["key"])


def worker(url: str, index: int) -> int:
    db = Database(url)
    done = 0
    for ev in events()[index::WORKERS]:
        apply(db, ev)
        done += 1
    db.dispose()
    return done


@pytest.mark.pg
def test_eight_processes_end_in_the_serial_state_of_their_commit_order(pg_db, pg_url, make_db):
    setup(pg_db)
    # Each worker is a process of its own with its own connections, forked from a server
    # that imported the engine once (not eight interpreters importing it side by side).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with ctx.Pool(WORKERS) as pool:
        counts = pool.starmap(worker, [(pg_url, i) for i in range(WORKERS)])
    assert sum(counts) == EVENTS

    by_key = {ev["key"]: ev for ev in events()}
    order = pg_db.read(lambda s: [k for k in s.execute(
        select(JournalTxn.key).order_by(JournalTxn.id)).scalars() if k in by_key])
    assert len(order) == EVENTS
    report = verify(pg_db)
    assert report.ok, report.lines()

    serial = make_db("postgresql")
    setup(serial)
    for key in order:
        apply(serial, by_key[key])
    assert serial.read(snapshot) == pg_db.read(snapshot)
    head = lambda s: s.execute(select(Head.last_txn, Head.last_hash)).one()  # noqa: E731
    assert serial.read(head) == pg_db.read(head)
