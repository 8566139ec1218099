"""Turning a `Reply` into Bot API calls, under one failure policy.

Text goes out as plain text (no `parse_mode`, so nothing a user typed can become markup);
photos and documents as uploads; a product `Card` as its photo (by cached `file_id`) with
the text as caption; invoices as native Telegram invoices; a `Progress` item as
one message edited at most once a second while its job runs.

Failure policy for every call made on behalf of a user (docs/telegram.md):
- `RetryAfter` (flood control): wait what Telegram asks, once, if that is short; else drop;
- `Forbidden` (the user blocked the bot): log and drop the rest of this reply;
- `BadRequest`, network errors and time-outs: log and go on with the next item.
Nothing here raises to the caller: a Bot API failure never crashes the application.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from telegram import (
    Bot,
    InlineKeyboardMarkup,
    LabeledPrice,
    Message,
)
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError
from telegram.warnings import PTBUserWarning

from handlers.base import App, Button, Card, Document, Invoice, Photo, Progress, Reply, Text
from handlers.catalogue import photo_bytes, remember_photo

from .texts import text as adapter_text

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TEXT = 4096  # Bot API limits, in UTF-16 code units
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64  # bytes
MAX_INVOICE_TITLE = 32
MAX_INVOICE_DESCRIPTION = 255
MAX_INVOICE_PAYLOAD = 128  # bytes
MAX_RETRY_WAIT = 30.0  # seconds; a user is not kept waiting longer for a direct reply
PROGRESS_INTERVAL = 1.0  # at most one edit per second

# `run_job(progress_item, push)`: runs the job, calling `push(text)` (from any thread) as it
# goes; returns the final reply, if any.
JobRunner = Callable[[Progress, Callable[[str], None]], Awaitable[Reply | None]]
# an inline keyboard as PTB's objects, or as the JSON object Telegram takes (`markup_of`)
Markup = InlineKeyboardMarkup | dict[str, Any]

# `post_text` sends through PTB's public `do_api_request` on purpose (it does not parse the
# answer into a Message); PTB suggests its typed method for a known endpoint each time
warnings.filterwarnings("ignore", message=r"Please use 'Bot\.sendMessage' instead",
                        category=PTBUserWarning)


class ChatGone(Exception):
    """The chat no longer accepts messages from the bot (blocked, deleted)."""


def retry_seconds(exc: RetryAfter) -> float:
    # PTB 22 warns that `retry_after` will become a timedelta; accept both.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


async def call_bot(what: str, chat_id: int, make_call: Callable[[], Awaitable[T]]) -> T | None:
    """One Bot API call for a direct reply, under the failure policy above."""
    for attempt in (1, 2):
        try:
            return await make_call()
        except RetryAfter as exc:
            wait = retry_seconds(exc)
            if attempt == 2 or wait > MAX_RETRY_WAIT:
                log.warning("flood control: dropping %s to chat %s (retry after %.0f s)",
                            what, chat_id, wait)
                return None
            log.info("flood control: retrying %s to chat %s in %.1f s", what, chat_id, wait)
            await asyncio.sleep(wait)
        except Forbidden as exc:
            log.info("chat %s does not accept messages (%s); dropping %s",
                     chat_id, exc.message, what)
            raise ChatGone(chat_id) from None
        except BadRequest as exc:
            log.warning("Bot API refused %s to chat %s: %s", what, chat_id, exc.message)
            return None
        except NetworkError as exc:  # also TimedOut: the message may or may not have gone out
            log.warning("network error on %s to chat %s: %s", what, chat_id, exc.message)
            return None
        except TelegramError as exc:
            log.warning("Bot API error on %s to chat %s: %s", what, chat_id, exc.message)
            return None
    return None  # pragma: no cover - the loop always returns


def utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def split_text(s: str, limit: int = MAX_TEXT) -> Iterator[str]:
    """Pieces of at most `limit` UTF-16 units, cut at line ends where possible."""
    piece = ""
    for line in s.splitlines(keepends=True):
        while utf16_len(line) > limit:  # one very long line: cut it by characters
            head, size = "", 0
            for ch in line:
                width = utf16_len(ch)
                if size + width > limit:
                    break
                head, size = head + ch, size + width
            if piece:
                yield piece
                piece = ""
            yield head
            line = line[len(head):]
        if utf16_len(piece + line) > limit:
            yield piece
            piece = ""
        piece += line
    if piece.strip():
        yield piece


def _button_json(b: Button) -> dict[str, Any] | None:
    """A button as Telegram's JSON (keys in the order PTB writes them), or None if malformed."""
    if b.url and b.label and b.web_app:
        return {"text": b.label, "web_app": {"url": b.url}}
    if b.url and b.label:
        return {"text": b.label, "url": b.url}
    if b.data and b.label and len(b.data.encode("utf-8")) <= MAX_CALLBACK_DATA:
        return {"callback_data": b.data, "text": b.label}
    log.error("dropping malformed button %r", b)
    return None


def markup_of(rows: tuple[tuple[Button, ...], ...]) -> dict[str, Any] | None:
    """Inline keyboard from Button rows as the JSON object Telegram takes (the same bytes as
    PTB's `InlineKeyboardMarkup` of `keyboard`, without building and serialising PTB's
    objects for every reply); malformed buttons are left out (and logged)."""
    built = [[j for j in map(_button_json, row) if j is not None] for row in rows]
    built = [row for row in built if row]
    return {"inline_keyboard": built} if built else None


def keyboard(rows: tuple[tuple[Button, ...], ...]) -> InlineKeyboardMarkup | None:
    """`markup_of` as PTB's objects (for the typed calls: photos under a keyboard)."""
    markup = markup_of(rows)
    return InlineKeyboardMarkup.de_json(markup, None) if markup is not None else None


async def post_text(bot: Bot, chat_id: int, text: str, markup: Markup | None) -> int | None:
    """`sendMessage` with `text` and `markup`; returns the new message's id (None if the
    answer names none: the message went out all the same, and is not sent again).

    The same call as `bot.send_message(chat_id, text, reply_markup=markup)` — the same
    parameters on the wire, the bot's rate limiter and request, the same errors raised — but
    Telegram's answer is not parsed into a PTB `Message` (with its chat, sender and keyboard),
    which was about a sixth of the bot's CPU for a `/me` (a py-spy profile of the `/me`
    row) and is never looked at."""
    params: dict[str, Any] = {"chat_id": chat_id, "text": text}
    if markup is not None:
        params["reply_markup"] = markup
    sent = await bot.do_api_request("sendMessage", api_kwargs=params)
    message_id = sent.get("message_id") if isinstance(sent, dict) else None
    return message_id if isinstance(message_id, int) else None


@dataclass
class ChatOutput:
    """Delivers replies to Telegram chats through `bot`."""

    bot: Bot
    provider_token: str | None
    app: App | None = None  # where product photos are stored (a `Card`'s bytes and file_id)

    async def deliver(self, chat_id: int, reply: Reply, *, lang: str | None,
                      run_job: JobRunner | None = None) -> None:
        try:
            for item in reply.items:
                await self._deliver_one(chat_id, item, lang, run_job)
        except ChatGone:
            return

    async def _deliver_one(self, chat_id: int, item: object, lang: str | None,
                           run_job: JobRunner | None) -> None:
        if isinstance(item, Card):
            await self._send_card(chat_id, item)
        elif isinstance(item, Text):
            await self.send_text(chat_id, item.text, markup_of(item.buttons))
        elif isinstance(item, Photo):
            await self._send_media("photo", chat_id, item.caption,
                                   lambda c: self.bot.send_photo(chat_id, item.png, caption=c))
        elif isinstance(item, Document):
            await self._send_media("document", chat_id, item.caption,
                                   lambda c: self.bot.send_document(
                                       chat_id, item.content, filename=item.filename, caption=c))
        elif isinstance(item, Invoice):
            await self._send_invoice(chat_id, item, lang)
        elif isinstance(item, Progress):
            await self._run_progress(chat_id, item, lang, run_job)
        else:
            log.error("cannot render reply item of type %s", type(item).__name__)

    async def send_text(self, chat_id: int, body: str,
                        markup: Markup | None = None) -> int | None:
        """Plain text, split to Telegram's size; the keyboard goes with the last piece.
        Returns the last piece's message id (None if it did not go out)."""
        pieces = list(split_text(body))
        sent: int | None = None
        for n, piece in enumerate(pieces):
            keys = markup if n == len(pieces) - 1 else None

            def send(piece: str = piece, keys: Markup | None = keys
                     ) -> Awaitable[int | None]:
                return post_text(self.bot, chat_id, piece, keys)

            sent = await call_bot("message", chat_id, send)
        return sent

    async def _send_card(self, chat_id: int, item: Card) -> None:
        """A product: its photo (the cached `file_id`, else the stored bytes, whose new
        `file_id` is kept) with the text as caption and the buttons under it."""
        markup = keyboard(item.buttons)
        ref = item.photo
        photo: str | bytes | None = ref.telegram if ref is not None else None
        if ref is not None and photo is None and self.app is not None:
            photo = await photo_bytes(self.app, ref.sha256)
        if ref is None or photo is None:
            if item.text.strip():
                await self.send_text(chat_id, item.text, markup)
            return
        fits = utf16_len(item.text) <= MAX_CAPTION

        def send(photo: str | bytes) -> Awaitable[Message]:
            return self.bot.send_photo(chat_id, photo, caption=item.text if fits and item.text
                                       else None, reply_markup=markup if fits else None)

        sent = await call_bot("photo", chat_id, lambda: send(photo))
        if sent is None and isinstance(photo, str) and self.app is not None:
            # a file_id Telegram no longer knows (another bot token): the bytes once more
            content = await photo_bytes(self.app, ref.sha256)
            if content is not None:
                photo = content
                sent = await call_bot("photo", chat_id, lambda: send(content))
        if not fits or sent is None:  # too long for a caption, or the photo failed
            await self.send_text(chat_id, item.text, markup)
        if sent is not None and sent.photo and isinstance(photo, bytes) and self.app is not None:
            await remember_photo(self.app, ref.sha256, "telegram", sent.photo[-1].file_id)

    async def _send_media(self, what: str, chat_id: int, caption: str,
                          send: Callable[[str | None], Awaitable[Message]]) -> None:
        fits = utf16_len(caption) <= MAX_CAPTION
        await call_bot(what, chat_id, lambda: send(caption if fits and caption else None))
        if caption and not fits:  # too long for a caption: send it as text after the file
            await self.send_text(chat_id, caption)

    async def _send_invoice(self, chat_id: int, item: Invoice, lang: str | None) -> None:
        if self.provider_token is None:
            log.error("an invoice was produced but no payment provider token is configured")
            await self.send_text(chat_id, adapter_text("payments_unavailable", lang))
            return
        if not 0 < len(item.token.encode("utf-8")) <= MAX_INVOICE_PAYLOAD or item.amount <= 0:
            log.error("refusing to send a malformed invoice for order %s", item.order)
            await self.send_text(chat_id, adapter_text("internal_error", lang))
            return
        title = (item.title.strip() or item.order)[:MAX_INVOICE_TITLE]
        description = (item.description.strip() or title)[:MAX_INVOICE_DESCRIPTION]
        await call_bot("invoice", chat_id, lambda: self.bot.send_invoice(
            chat_id, title, description, payload=item.token, currency=item.currency,
            prices=[LabeledPrice(title, item.amount)], provider_token=self.provider_token,
            need_name=item.need_name, need_phone_number=item.need_phone_number,
            need_shipping_address=item.need_shipping_address))

    async def _run_progress(self, chat_id: int, item: Progress, lang: str | None,
                            run_job: JobRunner | None) -> None:
        if run_job is None:
            log.error("progress item %s without a job runner", item.job)
            return
        first = await self.send_text(chat_id, item.initial or "…")
        live = ProgressMessage(self, chat_id, first, item.initial)
        try:
            result = await run_job(item, live.push)
        except Exception:  # noqa: BLE001 - the job's own failure is logged, the user told
            log.exception("job %s failed", item.job)
            result = Reply().text(adapter_text("internal_error", lang))
        finally:
            await live.finish()
        if result is not None and result.items:
            await self.deliver(chat_id, result, lang=lang, run_job=run_job)


class ProgressMessage:
    """One message edited as a job reports progress, at most once per `interval` seconds.

    `push(text)` may be called from any thread (jobs often run in a worker thread); only the
    newest text matters, so pushes between two edits collapse into one."""

    def __init__(self, out: ChatOutput, chat_id: int, message_id: int | None, shown: str,
                 interval: float = PROGRESS_INTERVAL) -> None:
        self._out, self._chat_id, self._message_id = out, chat_id, message_id
        self._loop = asyncio.get_running_loop()
        self._interval = interval
        self._latest = self._shown = shown
        self._last_edit = float("-inf")
        self._changed = asyncio.Event()
        self._done = False
        self._pump = self._loop.create_task(self._run())
        self.edits = 0

    def push(self, body: str) -> None:
        self._latest = body
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._changed.set()
        else:
            self._loop.call_soon_threadsafe(self._changed.set)

    async def _run(self) -> None:
        while not (self._done and self._latest == self._shown):
            if not self._done:
                await self._changed.wait()
            self._changed.clear()
            await asyncio.sleep(max(0.0, self._last_edit + self._interval - self._loop.time()))
            await self._flush()

    async def _flush(self) -> None:
        body, shown = self._latest, self._shown
        self._shown = body  # even when nothing can be shown: there is nothing left to do
        if self._message_id is None or body == shown or not body.strip():
            return
        self._last_edit = self._loop.time()
        self.edits += 1
        message_id = self._message_id
        try:
            await call_bot("progress edit", self._chat_id, lambda: self._out.bot.edit_message_text(
                body[:MAX_TEXT], chat_id=self._chat_id, message_id=message_id))
        except ChatGone:
            self._message_id = None

    async def finish(self) -> None:
        """Show the last text pushed (keeping the spacing) and stop."""
        self._done = True
        self._changed.set()
        await self._pump
