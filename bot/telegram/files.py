"""Files people send: a small text document comes to the conversations with its caption as
the text (`/codes SKU` with a file of codes, or the file alone after `/codes SKU`)."""

from __future__ import annotations

import logging
from typing import Any

from telegram import Message

log = logging.getLogger(__name__)

MAX_DOCUMENT = 512 * 1024  # bytes downloaded; the conversations refuse bigger ones politely
OVERSIZED = b"\0" * (MAX_DOCUMENT + 1)  # what a bigger file is passed on as (not downloaded)


async def message_fields(message: Message | None) -> dict[str, Any]:
    """`text` (the message's, or a document's caption) and `document` (its bytes)."""
    if message is None:
        return {"text": ""}
    doc = message.document
    if doc is None:
        return {"text": message.text or ""}
    fields: dict[str, Any] = {"text": message.caption or ""}
    if doc.file_size is not None and doc.file_size > MAX_DOCUMENT:
        fields["document"] = OVERSIZED
        return fields
    try:
        data = await (await doc.get_file()).download_as_bytearray()
    except Exception:  # noqa: BLE001 - the conversations say the file could not be read
        log.warning("document %s could not be downloaded", doc.file_id, exc_info=True)
        data = bytearray()
    fields["document"] = bytes(data[:MAX_DOCUMENT + 1])
    return fields
