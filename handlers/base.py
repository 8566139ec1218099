"""The contract between channel adapters and the channel-agnostic conversations.

An adapter (Telegram, WeChat, console) turns what arrived into a `Request`, calls
`await handlers.dispatch(app, request)` and turns the returned `Reply` into its channel's calls.
Conversations never import a channel library; adapters never call the engine directly.

`dispatch` is a coroutine (`async def`): it runs the engine's synchronous database work in
worker threads (`asyncio.to_thread`) and never raises — refusals, bad input, a busy database
and unexpected errors all come back as a polite `Reply` in the user's language. Payments:
`handlers.shop.precheck(...)` / `handlers.shop.paid(...)`; long jobs (`Progress`):
`handlers.run_job(app, job, request, update)`; commands to advertise: `handlers.commands()`;
free text (WeChat, console): `handlers.parse_text(text)`. See docs/conversations.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

# What adapters need of the database comes through here (they import neither engine nor
# storage): its type, its outage, and the health check's ping.
from engine.database import Database, DatabaseUnavailable, ping  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from engine.limits import Rule


class RateLimiter(Protocol):
    """What the dispatcher asks of a rate limiter (the bot gives `App` a concrete one,
    storage/ratelimit.py's through engine/limits.py): take a token from `key`'s bucket for
    `rule`, False when it is empty."""

    def allow(self, rule: Rule, key: str) -> bool: ...


@dataclass(frozen=True)
class Button:
    """An inline button; `data` is short, versioned and validated (`buy:v1:TEA:2`) or a URL."""

    label: str
    data: str | None = None
    url: str | None = None
    web_app: bool = False  # Telegram opens `url` as its Mini App (with the user's initData)


@dataclass(frozen=True)
class Text:
    text: str  # plain text: adapters must not interpret it as HTML/Markdown
    buttons: tuple[tuple[Button, ...], ...] = ()


@dataclass(frozen=True)
class Photo:
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class Document:
    content: bytes
    filename: str
    caption: str = ""


@dataclass(frozen=True)
class Invoice:
    """Ask the channel to collect `amount` fen for order `order`.

    Telegram sends a native invoice whose payload is `token`; WeChat creates a Pay order
    (JSAPI or Native QR) with `out_trade_no` = `order`. The `need_*` flags (an order with
    goods to ship, docs/cart.md) ask Telegram to collect the buyer's name, phone number and
    shipping address with the payment."""

    order: str
    token: str
    title: str
    description: str
    amount: int
    currency: str
    need_name: bool = False
    need_phone_number: bool = False
    need_shipping_address: bool = False


@dataclass(frozen=True)
class Progress:
    """A long operator job: the adapter edits one message as `update` callbacks arrive."""

    job: str
    initial: str



# -- the catalogue (docs/catalogue.md) ------------------------------------------------------

@dataclass(frozen=True)
class Upload:
    """A photo that arrived: its bytes, and the id its channel already has for it (a
    Telegram `file_id`, re-sent instead of the bytes; None when it does not last)."""

    content: bytes
    channel_id: str | None = None


@dataclass(frozen=True)
class MediaRef:
    """A stored photo (`sha256` of its bytes) and each channel's cached id for it. An
    adapter without one loads the bytes (`handlers.catalogue.photo_bytes`), uploads them and
    remembers the id its channel gives back (`handlers.catalogue.remember_photo`)."""

    sha256: str
    telegram: str | None = None
    wechat: str | None = None


@dataclass(frozen=True)
class Card(Text):
    """A product card: a `Text` (so an adapter that knows nothing of photos still says it)
    shown with its photo: Telegram as a photo with the text as caption and the buttons under
    it; WeChat as an image message followed by the text and its links."""

    photo: MediaRef | None = None

Outgoing = Text | Photo | Document | Invoice | Progress


@dataclass
class Reply:
    items: list[Outgoing] = field(default_factory=list)

    def text(self, text: str, buttons: tuple[tuple[Button, ...], ...] = ()) -> Reply:
        self.items.append(Text(text, buttons))
        return self


@dataclass(frozen=True)
class Request:
    """What a user said, in channel-neutral form.

    `identity` is `tg:<user id>` or `wx:<openid>`; `command` is the canonical command name
    (`shop`, `buy`, `me`, …) the adapter recognised, with the rest of the words in `args`;
    `callback` carries button data instead; `request_id` is unique per inbound message and
    is used as the idempotency key of whatever money the request moves."""

    channel: Literal["telegram", "wechat", "console"]
    identity: str
    request_id: str
    command: str | None = None
    args: tuple[str, ...] = ()
    text: str = ""
    callback: str | None = None
    lang: str | None = None
    display_name: str | None = None
    start_payload: str | None = None
    # A photo an operator sent (adapters attach it for operators only): `/product` as its
    # caption, `/photo SKU` in reply to it, or WeChat's image after `图片 SKU`.
    upload: Upload | None = None
    # A small file an operator sent (Telegram: a document the adapter downloaded, its
    # caption in `text`): the codes for `/codes SKU`.
    document: bytes | None = None


@dataclass(frozen=True)
class Channels:
    """What the running channels can do, fixed at start (bot/app.py builds it once from the
    settings): which channels collect money for an `Invoice`, the Telegram bot's username
    (invite links) and WeChat's maker of an official-account parametric QR code (scene =
    invite code) as PNG, which `/invite` on WeChat attaches when set."""

    payments: frozenset[str] = frozenset()
    bot_username: str | None = None
    invite_qr: Callable[[str], Awaitable[bytes | None]] | None = None
    # a one-time dashboard login link for an operator identity (bot/web), when the web
    # pages have a public address (STOREFRONT_PUBLIC_URL)
    web_login: Callable[[str], str] | None = None
    # the buyer's web page (`STOREFRONT_PUBLIC_URL/app`), offered under /shop
    web_app: str | None = None


def _in_process_limiter() -> RateLimiter:
    from engine.limits import RateLimiter as InProcessLimiter

    return InProcessLimiter()


@dataclass(frozen=True)
class App:
    """What conversations need, built once at start and never changed: the shop (its
    database, who operates it, its currency, the per-user rate limiter — in-process unless
    one is given) and what its channels can do (`Channels`)."""

    db: Database
    operators: frozenset[str]
    currency: str = "CNY"
    limiter: RateLimiter = field(default_factory=_in_process_limiter)
    channels: Channels = Channels()

    def takes_payments(self, channel: str) -> bool:
        """Whether `channel` can collect money for an `Invoice`."""
        return channel in self.channels.payments
