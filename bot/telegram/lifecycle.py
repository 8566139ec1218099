"""Starting and stopping the bot: learn who we are, publish the command menus, then poll or
take updates by webhook; and the bot's periodic job (`chores`: the charge spool's replay),
which the scheduler runs."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Sequence
from datetime import timedelta

from telegram import Bot, BotCommand, BotCommandScopeChat
from telegram.error import TelegramError
from telegram.ext import Application

from bot import charge_spool
from bot.settings import Settings
from handlers.base import App
from scheduler import Chore

from .application import (
    ALLOWED_UPDATES,
    MAX_CONCURRENT_UPDATES,
    adapter_of,
    build_application,
    file_url_for,
)
from .claims import UserClaims
from .conversations import Conversations, MenuCommand
from .inbox import PRUNE_EVERY, InboxProcessor, spool_notices
from .inbox import poll as inbox_poll

log = logging.getLogger(__name__)

MENU_LANGUAGES: tuple[str | None, ...] = (None, "zh")  # None: everyone else, in English
WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")  # what Telegram accepts


def _menu(commands: Sequence[MenuCommand], lang: str, *, operator: bool) -> list[BotCommand]:
    chosen = [c for c in commands if operator or not c.operator]
    out = []
    for c in chosen:
        names = c.telegram_names()
        if names:
            out.append(BotCommand(names[0], c.description(lang)))
    return out[:100]


def telegram_operator_chats(operators: frozenset[str]) -> list[int]:
    chats = []
    for identity in sorted(operators):
        prefix, _, number = identity.partition(":")
        if prefix == "tg" and re.fullmatch(r"-?\d{1,20}", number):
            chats.append(int(number))
    return chats


async def publish_commands(bot: Bot, commands: Sequence[MenuCommand],
                           operators: frozenset[str]) -> None:
    """setMyCommands in English (the default) and Chinese; operators' own chats also list
    the operator commands. A failure is logged: the menu is a convenience, not the shop."""
    for language_code in MENU_LANGUAGES:
        lang = language_code or "en"
        calls: list[tuple[BotCommandScopeChat | None, list[BotCommand]]] = [
            (None, _menu(commands, lang, operator=False))]
        calls += [(BotCommandScopeChat(chat), _menu(commands, lang, operator=True))
                  for chat in telegram_operator_chats(operators)]
        for scope, menu in calls:
            try:
                await bot.set_my_commands(menu, scope=scope, language_code=language_code)
            except TelegramError as exc:
                log.warning("setMyCommands (%s, %s) failed: %s", lang,
                            "operator chat" if scope else "everyone", exc.message)


def _webhook_secret(settings: Settings) -> str:
    secret = settings.telegram_webhook_secret
    value = secret.get_secret_value() if secret is not None else ""
    if not WEBHOOK_SECRET.fullmatch(value):
        raise ValueError("TELEGRAM_WEBHOOK_URL is set, so TELEGRAM_WEBHOOK_SECRET must be "
                         "1-256 characters of A-Z, a-z, 0-9, _ and -")
    return value


async def bot_username(settings: Settings) -> str:
    """The bot's @username (getMe), which invite links need: asked once at start, before
    the shop's `App` is built (bot/app.py)."""
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set")
    base_url = settings.telegram_api_base_url
    bot = Bot(settings.telegram_bot_token.get_secret_value(), base_url=base_url,
              base_file_url=file_url_for(base_url))
    async with bot:
        return bot.username


def _claims(settings: Settings, bot_id: int) -> UserClaims | None:
    """With Redis, processes sharing the database take turns by user (bot/telegram/claims.py)."""
    if not settings.redis_url:
        return None
    return UserClaims(settings.redis_url, prefix=f"storefront:inbox:{bot_id}:")


async def start_telegram(settings: Settings, app: App, *, poll_timeout: float = 10.0,
                         conversations: Conversations | None = None) -> Application:
    """Build, initialise (getMe), publish menus and start taking updates.

    Polling by default; with TELEGRAM_WEBHOOK_URL, setWebhook (with the secret token) and
    let the HTTP server feed `telegram_webhook_route` instead."""
    webhook_url = settings.telegram_webhook_url
    secret = _webhook_secret(settings) if webhook_url else None
    application = build_application(settings, app, conversations=conversations)
    await application.initialize()
    try:
        await publish_commands(application.bot, adapter_of(application).conv.menu,
                               app.operators)
        await application.start()
        adapter = adapter_of(application)
        processor = None
        if app.db is not None:  # the inbox (bot/telegram/inbox.py): durable before acked
            adapter.inbox = True
            processor = InboxProcessor(application, app.db,
                                       concurrency=MAX_CONCURRENT_UPDATES,
                                       on_unrecorded=adapter.spool_payment,
                                       operators=app.operators,
                                       claims=_claims(settings, application.bot.id))
            application.bot_data["inbox"] = processor
            processor.start()  # resumes the rows a previous run left pending
        if webhook_url:
            await application.bot.set_webhook(webhook_url, secret_token=secret,
                                              allowed_updates=ALLOWED_UPDATES)
        elif processor is not None:
            application.bot_data["poll_task"] = asyncio.create_task(inbox_poll(
                application.bot, app.db, processor, timeout=poll_timeout,
                allowed_updates=ALLOWED_UPDATES,
                raw=application.bot_data.get("updates_request")), name="telegram-poll")
        else:  # no database (the adapter's own tests): PTB's stock updater
            assert application.updater is not None
            await application.updater.start_polling(
                poll_interval=0.0, timeout=timedelta(seconds=poll_timeout),
                allowed_updates=ALLOWED_UPDATES)
    except BaseException:
        await stop_telegram(application)
        raise
    log.info("Telegram bot @%s is up (%s)", application.bot.username,
             "webhook" if webhook_url else "polling")
    return application


async def stop_telegram(application: Application) -> None:
    """Stop polling, finish the updates in hand, close connections. Safe to call twice."""
    poll_task = application.bot_data.pop("poll_task", None)
    if poll_task is not None:
        poll_task.cancel()
        await asyncio.gather(poll_task, return_exceptions=True)
    processor = application.bot_data.pop("inbox", None)
    if processor is not None:
        await processor.stop()
    if application.updater is not None and application.updater.running:
        await application.updater.stop()
    if application.running:
        await application.stop()
    await application.shutdown()


def chores(application: Application) -> list[Chore]:
    """The periodic jobs the scheduler runs for this bot (bot/app.py hands it over with the
    HTTP server's): one round of the charge spool (bot/charge_spool.py) every
    `charge_spool.EVERY` seconds, the first at the scheduler's start. Charges the database
    could not record are so replayed until recorded, and every operator is told once that
    one is recorded late, or while it waits. Without the scheduler nothing replays them:
    a test of the bot alone calls `charge_spool.replay` itself."""
    adapter = adapter_of(application)
    app = adapter.app
    told = spool_notices(app.db, app.operators) if app.db is not None else None
    found = [Chore("telegram-charge-spool", charge_spool.EVERY, functools.partial(
        charge_spool.replay, adapter.spool_path, adapter.record_spooled, told))]
    processor = application.bot_data.get("inbox")
    if processor is not None:  # and the inbox's finished rows, pruned every 6 hours
        found.append(Chore("telegram-inbox-prune", PRUNE_EVERY, processor.prune))
    return found
