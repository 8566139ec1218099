"""Files people send: an operator's small text document comes to the conversations with its
caption as the text (`/codes SKU` with a file of codes, or the file alone after `/codes
SKU`, docs/digital.md). Nobody else's files are read."""

from __future__ import annotations

import logging
from typing import Any

from telegram import Message, Update

from handlers.base import App

log = logging.getLogger(__name__)

MAX_DOCUMENT = 512 * 1024  # bytes downloaded; the conversations refuse bigger ones politely
OVERSIZED = b"\0" * (MAX_DOCUMENT + 1)  # what a bigger file is passed on as (not downloaded)


async def message_fields(app: App, update: Update, message: Message | None) -> dict[str, Any]:
    """`text` (the message's, or an operator's document's caption) and `document` (its
    bytes; none when it could not be fetched)."""
    if message is None:
        return {"text": ""}
    doc, user = message.document, update.effective_user
    if doc is None or user is None or f"tg:{user.id}" not in app.operators:
        return {"text": message.text or ""}
    fields: dict[str, Any] = {"text": message.caption or ""}
    if doc.file_size is not None and doc.file_size > MAX_DOCUMENT:
        fields["document"] = OVERSIZED
        return fields
    try:
        data = bytes(await (await doc.get_file()).download_as_bytearray())
    except Exception as exc:  # noqa: BLE001 - the conversations say no codes were found
        log.warning("downloading an operator's document failed: %s", exc)
        data = b""
    fields["document"] = data[:MAX_DOCUMENT + 1]
    return fields
