"""Purchases per second against the physical limit: a durable commit.

Each purchase is `engine.service.buy`: one database transaction, committed (on disk) before
it returns — the buyer is told only then. The bare baseline is the same driver committing one
small row per transaction with the same durability settings, measured in the same run,
interleaved with the purchases.

Rows: one connection on a SQLite file, one connection on PostgreSQL, and 8 concurrent
clients on PostgreSQL against the bare one-connection commit rate: 8 threads of one
storefront process buying through its group commit (engine/batch.py; each answered only once
its purchase is durable), with 8 processes without group commit as a fact beside it.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

from engine.batch import GroupCommit
from engine.errors import Refusal
from storage.db import Database
from storage.migrate import migrate

from .bare import BarePG, BareSQLite, pg_schema
from .common import Context, Row, count, interleaved
from .floor import Ceiling, Floor, PGFloor, SQLiteFloor, Writes, sqlite_copy
from .workload import T0, Purchases, buy, setup_shop

SHOP_USERS = 200
CLIENTS = 8
SLICES = 4  # per run: purchases and bare commits alternate in this many slices each
# a comparison measured beside a grouped row: (url, handles, runs, seconds, bare) -> facts
Beside = Callable[[str, list[str], int, float, BarePG], dict[str, Any]]


def _purchases(db: Database, stream: Any, tally: dict[str, int]) -> Any:
    """A slice of purchases: (purchases made, seconds)."""
    def step() -> None:
        ok = buy(db, next(stream))
        tally["bought" if ok else "refused"] += 1

    return lambda seconds: count(step, seconds=seconds, at_least=3)


def _one_connection(ctx: Context, row: Row, url: str, bare: BareSQLite | BarePG,
                    floors: Callable[[], dict[str, tuple[Floor, int | None]]]) -> None:
    """Purchases on one connection to `url`, interleaved with `bare`'s commits, into `row`;
    each slice of purchases followed by the replay of its writes on `floors()` (copies of the
    shop made after its setup), for the row's ceiling."""
    db = Database(url)
    migrate(db)
    handles = setup_shop(db, SHOP_USERS)
    stream = iter(Purchases(handles, T0 + timedelta(days=1), uuid.uuid4().hex[:8]))
    tally = {"bought": 0, "refused": 0}
    seconds = ctx.seconds()
    ceiling = Ceiling(Writes(db), floors())
    try:
        row.measured, row.baseline, row.ratios = interleaved(
            ctx.runs(), SLICES, seconds, ceiling.follow(_purchases(db, stream, tally)),
            bare.commits)
    finally:
        ceiling.close()
        bare.close()
        db.dispose()
    _ceilings(row, ceiling)
    row.facts.update({"users": SHOP_USERS, "seconds_per_run_each": seconds, "slices": SLICES,
                      **tally})


def _ceilings(row: Row, ceiling: Ceiling, what: str = "") -> None:
    """The row's ceiling (floor "schema") and the other floors' as facts."""
    assert row.baseline is not None
    ratios = ceiling.ratios(row.baseline)
    row.ceiling = ratios.pop("schema")
    row.ceiling_what = ("the same purchases' writes replayed with no engine on a copy of the "
                        "shop (benchmarks/floor.py)" + what + ", over the same baseline")
    for name, stats in ratios.items():
        row.facts["ceiling_" + name.replace(" ", "_")] = stats.as_dict()
    row.facts.update(ceiling.facts())


def _pg_copies(stack: ExitStack, users: int, floors: Mapping[str, tuple[bool, int | None]],
               ) -> Callable[[], dict[str, tuple[Floor, int | None]]]:
    """A schema with the same shop for each floor (the same setup, so the same ids):
    name -> (keys only, purchases per commit)."""
    urls = {name: stack.enter_context(pg_schema()) for name in floors}
    for url in urls.values():
        db = Database(url)
        migrate(db)
        setup_shop(db, users)
        db.dispose()
    return lambda: {name: (PGFloor(urls[name], keys_only=keys), per_commit)
                    for name, (keys, per_commit) in floors.items()}


def sqlite_one(ctx: Context) -> Row:
    row = Row("purchase-sqlite", "purchases/s, one connection, SQLite file", "purchases/s",
              ("ratio>=", 0.5), baseline_what="bare durable one-row commits/s, same driver, "
              "same directory, WAL + synchronous=FULL + BEGIN IMMEDIATE")
    work = ctx.scratch("purchase-sqlite")
    shop = work / "shop.db"

    def floors() -> dict[str, tuple[Floor, int | None]]:
        return {"schema": (SQLiteFloor(sqlite_copy(shop, work / "floor.db")), None),
                "keys only": (SQLiteFloor(sqlite_copy(shop, work / "keys.db", keys_only=True)),
                              None)}

    _one_connection(ctx, row, f"sqlite:///{shop}", BareSQLite(work / "bare.db"), floors)
    return row


def pg_one(ctx: Context) -> Row:
    row = Row("purchase-pg", "purchases/s, one connection, PostgreSQL", "purchases/s",
              ("ratio>=", 0.5), baseline_what="bare durable one-row commits/s (psycopg, "
              "synchronous_commit on)")
    if ctx.pg_problem:
        return _skipped(row, ctx.pg_problem)
    with ExitStack() as stack:
        url = stack.enter_context(pg_schema())
        bare = BarePG(url)
        floors = {"schema": (False, None), "keys only": (True, None)}
        _one_connection(ctx, row, url, bare, _pg_copies(stack, SHOP_USERS, floors))
        row.facts["pg"] = bare.settings
    return row


# -- 8 clients ------------------------------------------------------------------------------

def _client(url: str, index: int, handles: list[str], slices: int, seconds: float,
            start: Any, results: Any) -> None:
    """One client process: its own connection; at each barrier, buy for `seconds`."""
    db = Database(url)
    stream = iter(Purchases(handles, T0 + timedelta(days=1 + index), f"c{index}-"
                            + uuid.uuid4().hex[:6], seed=100 + index))
    buy(db, next(stream))  # warm: connection, statement caches
    for run in range(slices):
        start.wait()
        began = time.monotonic()
        bought = refused = 0
        while time.monotonic() - began < seconds:
            if buy(db, next(stream)):
                bought += 1
            else:
                refused += 1
        results.put((index, run, bought, refused, began, time.monotonic()))
    db.dispose()


def _grouped(group: GroupCommit, streams: list[Any], tally: dict[str, int]) -> Any:
    """A slice of 8 client threads buying through one group commit: (purchases, seconds)
    from the first start to the last answer."""
    def measure(seconds: float) -> tuple[int, float]:
        counts = [0] * len(streams)
        refused = [0] * len(streams)
        began = time.monotonic()
        stop = began + seconds

        def client(i: int) -> None:
            while time.monotonic() < stop:
                try:
                    group.buy(**next(streams[i]))
                    counts[i] += 1
                except Refusal:
                    refused[i] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(streams))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tally["bought"] += sum(counts)
        tally["refused"] += sum(refused)
        return sum(counts), time.monotonic() - began

    return measure


def grouped_run(row: Row, db: Database, group: GroupCommit, ceiling: Ceiling, bare: BarePG,
                handles: list[str], clients: int, prefix: str, seed: int, runs: int,
                seconds: float) -> dict[str, int]:
    """`clients` purchase streams through one group commit (each answered once durable),
    interleaved with bare one-row commits: the row's figures, and what was bought or
    refused. The group, the ceiling and `db` are closed after."""
    streams = [iter(Purchases(handles, T0 + timedelta(days=1 + i),
                              f"{prefix}{i}-" + uuid.uuid4().hex[:6], seed=seed + i))
               for i in range(clients)]
    tally = {"bought": 0, "refused": 0}
    try:
        row.measured, row.baseline, row.ratios = interleaved(
            runs, SLICES, seconds, ceiling.follow(_grouped(group, streams, tally)),
            bare.commits)
    finally:
        group.close()
        ceiling.close()
        db.dispose()
    return tally


def pg_eight(ctx: Context) -> Row:
    # Ceilings: the writes merged 8 purchases to a commit (the most 8 clients can share),
    # with every index and with keys only; and as this group commit grouped them.
    floors = {"schema": (False, CLIENTS), "keys only": (True, CLIENTS),
              "as grouped": (False, None)}
    return grouped_row(ctx, "purchase-pg-8", 2.0, clients=CLIENTS, users=SHOP_USERS * 2,
                       floors=floors, prefix="g", seed=200, beside=_eight_processes)


def _eight_processes(url: str, handles: list[str], runs: int, seconds: float,
                     bare: BarePG) -> dict[str, Any]:
    """For comparison: 8 processes, one connection each, no group commit."""
    return {"without_group_commit_8_processes": _processes(url, handles, runs, seconds, bare)}


def grouped_row(ctx: Context, name: str, target: float, *, clients: int, users: int,
                floors: Mapping[str, tuple[bool, int | None]], prefix: str, seed: int,
                most: int | None = None, beside: Beside | None = None) -> Row:
    """Row `name` (target: ratio ≥ `target`) measured the shop's way on PostgreSQL:
    `clients` threads of one storefront process, each answered only when its purchase is
    durable, purchases grouped into shared commits (engine/batch.py; `most` to a commit, else
    its default), interleaved with bare one-row commits on one connection (`grouped_run`);
    its ceiling replayed on `floors` (`_pg_copies`). `beside(url, handles, runs, seconds,
    bare)`: a comparison measured after on the same shop, its facts added to the row's."""
    row = Row(name, f"purchases/s, {clients} concurrent clients, PostgreSQL", "purchases/s",
              ("ratio>=", target),
              baseline_what="bare durable one-row commits/s on one connection")
    if ctx.pg_problem:
        return _skipped(row, ctx.pg_problem)
    runs, seconds = ctx.runs(), ctx.seconds(2.0)
    with ExitStack() as stack:
        url = stack.enter_context(pg_schema())
        db = Database(url)  # one connection is enough: one thread writes for all clients
        migrate(db)
        handles = setup_shop(db, users)
        ceiling = Ceiling(Writes(db), _pg_copies(stack, users, floors)())
        bare = BarePG(url)
        group = GroupCommit(db) if most is None else GroupCommit(db, most=most)
        try:
            tally = grouped_run(row, db, group, ceiling, bare, handles, clients, prefix, seed,
                                runs, seconds)
            _ceilings(row, ceiling, f", {clients} purchases to a commit")
            more = beside(url, handles, runs, seconds, bare) if beside else {}
        finally:
            bare.close()
        row.facts.update({"clients": clients, "threads_in_one_process": True, "users": users,
                          "seconds_per_run_each": seconds, "slices": SLICES,
                          "pg": bare.settings, "group_commit": "engine.batch",
                          "commits": group.batches,
                          "purchases_per_commit": round(group.purchases
                                                        / max(group.batches, 1), 1),
                          **more, **tally})
    return row


def _processes(url: str, handles: list[str], runs: int, seconds: float,
               bare: BarePG) -> dict[str, Any]:
    """8 processes, each with its own connection calling `service.buy`: purchases/s and the
    ratio to bare commits, interleaved the same way."""
    share = seconds / SLICES
    spawn = mp.get_context("spawn")
    start = spawn.Barrier(CLIENTS + 1)
    results = spawn.Queue()
    clients = [spawn.Process(target=_client, args=(url, i, handles, runs * SLICES, share,
                                                   start, results), daemon=True)
               for i in range(CLIENTS)]
    for p in clients:
        p.start()
    tally = {"bought": 0, "refused": 0}

    def measure(_seconds: float) -> tuple[int, float]:
        start.wait(timeout=120)
        got = [results.get(timeout=share + 120) for _ in range(CLIENTS)]
        tally["bought"] += sum(g[2] for g in got)
        tally["refused"] += sum(g[3] for g in got)
        return sum(g[2] for g in got), max(g[5] for g in got) - min(g[4] for g in got)

    try:
        measured, _baseline, ratios = interleaved(runs, SLICES, seconds, measure, bare.commits)
    finally:
        for p in clients:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return {"purchases_per_s": round(measured.median, 1), "ratio": round(ratios.median, 3),
            **tally}


def _skipped(row: Row, why: str) -> Row:
    row.status = "skipped"
    row.notes.append(f"PostgreSQL unavailable: {why}")
    return row


ROWS = {"purchase-sqlite": sqlite_one, "purchase-pg": pg_one, "purchase-pg-8": pg_eight}
