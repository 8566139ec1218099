"""The webhook endpoint: Telegram POSTs updates; only it knows the secret token.

`telegram_webhook_route(application, secret)` returns a Starlette endpoint for the one HTTP
server (bot/http.py mounts it at POST /telegram). Without the right
`X-Telegram-Bot-Api-Secret-Token` header nothing is read: a forged update could otherwise
claim a successful payment.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from telegram import Update
from telegram.ext import Application

from .inbox import store

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # Telegram updates are a few KiB; anything near this is not one
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def telegram_webhook_route(application: Application, secret: str | SecretStr | None
                           ) -> Callable[[Request], Awaitable[Response]]:
    """An async `(request) -> Response` handler feeding `application.update_queue`.

    403 without the right secret (always, if none is configured), 413 for an oversized
    body, 400 for anything that is not a JSON update, 200 once the update is stored in
    the inbox (503 if it cannot be: Telegram sends it again)."""
    expected = (secret.get_secret_value() if isinstance(secret, SecretStr) else secret or "")
    expected_bytes = expected.encode("utf-8")

    async def telegram_webhook(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "replace")
        if not expected_bytes or not hmac.compare_digest(given, expected_bytes):
            return PlainTextResponse("forbidden", status_code=403)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return PlainTextResponse("too large", status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return PlainTextResponse("too large", status_code=413)
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
                raise ValueError("not an update")
            update = Update.de_json(data, application.bot)
        except Exception:  # noqa: BLE001 - any malformed body is the sender's problem
            log.warning("webhook: ignoring a body that is not a Telegram update")
            return PlainTextResponse("bad request", status_code=400)
        processor = application.bot_data.get("inbox")
        if processor is None:  # no database behind the bot (the adapter's own tests)
            await application.update_queue.put(update)
            return Response(status_code=200)
        # Durable before the 200: after it Telegram never sends this update again.
        try:
            await store(processor.db, [(update, data)])
        except Exception:  # noqa: BLE001 - not stored: Telegram retries a non-2xx answer
            log.exception("webhook: update %s could not be stored", data["update_id"])
            return PlainTextResponse("unavailable", status_code=503)
        processor.wake()
        return Response(status_code=200)

    return telegram_webhook
