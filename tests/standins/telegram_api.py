"""Loopback stand-in for the Telegram Bot API.

Runs a small Starlette app under uvicorn in a background thread on ``127.0.0.1`` (OS-chosen
port), so that end-to-end tests can drive the *real* python-telegram-bot ``Application`` over
HTTP::

    with FakeBotAPI() as api:
        app = ApplicationBuilder().token("123:ABC").base_url(api.base_url) \
            .base_file_url(api.base_file_url).build()  # as tests/test_standin_telegram.py
        ...
        api.push_text(7, "/start")
        await api.wait_for(lambda c: c.method == "sendMessage" and c.chat_id == 7)
        assert api.sent_texts(7) == ["hello"]

Every request is recorded in ``api.calls`` (a list of :class:`Call`). Updates are injected with
the ``push_*`` helpers and handed out by ``getUpdates`` (long-poll, capped at 1 s). The module
level ``make_*_update`` builders produce the same Bot API dicts for webhook tests.

Nothing here talks to the network beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "BOT_USER",
    "Call",
    "FakeBotAPI",
    "make_callback_update",
    "make_chat",
    "make_message",
    "make_pre_checkout_update",
    "make_successful_payment_update",
    "make_text_update",
    "make_user",
]

BOT_ID = 4242
BOT_USER: dict[str, Any] = {
    "id": BOT_ID,
    "is_bot": True,
    "first_name": "Shop",
    "username": "rebate_shop_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
    "can_connect_to_business": False,
    "has_main_web_app": False,
}

MAX_POLL_TIMEOUT = 1.0
MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_CALLBACK_DATA_BYTES = 64

# Methods whose ``chat_id`` is refused with 403 once the chat is blocked via ``block_chat``.
_BLOCKABLE_PREFIXES = ("send", "edit", "copy", "forward", "stop", "pin", "unpin")

# Form fields PTB sends as plain strings that must never be JSON-decoded even if they look
# like a number/bool (e.g. text "42" or an invoice payload "123").
_STRING_KEYS = frozenset(
    {
        "text",
        "caption",
        "title",
        "description",
        "payload",
        "start_parameter",
        "provider_token",
        "currency",
        "parse_mode",
        "error_message",
        "url",
        "secret_token",
        "language_code",
        "data",
        "message_text",
        "query",
        "name",
        "short_description",
        "inline_message_id",
        "emoji",
        "action",
        "photo",
        "document",
        "video",
        "audio",
        "animation",
        "voice",
        "sticker",
        "thumbnail",
        "provider_data",
        "ip_address",
    }
)
_STRING_KEY_SUFFIXES = (
    "query_id",
    "file_id",
    "charge_id",
    "connection_id",
    "emoji_id",
    "effect_id",
)
_JSON_LIKE = re.compile(r"^(\{.*\}|\[.*\]|-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null)$", re.S)

_module_update_ids = itertools.count(1_000_000)
_module_message_ids = itertools.count(1_000_000)
_module_query_ids = itertools.count(1)


# --------------------------------------------------------------------------------------------
# Recorded calls
# --------------------------------------------------------------------------------------------


# A wait's time-out only ends a run that has already failed; on a loaded machine (the suite
# shares two cores) what takes 0.1 s alone may take seconds, so no wait gives up sooner.
MIN_WAIT = 60.0


@dataclass
class Call:
    """One request received by the stand-in.

    ``params`` holds the decoded parameters (JSON-looking form fields such as ``reply_markup``,
    ``prices`` or ``commands`` are decoded; numeric ids become ``int``). ``files`` maps multipart
    part names to the uploaded bytes (and, for ``attach://name`` references, also the parameter
    name). ``ok``/``result``/``error`` are filled in once the response has been produced.
    """

    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    filenames: dict[str, str] = field(default_factory=dict)
    time: float = 0.0
    ok: bool | None = None
    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def chat_id(self) -> Any:
        return self.params.get("chat_id")

    @property
    def text(self) -> str | None:
        value = self.params.get("text", self.params.get("caption"))
        return value if isinstance(value, str) else None

    def is_(self, method: str) -> bool:
        return self.method.lower() == method.lower()


@dataclass
class _Failure:
    error_code: int
    description: str
    retry_after: int | None
    times: int


# --------------------------------------------------------------------------------------------
# Module-level builders (usable for webhook tests without a running stand-in)
# --------------------------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


def make_user(
    user_id: int,
    *,
    first_name: str = "U",
    language_code: str | None = "en",
    username: str | None = None,
    is_bot: bool = False,
) -> dict[str, Any]:
    user: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
    if username:
        user["username"] = username
    if language_code:
        user["language_code"] = language_code
    return user


def make_chat(chat_id: int | str, *, first_name: str = "U", username: str | None = None) -> dict:
    """A chat dict: private for positive ids, group/supergroup for negative, channel for '@x'."""
    if isinstance(chat_id, str):
        return {"id": -1001, "type": "channel", "title": chat_id, "username": chat_id.lstrip("@")}
    if chat_id < 0:
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "type": kind, "title": f"chat {chat_id}"}
    chat: dict[str, Any] = {"id": chat_id, "type": "private", "first_name": first_name}
    if username:
        chat["username"] = username
    return chat


def make_message(
    chat_id: int | str,
    *,
    from_user: dict[str, Any] | None = None,
    message_id: int | None = None,
    date: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A Message dict. ``from_user`` defaults to the stand-in bot; extra fields are merged."""
    sender = from_user or BOT_USER
    chat_kwargs: dict[str, Any] = {}
    if not sender.get("is_bot"):
        chat_kwargs = {
            "first_name": sender.get("first_name", "U"),
            "username": sender.get("username"),
        }
    msg: dict[str, Any] = {
        "message_id": message_id if message_id is not None else next(_module_message_ids),
        "date": date if date is not None else _now(),
        "chat": make_chat(chat_id, **chat_kwargs),
        "from": dict(sender),
    }
    msg.update({k: v for k, v in fields.items() if v is not None})
    return msg


def _command_entities(text: str) -> list[dict[str, Any]] | None:
    if not text.startswith("/"):
        return None
    command = text.split(maxsplit=1)[0] if text.strip() else text
    return [{"type": "bot_command", "offset": 0, "length": len(command.encode("utf-16-le")) // 2}]


def make_text_update(
    user_id: int,
    text: str,
    *,
    update_id: int | None = None,
    message_id: int | None = None,
    first_name: str = "U",
    language_code: str | None = "en",
    username: str | None = None,
    date: int | None = None,
) -> dict[str, Any]:
    """An update with a private text message from ``user_id`` (chat.id == user_id).

    Texts starting with ``/`` get a ``bot_command`` entity covering the first word.
    """
    user = make_user(user_id, first_name=first_name, language_code=language_code, username=username)
    message = make_message(
        user_id,
        from_user=user,
        message_id=message_id,
        date=date,
        text=text,
        entities=_command_entities(text),
    )
    return {"update_id": _uid(update_id), "message": message}


def make_callback_update(
    user_id: int,
    data: str,
    *,
    message_id: int | None = None,
    message: dict[str, Any] | None = None,
    update_id: int | None = None,
    query_id: str | None = None,
    first_name: str = "U",
    language_code: str | None = "en",
    username: str | None = None,
) -> dict[str, Any]:
    """An update with a callback query pressed by ``user_id`` on a bot message.

    ``message`` is the bot message carrying the keyboard; if omitted a minimal one with
    ``message_id`` is built.
    """
    user = make_user(user_id, first_name=first_name, language_code=language_code, username=username)
    if message is None:
        message = make_message(user_id, message_id=message_id, text="…")
    query = {
        "id": query_id or f"cbq-{next(_module_query_ids)}",
        "from": user,
        "chat_instance": f"ci-{user_id}",
        "message": message,
        "data": data,
    }
    return {"update_id": _uid(update_id), "callback_query": query}


def make_pre_checkout_update(
    user_id: int,
    payload: str,
    total_amount: int,
    *,
    currency: str = "CNY",
    query_id: str | None = None,
    update_id: int | None = None,
    first_name: str = "U",
    language_code: str | None = "en",
    username: str | None = None,
) -> dict[str, Any]:
    user = make_user(user_id, first_name=first_name, language_code=language_code, username=username)
    query = {
        "id": query_id or f"pcq-{next(_module_query_ids)}",
        "from": user,
        "currency": currency,
        "total_amount": total_amount,
        "invoice_payload": payload,
    }
    return {"update_id": _uid(update_id), "pre_checkout_query": query}


def make_successful_payment_update(
    user_id: int,
    payload: str,
    total_amount: int,
    charge_id: str,
    *,
    currency: str = "CNY",
    provider_charge_id: str | None = None,
    update_id: int | None = None,
    message_id: int | None = None,
    first_name: str = "U",
    language_code: str | None = "en",
    username: str | None = None,
) -> dict[str, Any]:
    user = make_user(user_id, first_name=first_name, language_code=language_code, username=username)
    payment = {
        "currency": currency,
        "total_amount": total_amount,
        "invoice_payload": payload,
        "telegram_payment_charge_id": charge_id,
        "provider_payment_charge_id": provider_charge_id or f"p-{charge_id}",
    }
    message = make_message(
        user_id, from_user=user, message_id=message_id, successful_payment=payment
    )
    return {"update_id": _uid(update_id), "message": message}


def make_shipped_payment_update(user_id: int, payload: str, total_amount: int, charge_id: str,
                                *, name: str, phone: str, city: str, street: str,
                                post_code: str) -> dict[str, Any]:
    """A successful payment whose invoice asked for shipping, carrying the buyer's order info
    (a CN address in `city`); without an update_id: the stand-in numbers it when pushed."""
    update = make_successful_payment_update(user_id, payload, total_amount, charge_id,
                                            first_name=f"User{user_id}")
    update["message"]["successful_payment"]["order_info"] = {
        "name": name, "phone_number": phone,
        "shipping_address": {"country_code": "CN", "state": city, "city": city,
                             "street_line1": street, "street_line2": "", "post_code": post_code}}
    del update["update_id"]
    return update


def _uid(update_id: int | None) -> int:
    return update_id if update_id is not None else next(_module_update_ids)


# --------------------------------------------------------------------------------------------
# Request parsing
# --------------------------------------------------------------------------------------------


def _decode_value(key: str, value: str) -> Any:
    if key in _STRING_KEYS or key.endswith(_STRING_KEY_SUFFIXES):
        return value
    if _JSON_LIKE.match(value.strip()):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


_DISPOSITION_PARAM = re.compile(r';\s*([\w*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))')


def _parse_multipart(
    body: bytes, content_type: str
) -> tuple[dict[str, str], dict[str, bytes], dict[str, str]]:
    """Split a multipart/form-data body into (fields, files, filenames)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return {}, {}, {}
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    filenames: dict[str, str] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        if chunk.endswith(b"\r\n"):
            chunk = chunk[:-2]
        head, _, content = chunk.partition(b"\r\n\r\n")
        disposition = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = value
        params = {
            m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3).strip())
            for m in _DISPOSITION_PARAM.finditer(disposition)
        }
        part_name = params.get("name")
        if part_name is None:
            continue
        if "filename" in params or "filename*" in params:
            files[part_name] = content
            filenames[part_name] = params.get("filename") or params.get("filename*") or ""
        else:
            fields[part_name] = content.decode("utf-8")
    return fields, files, filenames


async def _parse_request(
    request: Request,
) -> tuple[dict[str, Any], dict[str, bytes], dict[str, str]]:
    raw: dict[str, str] = dict(request.query_params)
    files: dict[str, bytes] = {}
    filenames: dict[str, str] = {}
    params: dict[str, Any] = {}
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if body:
        if content_type.startswith("application/json"):
            decoded = json.loads(body)
            if isinstance(decoded, dict):
                params.update(decoded)
        elif content_type.startswith("multipart/form-data"):
            fields, files, filenames = _parse_multipart(body, content_type)
            raw.update(fields)
        else:  # application/x-www-form-urlencoded (PTB's default for file-less calls)
            raw.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    decoded_raw = {key: _decode_value(key, value) for key, value in raw.items()}
    params = {**decoded_raw, **params}
    # Map "photo": "attach://xyz" style references onto the parameter name too.
    for key, value in list(params.items()):
        if isinstance(value, str) and value.startswith("attach://"):
            attach_name = value[len("attach://") :]
            if attach_name in files and key not in files:
                files[key] = files[attach_name]
                filenames[key] = filenames.get(attach_name, "")
    return params, files, filenames


def _image_size(data: bytes) -> tuple[int, int]:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return 640, 480


class _APIError(Exception):
    def __init__(self, error_code: int, description: str, retry_after: int | None = None):
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.retry_after = retry_after

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.error_code,
            "description": self.description,
        }
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def _bad_request(description: str) -> _APIError:
    return _APIError(400, f"Bad Request: {description}")


# --------------------------------------------------------------------------------------------
# The stand-in
# --------------------------------------------------------------------------------------------


class FakeBotAPI:
    """A loopback Telegram Bot API (see module docstring).

    Args:
        token: if given, requests for any other token get ``401 Unauthorized``.
        max_poll_timeout: cap for getUpdates long-polling, in seconds.
    """

    def __init__(self, token: str | None = None, *, max_poll_timeout: float = MAX_POLL_TIMEOUT):
        self.token = token
        self.max_poll_timeout = max_poll_timeout
        self.bot_user: dict[str, Any] = dict(BOT_USER)

        self._lock = threading.RLock()
        self.calls: list[Call] = []
        self.request_times: dict[tuple[str, Any], list[float]] = defaultdict(list)
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.scoped_commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.webhook: dict[str, Any] = {"url": ""}
        self.messages: dict[tuple[Any, int], dict[str, Any]] = {}
        self.files_by_id: dict[str, bytes] = {}
        self.blocked_chats: set[Any] = set()

        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._query_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._failures: dict[str, list[_Failure]] = defaultdict(list)
        self._responders: dict[str, Callable[[Call], Any]] = {}
        self._users: dict[int, dict[str, Any]] = {}

        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._sock: socket.socket | None = None
        self._stopping = threading.Event()
        self._app = Starlette(
            routes=[
                Route("/bot{token}/{method}", self._endpoint, methods=["GET", "POST"]),
                Route("/file/bot{token}/{file_path:path}", self._file_endpoint, methods=["GET"]),
            ]
        )

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeBotAPI:
        if self._thread is not None:
            return self
        # IPPROTO_TCP spelled out: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
        # connections of a socket that says it is TCP. Without it every answer, which uvicorn
        # writes as headers then body, waited ~40 ms for the client's delayed ACK: a stall
        # no real Bot API server has.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            loop="asyncio",
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-bot-api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("FakeBotAPI server thread died during startup")
            if time.monotonic() > deadline:
                raise RuntimeError("FakeBotAPI did not start within 10 s")
            time.sleep(0.005)
        self._sock = sock
        return self

    def stop(self) -> None:
        if self._thread is None or self._server is None:
            return
        self._stopping.set()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():  # pragma: no cover - last resort
            self._server.force_exit = True
            self._thread.join(timeout=5)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._thread = None
        self._server = None

    def __enter__(self) -> FakeBotAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeBotAPI:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeBotAPI is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """For ``ApplicationBuilder().base_url(...)``: PTB appends ``<token>/<method>``."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # ---------------------------------------------------------------- configuration

    def fail_next(
        self,
        method: str,
        error_code: int = 429,
        description: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail with the given Bot API error.

        With ``retry_after`` the body carries ``parameters.retry_after`` (PTB: ``RetryAfter``).
        """
        if description is None:
            description = {
                400: "Bad Request: fake failure",
                403: "Forbidden: fake failure",
                409: "Conflict: fake failure",
                429: f"Too Many Requests: retry after {retry_after or 1}",
            }.get(error_code, f"Error {error_code}: fake failure")
        with self._lock:
            self._failures[method.lower()].append(
                _Failure(error_code, description, retry_after, times)
            )

    def block_chat(self, chat_id: int | str) -> None:
        """Sends/edits to ``chat_id`` now fail with 403 "Forbidden: bot was blocked by the user"."""
        with self._lock:
            self.blocked_chats.add(chat_id)

    def unblock_chat(self, chat_id: int | str) -> None:
        with self._lock:
            self.blocked_chats.discard(chat_id)

    def set_response(self, method: str, response: Any) -> None:
        """Override the result of ``method``: a value, or a callable ``(Call) -> result``.

        The callable may raise ``FakeBotAPI.error(code, description)`` to answer with an error.
        """
        responder = response if callable(response) else (lambda _call, _r=response: _r)
        with self._lock:
            self._responders[method.lower()] = responder

    @staticmethod
    def error(error_code: int, description: str, retry_after: int | None = None) -> Exception:
        """An exception a ``set_response`` callable can raise to answer with an API error."""
        return _APIError(error_code, description, retry_after)

    def reset(self) -> None:
        """Forget recorded calls, timings and queued updates (configuration is kept)."""
        with self._lock:
            self.calls.clear()
            self.request_times.clear()
            self._updates.clear()

    def store_file(self, content: bytes, file_id: str | None = None) -> str:
        """Make ``content`` downloadable via getFile + the file URL; returns the file_id."""
        with self._lock:
            file_id = file_id or f"file-{next(self._file_ids)}"
            self.files_by_id[file_id] = content
        return file_id

    # ---------------------------------------------------------------- inspection

    def calls_of(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.is_(method)]

    def sent_texts(self, chat_id: int | str | None = None) -> list[str]:
        """Texts of successful sendMessage / editMessageText calls, in order."""
        with self._lock:
            calls = list(self.calls)
        return [
            c.params.get("text", "")
            for c in calls
            if (c.is_("sendMessage") or c.is_("editMessageText"))
            and c.ok
            and (chat_id is None or c.chat_id == chat_id)
        ]

    def sent_messages(self, chat_id: int | str | None = None) -> list[dict[str, Any]]:
        """Message dicts returned by successful send* calls, in order."""
        with self._lock:
            calls = list(self.calls)
        return [
            c.result
            for c in calls
            if c.method.lower().startswith("send")
            and c.ok
            and isinstance(c.result, dict)
            and (chat_id is None or c.chat_id == chat_id)
        ]

    def answers_to_pre_checkout(self) -> list[tuple[str, bool, str | None]]:
        return [
            (
                c.params.get("pre_checkout_query_id"),
                bool(c.params.get("ok")),
                c.params.get("error_message"),
            )
            for c in self.calls_of("answerPreCheckoutQuery")
        ]

    def answers_to_callbacks(self) -> list[tuple[str, str | None, bool]]:
        return [
            (
                c.params.get("callback_query_id"),
                c.params.get("text"),
                bool(c.params.get("show_alert")),
            )
            for c in self.calls_of("answerCallbackQuery")
        ]

    def pending_updates(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._updates)

    def _match(self, predicate: Callable[[Call], bool] | str, since: int) -> Call | None:
        if isinstance(predicate, str):
            method = predicate
            predicate = lambda c: c.is_(method)  # noqa: E731
        with self._lock:
            calls = self.calls[since:]
        for call in calls:
            # Wait for the response to be produced, so ``ok``/``result`` are meaningful.
            if call.ok is not None and predicate(call):
                return call
        return None

    def _timeout_error(self, timeout: float) -> TimeoutError:
        with self._lock:
            seen = [f"{c.method}({c.params})" for c in self.calls if not c.is_("getUpdates")]
        return TimeoutError(f"no matching call within {timeout}s; calls: {seen[-20:]}")

    async def wait_for(
        self,
        predicate: Callable[[Call], bool] | str,
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> Call:
        """Poll until a recorded (answered) call matches; ``predicate`` may be a method name.

        ``since`` skips the first N calls (use ``len(api.calls)`` as a mark).
        """
        deadline = time.monotonic() + max(timeout, MIN_WAIT)
        while True:
            found = self._match(predicate, since)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise self._timeout_error(timeout)
            await asyncio.sleep(0.01)

    def wait_for_sync(
        self,
        predicate: Callable[[Call], bool] | str,
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> Call:
        deadline = time.monotonic() + max(timeout, MIN_WAIT)
        while True:
            found = self._match(predicate, since)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise self._timeout_error(timeout)
            time.sleep(0.01)

    # ---------------------------------------------------------------- update injection

    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update dict; an ``update_id`` is assigned if missing."""
        with self._lock:
            if "update_id" not in update:
                update = {"update_id": next(self._update_ids), **update}
            self._updates.append(update)
        return update

    def _remember_user(self, user_id: int, first_name: str, username: str | None) -> None:
        self._users[user_id] = {"first_name": first_name, "username": username}

    def push_text(
        self,
        user_id: int,
        text: str,
        *,
        first_name: str = "U",
        language_code: str | None = "en",
        username: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            self._remember_user(user_id, first_name, username)
            update = make_text_update(
                user_id,
                text,
                update_id=next(self._update_ids),
                message_id=next(self._message_ids),
                first_name=first_name,
                language_code=language_code,
                username=username,
            )
            return self.push_update(update)

    def push_callback(
        self,
        user_id: int,
        data: str,
        message_id: int | None = None,
        *,
        first_name: str = "U",
        language_code: str | None = "en",
        username: str | None = None,
        query_id: str | None = None,
    ) -> dict[str, Any]:
        """Press a button. ``message_id`` defaults to the last bot message sent to the user."""
        with self._lock:
            self._remember_user(user_id, first_name, username)
            if message_id is None:
                own = [mid for (cid, mid) in self.messages if cid == user_id]
                message_id = max(own) if own else next(self._message_ids)
            message = self.messages.get((user_id, message_id))
            if message is None:
                message = make_message(user_id, message_id=message_id, text="…")
            update = make_callback_update(
                user_id,
                data,
                message=json.loads(json.dumps(message)),
                update_id=next(self._update_ids),
                query_id=query_id or f"cbq-{next(self._query_ids)}",
                first_name=first_name,
                language_code=language_code,
                username=username,
            )
            return self.push_update(update)

    def push_pre_checkout(
        self,
        user_id: int,
        payload: str,
        total_amount: int,
        currency: str = "CNY",
        query_id: str | None = None,
        *,
        first_name: str = "U",
        language_code: str | None = "en",
    ) -> dict[str, Any]:
        with self._lock:
            update = make_pre_checkout_update(
                user_id,
                payload,
                total_amount,
                currency=currency,
                query_id=query_id or f"pcq-{next(self._query_ids)}",
                update_id=next(self._update_ids),
                first_name=first_name,
                language_code=language_code,
            )
            return self.push_update(update)

    def push_successful_payment(
        self,
        user_id: int,
        payload: str,
        total_amount: int,
        charge_id: str,
        currency: str = "CNY",
        provider_charge_id: str | None = None,
        *,
        first_name: str = "U",
        language_code: str | None = "en",
    ) -> dict[str, Any]:
        with self._lock:
            update = make_successful_payment_update(
                user_id,
                payload,
                total_amount,
                charge_id,
                currency=currency,
                provider_charge_id=provider_charge_id,
                update_id=next(self._update_ids),
                message_id=next(self._message_ids),
                first_name=first_name,
                language_code=language_code,
            )
            return self.push_update(update)

    # ---------------------------------------------------------------- HTTP layer

    async def _file_endpoint(self, request: Request) -> Response:
        file_path = request.path_params["file_path"]
        file_id = file_path.rsplit("/", 1)[-1]
        with self._lock:
            content = self.files_by_id.get(file_id)
        if content is None:
            return Response(b"Not Found", status_code=404)
        return Response(content, media_type="application/octet-stream")

    async def _endpoint(self, request: Request) -> Response:
        token = request.path_params["token"]
        method = request.path_params["method"]
        try:
            params, files, filenames = await _parse_request(request)
        except (ValueError, UnicodeDecodeError) as exc:
            body = {"ok": False, "error_code": 400, "description": f"Bad Request: {exc}"}
            return JSONResponse(body, status_code=400)
        call = Call(method, params, files, filenames, time=time.monotonic())
        chat_id = params.get("chat_id")
        with self._lock:
            self.calls.append(call)
            self.request_times[(method, chat_id)].append(call.time)
        try:
            result = await self._dispatch(token, call)
        except _APIError as err:
            call.error = err.payload()
            call.ok = False
            return JSONResponse(call.error, status_code=err.error_code)
        call.result = result
        call.ok = True
        return JSONResponse({"ok": True, "result": result})

    async def _dispatch(self, token: str, call: Call) -> Any:
        name = call.method.lower()
        if self.token is not None and token != self.token:
            raise _APIError(401, "Unauthorized")
        with self._lock:
            queue = self._failures.get(name)
            failure = queue[0] if queue else None
            if failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    queue.pop(0)
            blocked = name.startswith(_BLOCKABLE_PREFIXES) and call.chat_id in self.blocked_chats
            responder = self._responders.get(name)
        if failure is not None:
            raise _APIError(failure.error_code, failure.description, failure.retry_after)
        if blocked:
            raise _APIError(403, "Forbidden: bot was blocked by the user")
        if responder is not None:
            return responder(call)
        if name == "getupdates":
            return await self._get_updates(call.params)
        handler = getattr(self, f"_m_{name}", None)
        if handler is None:
            raise _APIError(404, "Not Found")
        with self._lock:
            return handler(call)

    # ---------------------------------------------------------------- methods

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        timeout = min(float(params.get("timeout") or 0), self.max_poll_timeout)
        allowed = params.get("allowed_updates") or None
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if offset < 0:
                    self._updates = self._updates[offset:]
                elif offset > 0:
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
                if allowed:
                    self._updates = [u for u in self._updates if any(k in u for k in allowed)]
                ready = self._updates[:limit]
            if ready or time.monotonic() >= deadline or self._stopping.is_set():
                return json.loads(json.dumps(ready))
            await asyncio.sleep(0.01)

    def _m_getme(self, call: Call) -> Any:
        return self.bot_user

    def _m_close(self, call: Call) -> Any:
        return True

    def _m_logout(self, call: Call) -> Any:
        return True

    def _m_deletewebhook(self, call: Call) -> Any:
        self.webhook = {"url": ""}
        if call.params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    def _m_setwebhook(self, call: Call) -> Any:
        self.webhook = {k: v for k, v in call.params.items()}
        if call.params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    def _m_getwebhookinfo(self, call: Call) -> Any:
        info: dict[str, Any] = {
            "url": self.webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook.get("allowed_updates"):
            info["allowed_updates"] = self.webhook["allowed_updates"]
        if self.webhook.get("max_connections"):
            info["max_connections"] = self.webhook["max_connections"]
        return info

    @staticmethod
    def _scope_key(params: dict[str, Any]) -> str:
        scope = params.get("scope")
        if not scope or (isinstance(scope, dict) and scope.get("type") == "default"):
            return "default"
        return json.dumps(scope, sort_keys=True)

    def _m_setmycommands(self, call: Call) -> Any:
        commands = call.params.get("commands") or []
        if not isinstance(commands, list):
            raise _bad_request("can't parse commands JSON object")
        lang = call.params.get("language_code") or ""
        scope = self._scope_key(call.params)
        self.scoped_commands[(scope, lang)] = commands
        if scope == "default":
            self.commands[lang] = commands
        return True

    def _m_deletemycommands(self, call: Call) -> Any:
        lang = call.params.get("language_code") or ""
        scope = self._scope_key(call.params)
        self.scoped_commands.pop((scope, lang), None)
        if scope == "default":
            self.commands.pop(lang, None)
        return True

    def _m_getmycommands(self, call: Call) -> Any:
        lang = call.params.get("language_code") or ""
        return self.scoped_commands.get((self._scope_key(call.params), lang), [])

    def _m_answercallbackquery(self, call: Call) -> Any:
        if not call.params.get("callback_query_id"):
            raise _bad_request(
                "query is too old and response timeout expired or query ID is invalid"
            )
        return True

    def _m_answerprecheckoutquery(self, call: Call) -> Any:
        if not call.params.get("pre_checkout_query_id"):
            raise _bad_request("QUERY_ID_INVALID")
        if not call.params.get("ok") and not call.params.get("error_message"):
            raise _bad_request("ERROR_MESSAGE_EMPTY")
        return True

    def _m_sendchataction(self, call: Call) -> Any:
        self._require_chat(call)
        return True

    # -- messages

    def _require_chat(self, call: Call) -> Any:
        chat_id = call.params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad_request("chat_id is empty")
        return chat_id

    @staticmethod
    def _check_markup(markup: Any) -> None:
        if not isinstance(markup, dict):
            return
        for row in markup.get("inline_keyboard") or []:
            for button in row:
                data = button.get("callback_data")
                if data is not None and not (
                    0 < len(str(data).encode("utf-8")) <= MAX_CALLBACK_DATA_BYTES
                ):
                    raise _bad_request("BUTTON_DATA_INVALID")

    def _new_message(self, call: Call, **fields: Any) -> dict[str, Any]:
        chat_id = self._require_chat(call)
        markup = call.params.get("reply_markup")
        self._check_markup(markup)
        user = self._users.get(chat_id, {}) if isinstance(chat_id, int) else {}
        message = make_message(
            chat_id, from_user=self.bot_user, message_id=next(self._message_ids), **fields
        )
        if user and message["chat"]["type"] == "private":
            message["chat"]["first_name"] = user.get("first_name") or "U"
            if user.get("username"):
                message["chat"]["username"] = user["username"]
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        self.messages[(chat_id, message["message_id"])] = message
        return message

    def _caption_fields(self, call: Call) -> dict[str, Any]:
        caption = call.params.get("caption")
        if caption is not None and len(str(caption)) > MAX_CAPTION_LENGTH:
            raise _bad_request("message caption is too long")
        return {
            "caption": caption,
            "caption_entities": call.params.get("caption_entities"),
        }

    def _m_sendmessage(self, call: Call) -> Any:
        text = call.params.get("text")
        if text is None or str(text).strip() == "":
            raise _bad_request("message text is empty")
        if len(str(text)) > MAX_TEXT_LENGTH:
            raise _bad_request("message is too long")
        return self._new_message(call, text=str(text), entities=call.params.get("entities"))

    def _file_ref(self, call: Call, key: str, prefix: str) -> tuple[str, bytes | None]:
        upload = call.files.get(key)
        if upload is not None:
            file_id = f"{prefix}-{next(self._file_ids)}"
            self.files_by_id[file_id] = upload
            return file_id, upload
        ref = call.params.get(key)
        if not ref:
            raise _bad_request(f"there is no {key} in the request")
        return str(ref), self.files_by_id.get(str(ref))

    def _m_sendphoto(self, call: Call) -> Any:
        file_id, content = self._file_ref(call, "photo", "AgAC-photo")
        width, height = _image_size(content or b"")
        photo = [
            {
                "file_id": file_id,
                "file_unique_id": f"u-{file_id}",
                "width": width,
                "height": height,
                "file_size": len(content) if content is not None else 0,
            }
        ]
        return self._new_message(call, photo=photo, **self._caption_fields(call))

    def _m_senddocument(self, call: Call) -> Any:
        file_id, content = self._file_ref(call, "document", "BQAC-doc")
        document = {
            "file_id": file_id,
            "file_unique_id": f"u-{file_id}",
            "file_name": call.filenames.get("document") or "document",
            "mime_type": "application/octet-stream",
            "file_size": len(content) if content is not None else 0,
        }
        return self._new_message(call, document=document, **self._caption_fields(call))

    def _m_sendinvoice(self, call: Call) -> Any:
        params = call.params
        for key in ("title", "description", "payload", "currency"):
            if not params.get(key):
                raise _bad_request(f"{key.upper()}_EMPTY" if key != "payload" else "PAYLOAD_EMPTY")
        prices = params.get("prices")
        if not isinstance(prices, list) or not prices:
            raise _bad_request("PRICES_EMPTY")
        invoice = {
            "title": params["title"],
            "description": params["description"],
            "start_parameter": "",
            "currency": params["currency"],
            "total_amount": sum(int(p.get("amount", 0)) for p in prices),
        }
        return self._new_message(call, invoice=invoice)

    def _edit_target(self, call: Call) -> tuple[dict[str, Any] | None, bool]:
        """Return (stored-or-fresh message, is_inline)."""
        if call.params.get("inline_message_id"):
            return None, True
        chat_id = self._require_chat(call)
        message_id = call.params.get("message_id")
        if message_id is None:
            raise _bad_request("message identifier is not specified")
        message = self.messages.get((chat_id, message_id))
        if message is None:
            message = make_message(chat_id, message_id=message_id)
        return message, False

    def _m_editmessagetext(self, call: Call) -> Any:
        text = call.params.get("text")
        if text is None or str(text).strip() == "":
            raise _bad_request("message text is empty")
        if len(str(text)) > MAX_TEXT_LENGTH:
            raise _bad_request("MESSAGE_TOO_LONG")
        markup = call.params.get("reply_markup")
        self._check_markup(markup)
        message, inline = self._edit_target(call)
        if inline or message is None:
            return True
        message = dict(message)
        message["text"] = str(text)
        message.pop("entities", None)
        if call.params.get("entities"):
            message["entities"] = call.params["entities"]
        message["edit_date"] = _now()
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        self.messages[(message["chat"]["id"], message["message_id"])] = message
        return message

    def _m_editmessagecaption(self, call: Call) -> Any:
        message, inline = self._edit_target(call)
        if inline or message is None:
            return True
        message = dict(message)
        message.update({k: v for k, v in self._caption_fields(call).items() if v is not None})
        message["edit_date"] = _now()
        self.messages[(message["chat"]["id"], message["message_id"])] = message
        return message

    def _m_editmessagereplymarkup(self, call: Call) -> Any:
        markup = call.params.get("reply_markup")
        self._check_markup(markup)
        message, inline = self._edit_target(call)
        if inline or message is None:
            return True
        message = dict(message)
        if isinstance(markup, dict) and markup.get("inline_keyboard"):
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        message["edit_date"] = _now()
        self.messages[(message["chat"]["id"], message["message_id"])] = message
        return message

    def _m_deletemessage(self, call: Call) -> Any:
        chat_id = self._require_chat(call)
        self.messages.pop((chat_id, call.params.get("message_id")), None)
        return True

    def _m_getfile(self, call: Call) -> Any:
        file_id = str(call.params.get("file_id") or "")
        content = self.files_by_id.get(file_id)
        if content is None:
            raise _bad_request("invalid file_id")
        return {
            "file_id": file_id,
            "file_unique_id": f"u-{file_id}",
            "file_size": len(content),
            "file_path": f"files/{file_id}",
        }

    def _m_createinvoicelink(self, call: Call) -> Any:
        """An invoice link (the Mini App opens it with `Telegram.WebApp.openInvoice`); its
        parameters are kept in `invoice_links` by link, for the test to pay it."""
        params = call.params
        for key in ("title", "description", "payload", "currency"):
            if not params.get(key):
                raise _bad_request(f"{key.upper()}_EMPTY" if key != "payload" else "PAYLOAD_EMPTY")
        prices = params.get("prices")
        if not isinstance(prices, list) or not prices:
            raise _bad_request("PRICES_EMPTY")
        links: dict[str, dict[str, Any]] = self.__dict__.setdefault("invoice_links", {})
        link = f"https://t.me/$invoice-{len(links) + 1}"
        links[link] = {**params, "total_amount": sum(int(p.get("amount", 0)) for p in prices)}
        return link

    def _m_setchatmenubutton(self, call: Call) -> Any:
        """The bot's menu button; the last one set is kept in `menu_button`."""
        button = call.params.get("menu_button")
        if button is not None and not isinstance(button, dict):
            raise _bad_request("can't parse menu button")
        self.__dict__["menu_button"] = button
        return True
