"""What the deliverer asks of a sender, and what a sender's errors mean for the outbox.

The scheduler is given its senders (`build_scheduler(settings, db, senders)`); the channels'
senders (bot/senders.py, bot/wechat/sender.py, the console's) implement this contract. A
`Sender` sends one plain text to one identity (`tg:<id>`, `wx:<openid>`) and either returns
(delivered) or raises one of:

- `Unreachable`: this identity cannot be reached (blocked the bot, unsubscribed, unknown
  chat); the deliverer tries the user's next identity, then marks the row `unreachable`;
- `RetryLater(seconds)`: the channel asked us to slow down (Telegram `RetryAfter`);
- `Rejected`: this message can never be sent as it is (a permanent error);
- anything else: a transient failure, retried with backoff.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

# The key of a sender that serves every identity no other sender serves (the console, which
# prints every user's notifications into its chat).
ANY_CHANNEL = "*"

# kind, params, lang → the text a user reads (bot gives handlers.notify.render)
Renderer = Callable[[str, Mapping[str, Any], str], str]
# Inline buttons under a message: rows of (label, callback data)
ButtonRows = tuple[tuple[tuple[str, str], ...], ...]
# kind, params, lang → the buttons under it, usually none (bot gives handlers.notify.buttons).
# A sender that can show them has `send_buttons(identity, text, rows)`; the others are sent
# the text alone, which then says what to type instead (WeChat).
ButtonMaker = Callable[[str, Mapping[str, Any], str], ButtonRows]


class DeliveryError(Exception):
    """A send did not go through; the subclass says what to do about it."""


class Unreachable(DeliveryError):
    """This identity cannot be reached; try another, never this one again for this row."""


class RetryLater(DeliveryError):
    def __init__(self, seconds: float, detail: str = "") -> None:
        super().__init__(detail or f"retry after {seconds:g} s")
        self.seconds = seconds


class Rejected(DeliveryError):
    """Permanent: the channel will never accept this message."""


class Sender(Protocol):
    channel: str  # the identity prefix it serves: "tg", "wx" (or ANY_CHANNEL)

    async def send(self, identity: str, text: str) -> None: ...
