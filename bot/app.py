"""`storefront run`: one process serving every configured channel.

Load the settings, open and migrate the database, seed a small demo catalogue on an empty
database (unless STOREFRONT_DEMO_CATALOGUE=false), then start each channel whose credentials
are set — Telegram, the HTTP server (WeChat, WeChat Pay, Telegram's webhook, /healthz) and
the scheduler (releases, notifications). With no channel configured it runs the console chat.

Each channel starts through a hook below that imports its module lazily and does nothing
when the module is missing, so the shop runs with whichever adapters are installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.logs import setup_logging
from bot.settings import Settings
from engine import service
from engine.database import Database, is_fresh
from engine.limits import RateLimiter
from handlers.base import App

log = logging.getLogger("storefront")

# Unpaid orders whose checkout expired are cancelled this often (the scheduler's job).
CHECKOUT_SWEEP_SECONDS = 60.0

# A small catalogue so a newcomer's shop has something to sell: one product per scheme.
DEMO_CATALOGUE = (
    {"sku": "TEA", "name": "Green tea 绿茶", "price": "100.00", "margin": "0.30",
     "lock_days": 15, "scheme": "queue"},
    {"sku": "RICE", "name": "Rice 5kg 大米", "price": "50.00", "margin": "0.40",
     "lock_days": 0, "scheme": "points"},
    {"sku": "SOFA", "name": "Sofa 沙发", "price": "1000.00", "margin": "0.35",
     "lock_days": 30, "scheme": "both"},
    {"sku": "PEN", "name": "Pen 钢笔", "price": "5.00", "margin": "0.10",
     "lock_days": 0, "scheme": "none"},
)


def seed_demo_catalogue(db: Database) -> bool:
    """Add the demo products when the database is empty (no products, empty journal)."""
    if not is_fresh(db):
        return False
    for product in DEMO_CATALOGUE:
        service.upsert_product(db, actor="demo", **product)  # type: ignore[arg-type]
    log.info("seeded the demo catalogue (%d products)", len(DEMO_CATALOGUE))
    return True


def make_app(settings: Settings, db: Database, *, console: bool = False) -> App:
    operators = settings.operator_ids()
    if console:
        from bot.console import CONSOLE_ADMIN

        operators = operators | {CONSOLE_ADMIN}
    return App(db=db, operators=frozenset(operators), currency=settings.store_currency,
               console_payments=console,
               # the console is one local person: no rate limit; chats share Redis buckets
               limiter=RateLimiter.disabled() if console else RateLimiter(settings.redis_url))


# -- channel hooks ----------------------------------------------------------------------------

@dataclass
class Running:
    """A started channel and how to stop it."""

    name: str
    handle: Any
    stop: Callable[[], Awaitable[Any] | Any]


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        log.info("%s is not installed; skipping it", module)
        return None


async def start_telegram(settings: Settings, app: App) -> Running | None:
    """The Telegram bot (`bot.telegram.start_telegram`), when TELEGRAM_BOT_TOKEN is set."""
    if not settings.telegram_enabled:
        return None
    module = _optional("bot.telegram")
    if module is None:
        return None
    application = await module.start_telegram(settings, app)
    return Running("telegram", application, lambda: module.stop_telegram(application))


async def start_http(settings: Settings, app: App,
                     telegram: Running | None = None) -> Running | None:
    """The HTTP server (`bot.http.start_http`): WeChat, WeChat Pay, Telegram's webhook and
    /healthz; started whenever a chat channel is configured."""
    if not (settings.wechat_enabled or settings.telegram_enabled):
        return None
    module = _optional("bot.http")
    if module is None:
        return None
    webhook = telegram.handle if telegram is not None and settings.telegram_webhook_url else None
    server = await module.start_http(settings, app, webhook)
    return Running("http", server, server.stop)


async def start_scheduler(settings: Settings, app: App, telegram: Running | None = None,
                          http: Running | None = None) -> Running | None:
    """The scheduler (`scheduler/`): releases at STOREFRONT_RELEASE_TIMES, delivery of the
    outbox through the channels' senders (the running bot's and WeChat client's own), and the
    sweep of expired checkouts."""
    module = _optional("scheduler")
    if module is None:
        return None
    bot = getattr(telegram.handle, "bot", None) if telegram is not None else None
    # the WeChat adapter's own sender knows each user's 48-hour customer-service window
    wechat = getattr(getattr(http.handle, "wechat", None), "sender", None) if http else None
    from bot.senders import senders_from_settings
    from handlers.notify import buttons, render

    senders = senders_from_settings(settings, telegram_bot=bot, wechat_sender=wechat)
    chores = getattr(http.handle, "chores", []) if http is not None else []
    sched = module.build_scheduler(settings, app.db, senders, renderer=render, buttons=buttons,
                                   checkout_sweep=CHECKOUT_SWEEP_SECONDS, chores=chores)
    sched.start()
    return Running("scheduler", sched, sched.stop)


def _console_scheduler(settings: Settings, db: Database) -> Any:
    """The in-process scheduler for the console: releases at their times, and every user's
    notifications printed into the console chat, marked with whom they are for
    (`bot.console.console_senders`)."""
    module = _optional("scheduler")
    if module is None or not hasattr(module, "build_scheduler"):
        return None
    from bot.console import console_senders
    from handlers.notify import render

    sched = module.build_scheduler(settings, db, console_senders(), renderer=render)
    sched.start()
    return sched


async def _stop(running: list[Running]) -> None:
    for item in reversed(running):
        try:
            result = item.stop()
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                await result
        except Exception:  # noqa: BLE001 - stop the rest whatever one of them does
            log.exception("stopping %s failed", item.name)


async def serve(settings: Settings, db: Database) -> int:
    channels = settings.telegram_enabled or settings.wechat_enabled
    if not channels:
        from bot.console import run_console

        log.info("no chat channel is configured: running the console chat")
        sched = _console_scheduler(settings, db)
        try:
            await run_console(make_app(settings, db, console=True))
        finally:
            if sched is not None:
                await sched.stop()
        return 0
    app = make_app(settings, db)
    running: list[Running] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        telegram = await start_telegram(settings, app)
        running += [telegram] if telegram else []
        http = await start_http(settings, app, telegram)
        running += [http] if http else []
        sched = await start_scheduler(settings, app, telegram, http)
        running += [sched] if sched else []
        if not running:
            log.error("channels are configured but none of their modules could start")
            return 1
        log.info("storefront running: %s", ", ".join(r.name for r in running))
        await stop.wait()
        return 0
    finally:
        await _stop(running)


def say_where_logs_go(where: str, settings: Settings) -> None:
    """One line on the terminal, before anything else, so nobody has to guess."""
    if where != "stderr":
        print(f"storefront: logs ({settings.log_level}) go to {where}; "
              f"STOREFRONT_LOG_FILE=- shows them here", file=sys.stderr)


def main(db_url: str | None = None) -> int:
    from bot import settings as settings_module
    from bot.cli import open_db

    settings = settings_module.load()
    say_where_logs_go(setup_logging(settings), settings)
    db = open_db(db_url or settings.database_url)
    if settings.demo_catalogue:
        seed_demo_catalogue(db)
    # Many buyers at once share durable commits (engine/batch.py, docs/perf.md).
    service.start_group_commit(db)
    try:
        return asyncio.run(serve(settings, db))
    except KeyboardInterrupt:
        return 0
    finally:
        service.stop_group_commit(db)
        db.dispose()
