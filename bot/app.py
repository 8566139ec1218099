"""`storefront run`: one process serving every configured channel.

Load the settings, open and migrate the database, seed a small demo catalogue on an empty
database (unless STOREFRONT_DEMO_CATALOGUE=false), then start each channel whose credentials
are set — Telegram, the HTTP server (WeChat, WeChat Pay, Telegram's webhook, /healthz) and
the scheduler (releases, notifications). With no channel configured it runs the console chat.

Each channel starts through a hook below that imports its module only when the channel is
configured (a console run never pays for python-telegram-bot, uvicorn or APScheduler).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.logs import setup_logging
from bot.settings import Settings
from engine import service
from engine.database import Database, is_fresh
from engine.limits import RateLimiter
from handlers.base import App, Channels

if TYPE_CHECKING:
    from scheduler import Chore

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


def make_app(settings: Settings, db: Database, *, console: bool = False,
             channels: Channels | None = None) -> App:
    """The shop's `App`, built once at start and never changed afterwards."""
    operators = settings.operator_ids()
    if console:
        from bot.console import CONSOLE_ADMIN

        operators = operators | {CONSOLE_ADMIN}
    return App(db=db, operators=frozenset(operators), currency=settings.store_currency,
               # the console is one local person: no rate limit; chats share Redis buckets
               limiter=RateLimiter.disabled() if console else RateLimiter(settings.redis_url),
               channels=channels or Channels(payments=payments_of(settings, console=console)))


def payments_of(settings: Settings, *, console: bool = False) -> frozenset[str]:
    """The channels that collect money for an invoice: Telegram with a payment provider
    token, WeChat with every WeChat Pay setting (and the store in CNY, WeChat Pay's only
    currency), the console's simulated payments."""
    wechat_pay = (settings.wechat_enabled and settings.wechat_pay_configured
                  and settings.store_currency == "CNY")
    telegram = settings.telegram_enabled and settings.telegram_payment_provider_token is not None
    return frozenset(name for name, on in (("telegram", telegram), ("wechat", wechat_pay),
                                           ("console", console)) if on)


async def open_channels(settings: Settings) -> tuple[Channels, Any]:
    """What the configured channels can do, asked once before anything starts: payments,
    the Telegram bot's username (getMe) and WeChat's invite QR maker on the shop's one
    WeChat client (returned too, for the HTTP server: two clients would invalidate each
    other's access token)."""
    username = wechat_client = invite_qr = None
    if settings.telegram_enabled:
        from bot.telegram import bot_username

        username = await bot_username(settings)
    if settings.wechat_enabled:
        from bot.wechat import client_from_settings
        from bot.wechat.invite import invite_qr as make_invite_qr

        wechat_client = client_from_settings(settings)
        invite_qr = functools.partial(make_invite_qr, wechat_client)
    from bot.web import login_link_maker

    return Channels(payments=payments_of(settings), bot_username=username,
                    invite_qr=invite_qr, web_login=login_link_maker(settings),
                    web_app=f"{settings.public_url.rstrip('/')}/app" if settings.public_url
                    else None), wechat_client


# -- channel hooks ----------------------------------------------------------------------------

@dataclass
class Running:
    """A started channel, how to stop it, and the periodic jobs it hands the scheduler."""

    name: str
    handle: Any
    stop: Callable[[], Awaitable[Any] | Any]
    chores: Sequence[Chore] = ()


async def start_telegram(settings: Settings, app: App) -> Running | None:
    """The Telegram bot (`bot.telegram.start_telegram`), when TELEGRAM_BOT_TOKEN is set."""
    if not settings.telegram_enabled:
        return None
    from bot import telegram
    from bot.telegram.lifecycle import chores

    application = await telegram.start_telegram(settings, app)
    # the charge spool's replay (bot/charge_spool.py) runs as the scheduler's job
    return Running("telegram", application, lambda: telegram.stop_telegram(application),
                   chores=chores(application))


async def start_http(settings: Settings, app: App, telegram: Running | None = None,
                     wechat_client: Any = None) -> Running | None:
    """The HTTP server (`bot.http.start_http`): WeChat, WeChat Pay, Telegram's webhook and
    /healthz; started whenever a chat channel is configured."""
    if not (settings.wechat_enabled or settings.telegram_enabled):
        return None
    from bot import http

    webhook = telegram.handle if telegram is not None and settings.telegram_webhook_url else None
    server = await http.start_http(settings, app, webhook, wechat_client=wechat_client)
    return Running("http", server, server.stop, chores=server.chores)


async def start_scheduler(settings: Settings, app: App, telegram: Running | None = None,
                          http: Running | None = None) -> Running:
    """The scheduler (`scheduler/`): releases at STOREFRONT_RELEASE_TIMES, delivery of the
    outbox through the channels' senders (the running bot's and WeChat client's own), the
    sweep of expired checkouts, and the channels' chores (Telegram's charge spool replay,
    WeChat Pay's sweeps, WeChat's pruning)."""
    from bot.senders import senders_from_settings
    from handlers.notify import buttons, render
    from scheduler import build_scheduler

    bot = getattr(telegram.handle, "bot", None) if telegram is not None else None
    # the WeChat adapter's own sender knows each user's 48-hour customer-service window
    wechat = getattr(getattr(http.handle, "wechat", None), "sender", None) if http else None
    senders = senders_from_settings(settings, telegram_bot=bot, wechat_sender=wechat)
    chores = [chore for channel in (telegram, http) if channel is not None
              for chore in channel.chores]
    sched = build_scheduler(settings, app.db, senders, renderer=render, buttons=buttons,
                            checkout_sweep=CHECKOUT_SWEEP_SECONDS, chores=chores)
    sched.start()
    return Running("scheduler", sched, sched.stop)


def _console_scheduler(settings: Settings, db: Database) -> Any:
    """The in-process scheduler for the console: releases at their times, and every user's
    notifications printed into the console chat, marked with whom they are for
    (`bot.console.console_senders`)."""
    from bot.console import console_senders
    from handlers.notify import render
    from scheduler import build_scheduler

    sched = build_scheduler(settings, db, console_senders(), renderer=render)
    sched.start()
    return sched


async def _console_web(settings: Settings, app: App) -> Any:
    """The web pages (bot/web) for the console user, so a newcomer sees the shop in a
    browser on `make run`: loopback only, started beside the console chat (its imports in a
    thread, so the chat does not wait); a port already taken is logged, the chat runs on."""
    if settings.http_host not in ("127.0.0.1", "::1", "localhost"):
        return None
    import importlib

    from bot.console import CONSOLE_ADMIN

    try:
        http = await asyncio.to_thread(importlib.import_module, "bot.http")
        server = await http.start_http(settings, app, console=CONSOLE_ADMIN)
    except (OSError, SystemExit) as exc:  # uvicorn exits when it cannot bind
        log.warning("the web pages are not served: %s", exc)
        return None
    print(f"storefront: the shop in a browser: {server.url}/app · dashboard {server.url}/admin",
          flush=True)
    return server


async def _stop_console_web(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        server = await task
        if server is not None:
            await server.stop()


async def _stop(running: list[Running]) -> None:
    for item in reversed(running):
        try:
            result = item.stop()
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                await result
        except Exception:  # noqa: BLE001 - stop the rest whatever one of them does
            log.exception("stopping %s failed", item.name)


async def serve(settings: Settings, db: Database) -> int:
    if not (settings.telegram_enabled or settings.wechat_enabled):
        from bot.console import run_console

        log.info("no chat channel is configured: running the console chat")
        sched = _console_scheduler(settings, db)
        app = make_app(settings, db, console=True)
        web = asyncio.create_task(_console_web(settings, app))
        try:
            await run_console(app)
        finally:
            await _stop_console_web(web)
            await sched.stop()
        return 0
    channels, wechat_client = await open_channels(settings)
    app = make_app(settings, db, channels=channels)
    running: list[Running] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        telegram = await start_telegram(settings, app)
        running += [telegram] if telegram else []
        http = await start_http(settings, app, telegram, wechat_client)
        running += [http] if http else []
        running.append(await start_scheduler(settings, app, telegram, http))
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
