"""Photos operators send for the catalogue (docs/catalogue.md): downloaded from Telegram
and handed to the conversations as an `Upload` with its reusable `file_id`."""

from __future__ import annotations

import logging

from telegram import Message, Update

from handlers.base import App, Upload

log = logging.getLogger(__name__)

MAX_PHOTO_BYTES = 5 * 1024 * 1024  # what the catalogue keeps (engine/catalogue.py)


async def operator_photo(app: App, update: Update, message: Message | None) -> Upload | None:
    """The photo in `message`, downloaded, when an operator sent it (nobody else's photos
    are read); one too large, or that cannot be fetched, comes as no bytes, which the
    catalogue refuses politely."""
    user = update.effective_user
    if message is None or not message.photo or user is None or \
            f"tg:{user.id}" not in app.operators:
        return None
    best = message.photo[-1]  # Telegram lists the sizes smallest first
    if (best.file_size or 0) > MAX_PHOTO_BYTES:
        return Upload(b"", best.file_id)
    try:
        file = await best.get_file()
        content = bytes(await file.download_as_bytearray())
    except Exception as exc:  # noqa: BLE001 - the operator is told it is not a photo
        log.warning("downloading an operator's photo failed: %s", exc)
        return Upload(b"")
    return Upload(content, best.file_id)
