"""The python-telegram-bot Application: updates in, `Request`s to the conversations, replies out.

Every handler is registered in `TelegramAdapter.register`, in the order PTB tries them:
registry commands, callback buttons, pre-checkout queries, successful payments, then anything
else a user sends (answered with help by the conversations). Shop conversations run in private
chats only. See docs/telegram.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from telegram import Message, Update
from telegram.constants import ChatType
from telegram.error import Forbidden, NetworkError, RetryAfter
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    BaseUpdateProcessor,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    PreCheckoutQueryHandler,
    filters,
)

from bot import charge_spool
from bot.settings import Settings
from handlers.base import App, Progress, Reply, Request

from .conversations import Conversations, invoke
from .files import message_fields
from .output import ChatGone, ChatOutput, JobRunner, call_bot
from .photos import operator_photo
from .redact import redact_in_logs
from .request import AiohttpRequest, UpdatesRequest
from .texts import text as adapter_text

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "callback_query", "pre_checkout_query"]
MAX_CONCURRENT_UPDATES = 16
PRECHECK_BUDGET = 8.0  # seconds; Telegram drops a pre-checkout query unanswered after 10 s
PAYMENT_ATTEMPTS = 3
POOL_SIZE = 256  # connections for the Bot API calls (PTB's default)

PRIVATE = filters.ChatType.PRIVATE & filters.UpdateType.MESSAGE  # new messages only, 1:1 chats


class PerUserOrder(BaseUpdateProcessor):
    """Updates from different users are handled concurrently, those of one user in order.

    A slow request (an operator's release job, a database retry) then delays only its own
    user, and pre-checkout queries, which Telegram wants answered within 10 s, keep flowing."""

    def __init__(self, max_concurrent_updates: int) -> None:
        super().__init__(max_concurrent_updates)
        self._locks: dict[int, asyncio.Lock] = {}
        self._users: dict[int, int] = {}

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        user = update.effective_user if isinstance(update, Update) else None
        if user is None:
            await coroutine
            return
        key = user.id
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                await coroutine
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def file_url_for(base_url: str) -> str:
    """Telegram serves files under `/file/bot<token>/` beside the `/bot<token>/` methods."""
    base = base_url.rstrip("/")
    return base[: -len("/bot")] + "/file/bot" if base.endswith("/bot") else base + "/file/bot"


def request_id(update: Update) -> str:
    """Idempotency key of an inbound update.

    A message is named by its chat and message id, a button press by its query id: both are
    never reused, and stay the same when Telegram delivers an update again. (`update_id` is
    not enough: after a week without updates Telegram restarts it at a random number.)"""
    if update.callback_query is not None:
        return f"tg:cbq:{update.callback_query.id}"
    if update.pre_checkout_query is not None:
        return f"tg:pcq:{update.pre_checkout_query.id}"
    message = update.effective_message
    if message is not None:
        return f"tg:msg:{message.chat.id}:{message.message_id}"
    return f"tg:upd:{update.update_id}"


def _text_of(message: Message | None) -> str:
    return (message.text or "") if message is not None else ""


class TelegramAdapter:
    """Translates between PTB updates and the conversations' `Request`/`Reply`."""

    def __init__(self, app: App, conversations: Conversations, output: ChatOutput,
                 spool_path: Path = charge_spool.DEFAULT_PATH) -> None:
        self.app = app
        self.conv = conversations
        self.output = output
        self.spool_path = spool_path
        # True when updates come through the inbox (bot/telegram/inbox.py): a payment's
        # inbox row is then marked done in the payment's own transaction.
        self.inbox = False
        self._spooled: set[int] = set()  # update ids whose charge this process spooled

    async def record_spooled(self, charge: dict[str, Any]) -> None:
        """Record a charge from the spool (raises while the database is still down)."""
        update_id = charge.get("update_id")
        await invoke(self.conv.paid, self.app, token=charge["token"], amount=charge["amount"],
                     currency=charge["currency"], charge_id=charge["charge_id"],
                     channel="telegram", identity=charge["identity"],
                     **({"inbox_update": update_id}
                        if self.inbox and isinstance(update_id, int) else {}))

    def register(self, application: Application) -> None:
        private = PRIVATE & ~filters.SUCCESSFUL_PAYMENT
        names: set[str] = set()
        for entry in self.conv.menu:
            words = [n for n in entry.telegram_names() if n not in names]
            names.update(words)
            if words:
                application.add_handler(CommandHandler(words, self._command(entry.name),
                                                       filters=private))
        if "start" not in names:  # the deep-link entry point exists whatever the registry says
            names.add("start")
            application.add_handler(CommandHandler("start", self._command("start"),
                                                   filters=private))
        application.add_handler(CallbackQueryHandler(self.on_callback))
        application.add_handler(PreCheckoutQueryHandler(self.on_pre_checkout))
        # Money is recorded wherever it arrives (invoices only go to private chats anyway).
        application.add_handler(MessageHandler(filters.SUCCESSFUL_PAYMENT, self.on_payment))
        application.add_handler(MessageHandler(private, self.on_other))
        application.add_handler(CommandHandler(  # our commands, sent in a group
            sorted(names), self.on_group_command,
            filters=filters.UpdateType.MESSAGE & ~filters.ChatType.PRIVATE))
        application.add_error_handler(self.on_error)

    # ------------------------------------------------------------------ updates → requests

    def _request(self, update: Update, **fields: Any) -> Request:
        user = update.effective_user
        assert user is not None  # every handler registered above has a sender
        return Request(channel="telegram", identity=f"tg:{user.id}",
                       request_id=request_id(update), lang=user.language_code,
                       display_name=user.full_name, **fields)

    def _command(self, name: str) -> Callable[[Update, ContextTypes.DEFAULT_TYPE],
                                              Coroutine[Any, Any, None]]:
        async def on_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            args = tuple(context.args or ())
            message = update.effective_message
            replied = message.reply_to_message if message is not None else None
            upload = await operator_photo(self.app, update, replied) if name == "photo" else None
            request = self._request(
                update, command=name, args=args, text=_text_of(message),
                start_payload=args[0] if name == "start" and args else None, upload=upload)
            await self._converse(update, request)

        on_command.__name__ = f"on_{name}"
        return on_command

    async def on_other(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Free text, unknown commands, stickers, files…: the conversations answer with help.
        An operator's photo is the catalogue's: with a `/product …` or `/photo SKU` caption
        that command, else `/photo` (the product they named last, docs/catalogue.md); an
        operator's small file comes with its caption (`/codes SKU`, docs/digital.md)."""
        message = update.effective_message
        upload = await operator_photo(self.app, update, message)
        if upload is not None and message is not None:
            caption = (message.caption or "").strip()
            request = self._request(update, text=caption, upload=upload) \
                if caption.startswith("/") else \
                self._request(update, command="photo", text=caption, upload=upload)
            await self._converse(update, request)
            return
        fields = await message_fields(self.app, update, message)
        await self._converse(update, self._request(update, **fields))

    async def on_callback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        # Answer first: Telegram shows a spinner until then. The data itself is validated by
        # the conversations, never trusted here.
        await self._quietly("callback answer", query.from_user.id, query.answer)
        chat = update.effective_chat
        if chat is not None and chat.type == ChatType.PRIVATE:  # the shop never talks in groups
            await self._converse(update, self._request(update, callback=query.data or ""))

    async def _converse(self, update: Update, request: Request) -> None:
        chat = update.effective_chat
        if chat is None:
            return
        try:
            reply = await self.conv.reply_to(self.app, request)
        except Exception:  # noqa: BLE001 - a bug must not leave the user without an answer
            log.exception("conversation failed for %s", request.request_id)
            reply = Reply().text(adapter_text("internal_error", request.lang))
        await self.output.deliver(chat.id, reply, lang=request.lang,
                                  run_job=self._job_runner(request))

    def _job_runner(self, request: Request) -> JobRunner:
        async def run(item: Progress, push: Callable[[str], None]) -> Reply | None:
            result = await invoke(self.conv.run_job, self.app, item.job, request, push)
            return result if isinstance(result, Reply) else None

        return run

    # ------------------------------------------------------------------ payments

    async def on_pre_checkout(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Telegram asks whether to take the money: only the conversations can say yes."""
        query = update.pre_checkout_query
        assert query is not None
        lang = query.from_user.language_code
        try:
            ok, error = await asyncio.wait_for(invoke(
                self.conv.precheck, self.app, token=query.invoice_payload,
                amount=query.total_amount, currency=query.currency,
                identity=f"tg:{query.from_user.id}"), PRECHECK_BUDGET)
        except Exception:  # noqa: BLE001 - including the time budget running out
            log.exception("pre-checkout %s could not be checked", query.id)
            ok, error = False, None
        if ok:
            await self._quietly("pre-checkout answer", query.from_user.id,
                                lambda: query.answer(ok=True))
        else:
            message = (error or adapter_text("precheck_unavailable", lang)).strip()[:255]
            await self._quietly("pre-checkout answer", query.from_user.id,
                                lambda: query.answer(ok=False, error_message=message))

    async def on_payment(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Telegram took the money: record it (idempotent on the charge id), then answer."""
        message = update.effective_message
        user = update.effective_user
        assert message is not None and message.successful_payment is not None and user
        sp = message.successful_payment
        info = sp.order_info
        if info is not None and self.conv.shipping is not None:  # before the payment's record
            where = info.shipping_address
            await invoke(self.conv.shipping, self.app, token=sp.invoice_payload,
                         identity=f"tg:{user.id}", name=info.name, phone=info.phone_number,
                         address=where.to_dict() if where is not None else None)
        reply: Reply | None = None
        for attempt in range(PAYMENT_ATTEMPTS):
            try:
                reply = await invoke(
                    self.conv.paid, self.app, token=sp.invoice_payload, amount=sp.total_amount,
                    currency=sp.currency, charge_id=sp.telegram_payment_charge_id,
                    channel="telegram", identity=f"tg:{user.id}",
                    **({"inbox_update": update.update_id} if self.inbox else {}))
                break
            except Exception:  # noqa: BLE001 - retried: recording is keyed by the charge id
                log.exception("recording payment %s failed (attempt %d)",
                              sp.telegram_payment_charge_id, attempt + 1)
                await asyncio.sleep(0.2 * 2**attempt)
        if reply is None:
            # Telegram will not send this update again: leave everything needed to credit it.
            self.spool_payment(update)
            reply = Reply().text(adapter_text("payment_pending", user.language_code,
                                              charge=sp.telegram_payment_charge_id))
        await self.output.deliver(message.chat.id, reply if isinstance(reply, Reply) else Reply(),
                                  lang=user.language_code)

    def spool_payment(self, update: Update) -> None:
        """Put an unrecorded charge in the durable spool (once per update in this process)
        and say so loudly; the spool is replayed until the charge is recorded."""
        if update.update_id in self._spooled:
            return
        message, user = update.effective_message, update.effective_user
        assert message is not None and message.successful_payment is not None and user
        sp = message.successful_payment
        log.critical("UNRECORDED TELEGRAM PAYMENT charge=%s provider_charge=%s payload=%s "
                     "amount=%s %s from tg:%s", sp.telegram_payment_charge_id,
                     sp.provider_payment_charge_id, sp.invoice_payload, sp.total_amount,
                     sp.currency, user.id)
        charge_spool.spool(self.spool_path, {
            "channel": "telegram", "token": sp.invoice_payload, "amount": sp.total_amount,
            "currency": sp.currency, "charge_id": sp.telegram_payment_charge_id,
            "identity": f"tg:{user.id}",
            **({"update_id": update.update_id} if self.inbox else {})})
        self._spooled.add(update.update_id)

    # ------------------------------------------------------------------ the rest

    async def on_group_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The shop shows balances: it only talks business in private chats."""
        chat, user = update.effective_chat, update.effective_user
        if chat is None or user is None:
            return
        lang = user.language_code
        await self._quietly("private-only note", chat.id, lambda: self.output.send_text(
            chat.id, adapter_text("private_only", lang)))

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log what went wrong, never the token or the update's full content."""
        err = context.error
        where = f"update {update.update_id}" if isinstance(update, Update) else "background"
        if isinstance(err, Forbidden | NetworkError | RetryAfter):
            log.warning("Telegram %s in %s: %s", type(err).__name__, where, err)
        else:
            log.error("unhandled %s in %s", type(err).__name__, where, exc_info=err)

    async def _quietly(self, what: str, chat_id: int,
                       make_call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await call_bot(what, chat_id, make_call)
        except ChatGone:
            pass


def bot_request() -> AiohttpRequest:
    """Every Bot API call but getUpdates, on aiohttp (bot/telegram/request.py): sending the
    answers was most of the bot's CPU on httpx. PTB's pool size; our time-outs."""
    return AiohttpRequest(connection_pool_size=POOL_SIZE, connect_timeout=5.0,
                          read_timeout=10.0, write_timeout=10.0, media_write_timeout=30.0,
                          pool_timeout=5.0)


def build_application(settings: Settings, app: App, *,
                      conversations: Conversations | None = None) -> Application:
    """The PTB Application wired to the conversations; not yet initialised or started."""
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set")
    token = settings.telegram_bot_token.get_secret_value()
    provider = settings.telegram_payment_provider_token
    provider_token = provider.get_secret_value() if provider is not None else None
    base_url = settings.telegram_api_base_url
    redact_in_logs(token, provider_token)
    updates = UpdatesRequest(connection_pool_size=1, read_timeout=10.0)
    application = (
        ApplicationBuilder()
        .token(token)
        .base_url(base_url)
        .base_file_url(file_url_for(base_url))
        # Throttles to Telegram's flood limits; a RetryAfter is handled per call in
        # output.call_bot, where we know whether a wait is worth it.
        .rate_limiter(AIORateLimiter(max_retries=0))
        .concurrent_updates(PerUserOrder(MAX_CONCURRENT_UPDATES))
        # getUpdates stays on PTB's stock HTTPXRequest (one long poll at a time, a sliver of
        # the CPU), built as PTB builds it but keeping the raw updates for the inbox
        .get_updates_request(updates)
        .request(bot_request())
        .job_queue(None)  # the storefront's own scheduler runs jobs, not PTB's
        .build()
    )
    adapter = TelegramAdapter(app, conversations or Conversations.from_handlers(),
                              ChatOutput(application.bot, provider_token, app),
                              spool_path=Path(settings.charge_spool))
    adapter.register(application)
    application.bot_data["adapter"] = adapter
    application.bot_data["updates_request"] = updates
    return application


def adapter_of(application: Application) -> TelegramAdapter:
    adapter = application.bot_data["adapter"]
    assert isinstance(adapter, TelegramAdapter)
    return adapter
