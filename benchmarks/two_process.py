"""Issue 19: the shop on two processes — two `storefront run` on one PostgreSQL and Redis, in
webhook mode, behind a loopback round-robin proxy, driven like Telegram drives it.

`Cluster(n)` (benchmarks/cluster.py) starts the loopback Bot API stand-in
(tests/standins/telegram_api.py), `n` `storefront run` processes (each its own HTTP port, all
with the proxy's address as their webhook URL), and `Proxy`, a small Starlette app that hands
each POST to the next process in turn. `drive(cluster, users, rounds)` then plays the updates, each user's in order, the users
at once: per round `/me`, `/buy TEA` (the bot answers with an invoice), the pre-checkout
query for that invoice, its `successful_payment`, and `/transfer` of a point to the next user
— and halfway through, the operator's `/deposit` and `/release`. Each step waits for the bot's
reaction in the stand-in before the user's next update (as a person would), so the processes
see one user's updates in order even when they land on different processes.

`check(…)` then counts every effect: each update stored once and done, each reply sent once
(one `/me` answer, invoice, pre-checkout answer, receipt and transfer note per request), each
checkout, payment and transfer recorded once in the journal, one release by the operator, and
`verify` clean. The bench row is updates/s on two processes against one (same workload, same
run); tests/test_two_process.py runs a smaller version in the suite.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster import PRICE, SECRET, Cluster, prepare
from .common import Context, Row, Stats

# -- the driver -----------------------------------------------------------------------------

class Watch:
    """Follows the stand-in's calls: per chat, the calls made to it, in order."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.seen = 0
        self.by_chat: dict[Any, list[Any]] = defaultdict(list)
        self.by_query: dict[str, list[Any]] = defaultdict(list)

    def scan(self) -> None:
        calls = self.api.calls
        while self.seen < len(calls):
            c = calls[self.seen]
            self.seen += 1
            if c.method == "answerPreCheckoutQuery":
                self.by_query[str(c.params.get("pre_checkout_query_id"))].append(c)
            elif c.chat_id is not None:
                self.by_chat[int(c.chat_id)].append(c)

    async def wait(self, chat: int, since: int, ok: Any, timeout: float = 60.0) -> tuple[Any, int]:
        """The first call to `chat` at or after index `since` that `ok` accepts, and the index
        after it."""
        deadline = time.monotonic() + timeout
        while True:
            self.scan()
            calls = self.by_chat[chat]
            for i in range(since, len(calls)):
                if ok(calls[i]):
                    return calls[i], i + 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"chat {chat}: no reply after call {since}; seen "
                                   f"{[(c.method, c.text) for c in calls[-5:]]}")
            await asyncio.sleep(0.025)

    async def answered(self, query: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.scan()
            if self.by_query.get(query):
                return self.by_query[query][0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"pre-checkout query {query} not answered")
            await asyncio.sleep(0.025)


def _text(prefix: str) -> Any:
    return lambda c: c.method == "sendMessage" and (c.text or "").startswith(prefix)


@dataclass
class Plan:
    users: int
    rounds: int
    seed: int = 19
    chats: list[int] = field(default_factory=list)
    operator: int = 0

    def __post_init__(self) -> None:
        rng = random.Random(f"{self.seed}:{time.time_ns()}")  # fresh ids: fresh rate buckets
        base = rng.randrange(10**9, 2 * 10**9)
        self.chats = [base + i for i in range(self.users)]
        self.operator = base - 1

    @property
    def updates(self) -> int:
        return self.users * self.rounds * 5 + 2


async def drive(cluster: Cluster, plan: Plan) -> dict[str, Any]:
    """Play the plan through the proxy; the figures (updates, seconds) when all is answered."""
    import httpx

    from tests.standins.telegram_api import (
        make_pre_checkout_update,
        make_successful_payment_update,
        make_text_update,
    )

    assert cluster.proxy is not None
    watch = Watch(cluster.api)
    ids = itertools.count(1)
    url = f"http://127.0.0.1:{cluster.proxy.port}/telegram"
    posted = 0
    half = asyncio.Event()
    total_user_steps = plan.users * plan.rounds

    resent = [0]
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
        async def post(update: dict[str, Any]) -> None:
            nonlocal posted
            for _ in range(20):  # Telegram sends again until it is answered 200
                try:
                    r = await http.post(url, json=update,
                                        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
                    if r.status_code == 200:
                        posted += 1
                        return
                except httpx.TransportError:  # (a kept-alive connection closed under us)
                    resent[0] += 1
                await asyncio.sleep(0.2)
            raise RuntimeError(f"update {update['update_id']} never answered 200")

        def text(chat: int, words: str) -> dict[str, Any]:
            n = next(ids)
            return make_text_update(chat, words, update_id=n, message_id=n)

        rounds_done = 0

        async def user(k: int) -> None:
            nonlocal rounds_done
            chat = plan.chats[k]
            peer = plan.chats[(k + 1) % plan.users]
            at = 0
            for r in range(plan.rounds):
                await post(text(chat, "/me"))
                _, at = await watch.wait(chat, at, _text("Account "))
                await post(text(chat, "/buy TEA"))
                inv, at = await watch.wait(chat, at, lambda c: c.method == "sendInvoice")
                payload = str(inv.params["payload"])
                query = f"q{chat}-{r}"
                await post(make_pre_checkout_update(chat, payload, PRICE, query_id=query,
                                                    update_id=next(ids)))
                answer = await watch.answered(query)
                assert answer.params.get("ok") in (True, "true", "True"), answer.params
                n = next(ids)
                await post(make_successful_payment_update(chat, payload, PRICE, f"ch{chat}-{r}",
                                                          update_id=n, message_id=n))
                _, at = await watch.wait(chat, at, _text("Paid: order"))
                await post(text(chat, f"/transfer tg:{peer} 1"))
                _, at = await watch.wait(chat, at, _text("Sent "))
                rounds_done += 1
                if rounds_done * 2 >= total_user_steps:
                    half.set()

        async def operator() -> None:
            await half.wait()
            chat = plan.operator
            await post(text(chat, f"/deposit queue {plan.users * 100}"))
            _, at = await watch.wait(chat, 0, lambda c: c.method == "sendMessage")
            await post(text(chat, "/release"))
            await watch.wait(chat, at, lambda c: c.method == "sendMessage")

        started = time.monotonic()
        await asyncio.gather(operator(), *(user(k) for k in range(plan.users)))
        seconds = time.monotonic() - started
    return {"updates": posted, "seconds": seconds, "updates_per_s": posted / seconds,
            "per_process": dict(cluster.proxy.sent), "resent_after_transport_error":
            resent[0]}


# -- the checks -----------------------------------------------------------------------------

def check(cluster: Cluster, plan: Plan, *, settle: float = 30.0) -> dict[str, Any]:
    """Every effect exactly once, and `verify` clean. Returns the counts; raises on a miss."""
    from sqlalchemy import func, select

    from engine.verify import verify
    from storage.db import Database
    from storage.models import Checkout, Entry, InboxUpdate, JournalTxn

    db = Database(cluster.url)
    try:
        deadline = time.monotonic() + settle
        def released() -> list[Any]:
            return list(db.read(lambda s: s.execute(select(JournalTxn.body).where(
                JournalTxn.kind == "release_run", JournalTxn.actor == f"tg:{plan.operator}")
            ).scalars().all()))

        while True:  # the operator's release answers last: let it end, the inboxes drain
            statuses = dict(db.read(lambda s: s.execute(
                select(InboxUpdate.status, func.count()).group_by(InboxUpdate.status)).all()))
            runs = released()
            if (statuses.get("pending", 0) == 0 and runs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        kinds = dict(db.read(lambda s: s.execute(
            select(JournalTxn.kind, func.count()).group_by(JournalTxn.kind)).all()))
        charges = db.read(lambda s: s.execute(select(JournalTxn.key).where(
            JournalTxn.key.like("telegram:charge:%"))).scalars().all())
        releases = len(runs)
        checkouts = dict(db.read(lambda s: s.execute(
            select(Checkout.status, func.count()).group_by(Checkout.status)).all()))
        entries = dict(db.read(lambda s: s.execute(
            select(Entry.status, func.count()).group_by(Entry.status)).all()))
        report = verify(db)
    finally:
        db.dispose()
    watch = Watch(cluster.api)
    watch.scan()
    per = plan.rounds
    replies = {"me": _text("Account "), "invoice": lambda c: c.method == "sendInvoice",
               "receipt": _text("Paid: order"), "transfer": _text("Sent ")}
    wrong: list[str] = []
    for chat in plan.chats:
        calls = watch.by_chat[chat]
        for name, ok in replies.items():
            got = sum(1 for c in calls if ok(c))
            if got != per:
                wrong.append(f"chat {chat}: {got} {name} replies, not {per}")
    doubled_answers = [q for q, calls in watch.by_query.items() if len(calls) != 1]
    n = plan.users * plan.rounds
    facts = {"inbox": statuses, "journal_kinds": kinds, "charges": len(charges),
             "distinct_charges": len(set(charges)), "checkouts": checkouts,
             "operator_releases": releases, "release_run": runs[:1], "entries": entries,
             "verify_ok": report.ok,
             "precheckout_answers": len(watch.by_query), "wrong_replies": wrong[:20],
             "wrong_reply_count": len(wrong), "doubled_precheckout_answers": len(doubled_answers)}
    problems = []
    if statuses.get("pending", 0) or set(statuses) - {"done"}:
        problems.append(f"inbox rows not all done: {statuses}")
    if sum(statuses.values()) != plan.updates:
        problems.append(f"{sum(statuses.values())} inbox rows for {plan.updates} updates")
    if len(charges) != n or len(set(charges)) != n:
        problems.append(f"{len(charges)} charges recorded ({len(set(charges))} distinct), "
                        f"{n} paid")
    if checkouts != {"paid": n}:
        problems.append(f"checkouts {checkouts}, {n} paid expected")
    if kinds.get("transfer", 0) != n:
        problems.append(f"{kinds.get('transfer', 0)} transfers recorded, {n} asked")
    if releases != 1:
        problems.append(f"{releases} releases by the operator, 1 asked")
    if wrong or doubled_answers or len(watch.by_query) != n:
        problems.append(f"replies not exactly once: {wrong[:5]} {doubled_answers[:5]}")
    if not report.ok:
        problems.append(f"verify: {list(report.lines())[:5]}")
    facts["problems"] = problems
    return facts


@contextmanager
def pg_and_redis() -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL schema and this machine's Redis."""
    from .bare import pg_schema

    redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    with pg_schema() as url:
        yield url, redis_url


def run_once(processes: int, plan: Plan, where: Path) -> dict[str, Any]:
    """A fresh schema of this machine's PostgreSQL, then `run_on` it."""
    with pg_and_redis() as (url, redis_url):
        return run_on(url, redis_url, processes, plan, where)


def run_on(url: str, redis_url: str, processes: int, plan: Plan, where: Path,
           zygote: Any = None) -> dict[str, Any]:
    """The shop made on `url` (an empty database), `processes` services started (forked from
    `zygote`, tests/storefront_zygote.py, when given), the plan played and checked
    (`problems` lists what was not exactly once); the figures."""
    from storage.db import Database
    from storage.migrate import migrate

    db = Database(url)
    migrate(db)
    db.dispose()
    started = time.monotonic()
    cluster = Cluster(url, redis_url, processes, where, plan.operator, zygote)
    with cluster.running(lambda: prepare(url, plan.chats, plan.operator, migrated=True)):
        up = time.monotonic() - started
        try:
            figures = asyncio.run(drive(cluster, plan))
        except BaseException as exc:
            raise RuntimeError(f"{type(exc).__name__}: {exc}\n{cluster.tails()}") from exc
        figures.update(check(cluster, plan))
        figures["processes"] = processes
        figures["start_seconds"] = round(up, 1)
        figures["planned_updates"] = plan.updates
    figures["exit_status"] = [s.proc.returncode if s.proc else None for s in cluster.services]
    return figures


# -- the bench row --------------------------------------------------------------------------

def two_processes(ctx: Context) -> Row:
    """5,000 mixed updates on two processes, then the same workload on one (fresh shops)."""
    from .bare import pg_available

    row = Row("two-process", "updates/s, two `storefront run` (webhook, one PostgreSQL + "
              "Redis, round-robin proxy), 5,000 mixed updates (100 users × 10 rounds)", "updates/s", (">=", 1),
              baseline_what="the same workload on one process behind the same proxy")
    why = pg_available()
    if why:
        row.status = "skipped"
        row.notes.append(f"PostgreSQL unavailable: {why}")
        return row
    users, rounds = (20, 1) if ctx.quick else (100, 10)
    if ctx.quick:
        row.title = row.title.replace("5,000 mixed updates (100 users × 10 rounds)",
                                      f"{users * rounds * 5 + 2} mixed updates (--quick)")
    two = run_once(2, Plan(users, rounds), ctx.scratch("two-process") / "two")
    one = run_once(1, Plan(users, rounds, seed=20), ctx.scratch("two-process") / "one")
    row.measured = Stats([two["updates_per_s"]])
    row.baseline = Stats([one["updates_per_s"]])
    row.ratios = Stats([two["updates_per_s"] / one["updates_per_s"]])
    row.extra_checks += [("effects not exactly once, 2 processes", len(two["problems"]), "<=", 0),
                         ("effects not exactly once, 1 process", len(one["problems"]), "<=", 0)]
    keep = ("updates", "seconds", "per_process", "inbox", "charges", "checkouts",
            "journal_kinds", "operator_releases", "release_run", "entries", "verify_ok",
            "problems", "start_seconds", "exit_status")
    row.facts = {"two": {k: two.get(k) for k in keep}, "one": {k: one.get(k) for k in keep},
                 "users": users, "rounds": rounds,
                 "per_round": "/me, /buy TEA, pre-checkout, successful_payment, /transfer; "
                              "the operator's /deposit and /release halfway"}
    return row


ROWS = {"two-process": two_processes}
