"""`/me` answered per second through the real python-telegram-bot stack.

The bot is the shop's own: `bot.telegram.start_telegram` builds the PTB Application (per-user
ordered concurrent updates, the adapter, the conversations of `handlers.dispatch`, the engine
on a SQLite file of 2,000 users with their history), and it long-polls the loopback Bot API
stand-in (tests/standins/telegram_api.py). The stand-in runs in a process of its own so that
its HTTP server does not share the bot's interpreter: it queues the updates, then counts the
`sendMessage` answers and times from the first update queued to the last answer received.

As shipped, `build_application` gives the bot PTB's `AIORateLimiter`, which holds every send
to Telegram's flood limit of 30 messages a second — against the real Telegram that, not the
shop, bounds the answers. To measure the shop's own capacity the row lifts that throttle
(the limiter with its overall and group rates at 0, nothing else changed); a short run as
shipped is recorded beside it.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .common import Context, Row, Stats
from .fixtures import Plan, build_history

T = TypeVar("T")

TOKEN = "4242:BENCH-TOKEN"
FIRST_CHAT = 100_000  # fixtures with identities=True name users tg:100000, tg:100001, …
ANSWER_PREFIX = "Account "  # handlers/locales/en.json "me.title"


def _standin(conn: Any) -> None:
    """The stand-in's process: start it, then for each request queue `/me` updates from the
    given chats and report how fast they were all answered."""
    from tests.standins.telegram_api import FakeBotAPI

    api = FakeBotAPI(token=TOKEN).start()
    conn.send(api.port)
    while (job := conn.recv()) is not None:
        chats: list[int] = job
        api.reset()  # forget the last run's calls and any update already handed out
        started, cpu = time.monotonic(), time.process_time()
        for chat in chats:
            api.push_text(chat, "/me", first_name=f"U{chat}", language_code="en")
        want, seen, wrong, i = len(chats), 0, 0, 0
        deadline = started + 120
        while seen < want and time.monotonic() < deadline:
            calls = api.calls
            while i < len(calls):
                c = calls[i]
                if c.method == "sendMessage":
                    if c.ok is None:
                        break  # not answered yet: look again shortly
                    if c.ok:
                        seen += 1
                        if not str(c.params.get("text", "")).startswith(ANSWER_PREFIX):
                            wrong += 1
                i += 1
            time.sleep(0.002)
        conn.send({"answered": seen, "wanted": want, "wrong": wrong,
                   "seconds": time.monotonic() - started,
                   "standin_cpu_s": time.process_time() - cpu})
    api.stop()


@contextmanager
def _lifted_flood_limit(lift: bool) -> Iterator[None]:
    """Build the Application with PTB's AIORateLimiter at overall/group rate 0 (no throttle)."""
    from telegram.ext import AIORateLimiter

    import bot.telegram.application as tga

    class Unthrottled(AIORateLimiter):  # type: ignore[misc]
        def __init__(self, *, max_retries: int = 0, **_ignored: Any) -> None:
            super().__init__(overall_max_rate=0, group_max_rate=0, max_retries=max_retries)

    original = tga.AIORateLimiter
    if lift:
        tga.AIORateLimiter = Unthrottled  # type: ignore[misc]
    try:
        yield
    finally:
        tga.AIORateLimiter = original  # type: ignore[misc]



async def play(conn: Any, batches: list[Any]) -> list[dict[str, Any]]:
    """Hand each batch of chats to the stand-in's process (`conn`) and wait for its figures;
    each result gets `bot_cpu_s`, the CPU this process (all of the bot's threads) spent."""
    results = []
    for chats in batches:
        cpu = time.process_time()
        conn.send(chats)
        result = await asyncio.to_thread(conn.recv)
        result["bot_cpu_s"] = time.process_time() - cpu
        results.append(result)
    return results

async def _drive(db_url: str, port: int, conn: Any, batches: list[list[int]],
                 lift: bool, conversations: Any = None) -> list[dict[str, Any]]:
    from bot.settings import Settings
    from bot.telegram import start_telegram, stop_telegram
    from handlers.base import App
    from storage.db import Database

    db = Database(db_url)
    app = App(db=db, operators=frozenset())
    settings = Settings(_env_file=None, TELEGRAM_BOT_TOKEN=TOKEN,  # type: ignore[call-arg]
                        TELEGRAM_API_BASE_URL=f"http://127.0.0.1:{port}/bot",
                        TELEGRAM_PAYMENT_PROVIDER_TOKEN=None, TELEGRAM_WEBHOOK_URL=None,
                        TELEGRAM_WEBHOOK_SECRET=None)
    with _lifted_flood_limit(lift):
        application = await start_telegram(settings, app, poll_timeout=1,
                                           conversations=conversations)
    try:
        results = await play(conn, batches)
    finally:
        await stop_telegram(application)
        db.dispose()
    return results


def on_standin(drive: Callable[[int, Any], T]) -> T:
    """`drive(port, pipe)` against the stand-in in a process of its own (spawned), which is
    told to stop when `drive` is done."""
    spawn = mp.get_context("spawn")
    here, there = spawn.Pipe()
    standin = spawn.Process(target=_standin, args=(there,), daemon=True)
    standin.start()
    try:
        done = drive(here.recv(), here)
        here.send(None)
        return done
    finally:
        standin.join(timeout=20)
        if standin.is_alive():
            standin.kill()


def me_rate(ctx: Context) -> Row:
    row = Row("telegram-me", "`/me` through the real python-telegram-bot stack against the "
              "loopback Bot API stand-in", "updates/s", (">=", 300))
    users = 300 if ctx.quick else 2_000
    per_run = 100 if ctx.quick else 1_000
    built = build_history(ctx.scratch("telegram-me") / "shop.db",
                          Plan(users=users, orders=users * 10, identities=True, seed=5))
    url = f"sqlite:///{built.path}"
    chats = [FIRST_CHAT + u for u in range(users)]
    runs = ctx.runs(3)
    # each user asks once per run (the per-user limit, 20 per 10 s, is never what stops us)
    batches = [[chats[(r * per_run + k) % users] for k in range(per_run)] for r in range(runs)]
    def drive(port: int, pipe: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        results = asyncio.run(_drive(url, port, pipe, batches, lift=True))
        shipped = None
        if not ctx.quick:
            shipped = asyncio.run(_drive(url, port, pipe, [chats[:150]], lift=False))[0]
        return results, shipped

    results, shipped = on_standin(drive)
    for r in results:
        if r["answered"] < r["wanted"] or r["wrong"]:
            raise RuntimeError(f"/me was not answered properly: {r}")
    row.measured = Stats([r["answered"] / r["seconds"] for r in results])
    cpu_ms = [1000 * r["bot_cpu_s"] / r["answered"] for r in results]
    standin_ms = [1000 * r["standin_cpu_s"] / r["answered"] for r in results]
    row.facts = {"users": users, "updates_per_run": per_run, "flood_limit": "lifted",
                 "bot_cpu_ms_per_update": round(sorted(cpu_ms)[len(cpu_ms) // 2], 2),
                 "standin_cpu_ms_per_update": round(sorted(standin_ms)[len(standin_ms) // 2], 2),
                 "rate_limiter_per_user": "in-process (handlers.registry default)",
                 "db": "SQLite file"}
    if shipped is not None:
        row.facts["as_shipped_updates_per_s"] = round(shipped["answered"] / shipped["seconds"],
                                                      1)
        row.notes.append("as shipped, PTB's AIORateLimiter holds sends to Telegram's 30 "
                         "messages/s; measured with it: "
                         f"{row.facts['as_shipped_updates_per_s']} updates/s")
    return row


ROWS = {"telegram-me": me_rate}
