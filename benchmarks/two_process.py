"""Issue 19: the shop on two processes — two `storefront run` on one PostgreSQL and Redis, in
webhook mode, behind a loopback round-robin proxy, driven like Telegram drives it.

`Cluster(n)` starts the loopback Bot API stand-in (tests/standins/telegram_api.py), `n`
`storefront run` processes (each its own HTTP port, all with the proxy's address as their
webhook URL), and `Proxy`, a small Starlette app that hands each POST to the next process in
turn. `drive(cluster, users, rounds)` then plays the updates, each user's in order, the users
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
import contextlib
import itertools
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ROOT, Context, Row, Stats

TOKEN = "919:TWO-PROCESS"
SECRET = "two-process-secret"
PRICE = 2_000  # fen: TEA
RICE = 500  # fen: a points product, bought at setup so every user has points to give


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the proxy ------------------------------------------------------------------------------

class Proxy:
    """A round-robin HTTP proxy on loopback: each request to the next backend in turn."""

    def __init__(self, backends: list[int]) -> None:
        import httpx
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.backends = backends
        self.sent: Counter[int] = Counter()
        turn = itertools.count()
        client: list[httpx.AsyncClient] = []

        async def forward(request: Request) -> Response:
            if not client:
                client.append(httpx.AsyncClient(timeout=30, limits=httpx.Limits(
                    max_connections=256, max_keepalive_connections=64)))
            port = self.backends[next(turn) % len(self.backends)]
            self.sent[port] += 1
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() in ("content-type", "x-telegram-bot-api-secret-token")}
            try:
                r = await client[0].request(request.method,
                                            f"http://127.0.0.1:{port}{request.url.path}",
                                            content=await request.body(), headers=headers)
            except httpx.HTTPError:
                return Response(status_code=502)
            return Response(r.content, status_code=r.status_code,
                            media_type=r.headers.get("content-type"))

        self.app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
        self.port = free_port()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> Proxy:
        import uvicorn

        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                log_config=None, access_log=False, lifespan="off", http="h11",
                                ws="none", loop="asyncio", timeout_keep_alive=60)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the proxy did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


# -- the processes --------------------------------------------------------------------------

RUN = "import sys; from bot.cli import main; sys.exit(main(sys.argv[1:]))"


class Service:
    """One `storefront run` process (webhook mode) on `url`, its HTTP server on `port`."""

    def __init__(self, url: str, redis_url: str, api_url: str, proxy_port: int, where: Path,
                 operator: int, port: int) -> None:
        self.url, self.port, self.where = url, port, where
        where.mkdir(parents=True, exist_ok=True)
        self.log = where / "service.log"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("TELEGRAM_", "WECHAT_", "STOREFRONT_", "DATABASE_",
                                         "REDIS_"))}
        self.env.update({
            "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": api_url,
            "TELEGRAM_PAYMENT_PROVIDER_TOKEN": "provider-test",
            "TELEGRAM_WEBHOOK_URL": f"http://127.0.0.1:{proxy_port}/telegram",
            "TELEGRAM_WEBHOOK_SECRET": SECRET, "REDIS_URL": redis_url,
            "STOREFRONT_DEMO_CATALOGUE": "false", "STOREFRONT_HTTP_PORT": str(self.port),
            "STOREFRONT_CHARGE_SPOOL": str(where / "unrecorded_charges.jsonl"),
            "STOREFRONT_OPERATORS": f"tg:{operator}", "STOREFRONT_LOG_FILE": "-",
            "STOREFRONT_LOG_LEVEL": "WARNING", "DATABASE_URL": url, "PYTHONPATH": str(ROOT)})
        self.proc: subprocess.Popen[bytes] | None = None
        self.terminated = False  # a second SIGTERM would cut the graceful stop short

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", RUN, "run", "--db", self.url],
                                         cwd=self.where, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_up(self, deadline: float) -> None:
        import httpx

        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"storefront run exited ({self.proc.returncode})\n"
                                   + self.tail())
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz",
                             timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("storefront run did not come up\n" + self.tail())
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None and not self.terminated:
            self.proc.terminate()
            self.terminated = True
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            return self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


# -- the shop -------------------------------------------------------------------------------

def prepare(url: str, chats: list[int], operator: int, *, migrated: bool = False) -> None:
    """Migrate (unless `migrated`); TEA (queue and points, 15 days) and RICE (points, no
    lock); every user known (English) with points from one RICE bought 40 days ago and a
    queue entry (5 TEA: 100.00, the least that makes one) that has matured since, for the
    operator's release in the middle to pay (after their `/deposit` of what they owe)."""
    from datetime import UTC, datetime, timedelta

    from engine import service, users
    from storage.db import Database
    from storage.migrate import migrate

    db = Database(url)
    try:
        if not migrated:
            migrate(db)
        service.upsert_product(db, sku="TEA", price="20.00", margin="0.30", lock_days=15,
                               scheme="both", name="Tea", actor="bench")
        service.upsert_product(db, sku="RICE", price="5.00", margin="0.30", lock_days=0,
                               scheme="points", name="Rice", actor="bench")
        then = datetime.now(UTC) - timedelta(days=40)
        users.resolve(db, f"tg:{operator}", lang="en")
        for chat in chats:
            users.resolve(db, f"tg:{chat}", lang="en")
            handle = f"tg:{chat}"
            service.buy(db, user=handle, sku="RICE", qty=1, at=then, key=f"setup:rice:{chat}")
            service.buy(db, user=handle, sku="TEA", qty=5, at=then, key=f"setup:tea:{chat}")
    finally:
        db.dispose()


@dataclass
class Cluster:
    """The stand-in, `processes` services on one database and Redis, and the proxy."""

    url: str
    redis_url: str
    processes: int
    where: Path
    operator: int
    api: Any = None
    proxy: Proxy | None = None
    services: list[Service] = field(default_factory=list)

    @contextmanager
    def running(self, meanwhile: Callable[[], object] = lambda: None) -> Iterator[Cluster]:
        """The stand-in, proxy and processes up; `meanwhile` runs while the processes start."""
        from tests.standins.telegram_api import FakeBotAPI

        with ExitStack() as stack:
            self.api = stack.enter_context(FakeBotAPI(token=TOKEN))
            ports = [free_port() for _ in range(self.processes)]
            self.proxy = Proxy(ports).start()
            stack.callback(self.proxy.stop)
            self.services = []
            for i, port in enumerate(ports):
                svc = Service(self.url, self.redis_url, self.api.base_url, self.proxy.port,
                              self.where / f"p{i}", self.operator, port)
                self.services.append(svc)
            stack.callback(self.stop)
            for svc in self.services:
                svc.start()
            meanwhile()
            deadline = time.monotonic() + 120
            for svc in self.services:
                svc.wait_up(deadline)
            yield self

    def stop(self) -> None:
        """SIGTERM to every process at once, then wait for each (a graceful stop each)."""
        for svc in self.services:
            if svc.proc is not None and svc.proc.poll() is None and not svc.terminated:
                svc.proc.terminate()
                svc.terminated = True
        for svc in self.services:
            svc.stop()

    def tails(self) -> str:
        return "\n".join(f"--- process {i}\n{s.tail()}" for i, s in enumerate(self.services))


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


def run_on(url: str, redis_url: str, processes: int, plan: Plan, where: Path
           ) -> dict[str, Any]:
    """The shop made on `url` (an empty database), `processes` services started, the plan
    played and checked (`problems` lists what was not exactly once); the figures."""
    from storage.db import Database
    from storage.migrate import migrate

    db = Database(url)
    migrate(db)
    db.dispose()
    started = time.monotonic()
    cluster = Cluster(url, redis_url, processes, where, plan.operator)
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
