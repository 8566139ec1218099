"""The command registry and the dispatcher every adapter calls.

Each conversation is one short `async def` taking a `Ctx`, registered once with `@command`
(or `@button` for inline-button data). `dispatch` validates the request, applies the rate
limits, resolves who is talking (creating the user at first contact), checks operator rights,
runs the handler and turns every failure into a polite reply in the user's language.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple, TypeVar

from engine import pending, users
from engine.config import Config
from engine.database import Database, DatabaseUnavailable
from engine.errors import Refusal
from engine.limits import COMMANDS as COMMAND_RATE
from engine.limits import PURCHASES as PURCHASE_RATE

from . import i18n
from .base import App, Button, Reply, Request
from .parsing import MAX_TEXT, BadInput, echo, is_clean, normalise, parse_callback

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[["Ctx"], Awaitable[Reply]]


@dataclass(frozen=True)
class Command:
    name: str
    fn: Handler
    aliases: tuple[str, ...]
    operator: bool
    usage_key: str | None
    purchase: bool
    listed: bool
    account: bool  # reads the member's account view (`users.account`): read with `resolve`


class CommandInfo(NamedTuple):
    """What an adapter advertises: Telegram's setMyCommands, WeChat's text commands."""

    name: str
    aliases: tuple[str, ...]
    operator: bool
    description: dict[str, str]


_COMMANDS: dict[str, Command] = {}
_WORDS: dict[str, str] = {}  # every name and alias, lower-cased → canonical name
_BUTTONS: dict[str, tuple[Handler, bool, bool]] = {}  # kind → (handler, operator, purchase)


def command(name: str, *, aliases: tuple[str, ...] = (), operator: bool = False,
            usage_key: str | None = None, purchase: bool = False, listed: bool = True,
            account: bool = False) -> Callable[[Handler], Handler]:
    """Register a command handler under `name` and its `aliases` (Chinese words included).
    `account`: the handler shows the member's account, which the dispatcher then reads in
    the same snapshot as the member (`ctx.account`), saving a second read."""
    def register(fn: Handler) -> Handler:
        spec = Command(name, fn, aliases, operator, usage_key, purchase, listed, account)
        for word in (name, *aliases):
            assert word.lower() not in _WORDS, f"command word {word} registered twice"
            _WORDS[word.lower()] = name
        _COMMANDS[name] = spec
        return fn

    return register


def button(kind: str, *, operator: bool = False,
           purchase: bool = False) -> Callable[[Handler], Handler]:
    """Register the handler of button data `kind:v1:…`; the fields arrive as `ctx.args`."""
    def register(fn: Handler) -> Handler:
        _BUTTONS[kind] = (fn, operator, purchase)
        return fn

    return register


# What a person's next plain message is for (`/support` then the text, an operator's reply
# button then the answer, `/codes SKU` then the codes): kept by `engine.pending` in the
# database, so a restart and a second `storefront run` process see it too. It lasts
# `pending.TTL`; any other request (a command, a button) forgets it.
async def expect_next(c: Ctx, kind: str, *fields: str) -> None:
    """The next plain text `c`'s person sends goes to the `@button(kind)` handler, with
    `fields` as its args and the text in `ctx.req.text` (`ctx.req.callback` is None)."""
    await c.call(pending.expect, c.app.db, c.req.identity, kind, fields)


def _is_plain(request: Request) -> bool:
    return request.callback is None and request.command is None and \
        not request.text.lstrip().startswith("/")


# The order menus list consumer commands in; the rest follow in registration order.
MENU_ORDER = ("shop", "buy", "me", "cart", "queue", "points", "orders", "history", "withdraw",
              "payout", "sellpoints", "transfer", "invite", "lang", "help")


def commands(*, operator: bool | None = None) -> list[CommandInfo]:
    """Every advertised command: name, aliases, operator-only, description in zh and en."""
    chosen = [c for c in _COMMANDS.values()
              if c.listed and (operator is None or c.operator == operator)]
    chosen.sort(key=lambda c: MENU_ORDER.index(c.name) if c.name in MENU_ORDER
                else len(MENU_ORDER))
    return [CommandInfo(c.name, c.aliases, c.operator,
                        {lang: i18n.t(lang, f"cmd.{c.name}") for lang in i18n.LANGS})
            for c in chosen]


def lookup(word: str) -> Command | None:
    return _COMMANDS.get(_WORDS.get(word.lower(), ""))


def _is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def parse_text(text: str) -> tuple[str | None, tuple[str, ...]]:
    """`/buy@shop_bot TEA 2` → (`buy`, (`TEA`, `2`)); `购买 TEA 2` and `购买TEA` too; `buy TEA`
    (an English command word first). A slash command nobody knows keeps its word, so the
    reply can say so; text that is no command gives (None, words)."""
    s = normalise(text).strip()
    if not s:
        return None, ()
    if s.startswith("/"):
        head, *rest = s[1:].split()
        word = head.split("@", 1)[0].lower() if head else ""
        return _WORDS.get(word, word or None), tuple(rest)
    for alias in sorted((w for w in _WORDS if _is_cjk(w[0])), key=len, reverse=True):
        if s.startswith(alias):
            tail = s[len(alias):]
            if not tail or not _is_cjk(tail[0]):
                return _WORDS[alias], tuple(tail.split())
    words = s.split()
    if words[0].lower() in _WORDS:
        return _WORDS[words[0].lower()], tuple(words[1:])
    return None, tuple(words)


@dataclass
class Ctx:
    """One request being answered: who asks, in which language, with which arguments."""

    app: App
    req: Request
    member: dict[str, Any]
    lang: str
    command: str
    args: tuple[str, ...]
    _cfg: Config | None = field(default=None, repr=False)
    # `users.account(handle)` as read with the member, for commands registered with
    # `account=True`; None otherwise
    account: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def operator(self) -> bool:
        return self.req.identity in self.app.operators

    @property
    def handle(self) -> str:
        return str(self.member["handle"])

    @property
    def user_id(self) -> int:
        return int(self.member["user_id"])

    def t(self, key: str, /, **params: Any) -> str:
        return i18n.t(self.lang, key, **params)

    def say(self, key: str, buttons: tuple[tuple[Button, ...], ...] = (), /,
            **params: Any) -> Reply:
        return Reply().text(self.t(key, **params), buttons)

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run synchronous engine work in a worker thread, off the adapter's event loop."""
        return await asyncio.to_thread(partial(fn, *args, **kwargs))

    async def cfg(self) -> Config:
        if self._cfg is None:
            self._cfg = await self.call(self.app.db.read, users.store_config)
        assert self._cfg is not None
        return self._cfg

    def key(self, what: str) -> str:
        """The idempotency key of the money this request moves (SPEC §6): a retried
        delivery of the same message never moves it twice."""
        rid = self.req.request_id
        if len(rid) > 100:
            rid = uuid.uuid5(uuid.NAMESPACE_URL, rid).hex
        return f"req:{self.req.channel}:{rid}:{what}"

    def money(self, fen: int, currency: str | None = None) -> str:
        return i18n.money(fen, currency or (self._cfg.currency if self._cfg else
                                            self.app.currency))


def last_seen(db: Database, identity: str) -> datetime | None:
    """When `identity` last wrote to the shop (WeChat's 48-hour customer-service window)."""
    return users.last_seen(db, identity)


def is_identity(text: str) -> bool:
    """`prefix:name` as identities are written (`tg:42`, `wx:<openid>`, `console:alice`)."""
    return bool(users.IDENTITY.match(text))


def first_lang(request: Request) -> str:
    """The language of a newcomer: their client's (zh* → zh, else en); WeChat without one
    is Chinese, anything else without one English."""
    return users.normalise_lang(request.lang, "zh" if request.channel == "wechat" else "en")


def _clean_request(request: Request) -> bool:
    parts = [request.text, *request.args, request.callback or "", request.display_name or "",
             request.start_payload or ""]
    # as many words as a message of MAX_TEXT characters can hold (`/codes SKU` then a code a
    # line: Telegram gives every line as an argument)
    return all(isinstance(p, str) and is_clean(p) for p in parts) and \
        len(request.args) <= MAX_TEXT // 2 and len(request.request_id or "") <= 200


async def dispatch(app: App, request: Request) -> Reply:
    """Answer one request. Never raises: every outcome is a `Reply` for the adapter to send."""
    state = {"lang": first_lang(request)}
    try:
        return await _dispatch(app, request, state)
    except BadInput as exc:
        return Reply().text(i18n.t(state["lang"], exc.key, **exc.params))
    except Refusal as exc:
        return Reply().text(i18n.t(state["lang"], f"refusal.{exc.code}"))
    except DatabaseUnavailable:
        log.warning("request %s: database unavailable", request.request_id)
        return Reply().text(i18n.t(state["lang"], "error.busy"))
    except Exception:
        ref = uuid.uuid4().hex[:8]
        log.exception("request %s (ref %s) failed", getattr(request, "request_id", "?"), ref)
        return Reply().text(i18n.t(state["lang"], "error.unexpected", ref=ref))


def _command_asked(request: Request) -> tuple[str | None, tuple[str, ...]]:
    """The command a request names, as typed or as a command-menu button (`cmd:v1:me`)."""
    if request.callback is None:
        if request.command:
            return _WORDS.get(request.command.lower(), request.command), request.args
        return parse_text(request.text)
    try:
        kind, fields = parse_callback(request.callback)
    except BadInput:
        return None, ()  # said again below, once the member is known
    if kind == "cmd" and len(fields) == 1 and lookup(fields[0]) is not None:
        return _WORDS[fields[0].lower()], ()
    return None, ()


async def _dispatch(app: App, request: Request, state: dict[str, str]) -> Reply:
    if not isinstance(request.identity, str) or not users.IDENTITY.match(request.identity):
        raise BadInput("bad.identity")
    if not _clean_request(request):
        raise BadInput("bad.text", limit=4096)
    name, args = _command_asked(request)
    payload = request.start_payload
    if payload is None and request.callback is None and name == "start" and len(args) == 1:
        payload = args[0]  # `/start CODE` typed or passed as an argument
    asked = _COMMANDS.get(name or "")
    with_account = asked is not None and asked.account
    lim = app.limiter

    def admit() -> tuple[dict[str, Any], dict[str, Any] | None,
                         pending.Waiting | None] | None:
        # One hop to a worker thread for the rate limit (a Redis round trip when shared),
        # the member, with their account when the command shows it, and what their plain
        # message was awaited for (one primary-key read when nothing).
        if not lim.allow(COMMAND_RATE, request.identity):
            return None
        return users.admit(app.db, request.identity, with_account=with_account,
                           plain=_is_plain(request), lang=first_lang(request),
                           display_name=request.display_name, start_payload=payload)

    admitted = await asyncio.to_thread(admit)
    if admitted is None:
        raise BadInput("slow_down")
    member, account, follow = admitted
    lang = member["lang"] if member["lang"] in i18n.LANGS else first_lang(request)
    state["lang"] = lang
    if member["blocked"]:
        return Reply().text(i18n.t(lang, "blocked"))

    if follow is not None and follow[0] in _BUTTONS:
        fn, operator_only, purchase = _BUTTONS[follow[0]]
        ctx = Ctx(app, request, member, lang, follow[0], follow[1])
        return await _run(ctx, fn, operator_only, purchase, None)
    if request.callback is not None:
        kind, fields = parse_callback(request.callback)
        if not (kind == "cmd" and len(fields) == 1 and lookup(fields[0]) is not None):
            if kind not in _BUTTONS:
                raise BadInput("bad.button")
            fn, operator_only, purchase = _BUTTONS[kind]
            ctx = Ctx(app, request, member, lang, kind, fields)
            return await _run(ctx, fn, operator_only, purchase, None)
    if name is None:
        if member["new"]:
            name = "start"
        else:
            key = "not_understood" if request.text.strip() else "empty_message"
            return Reply().text(i18n.t(lang, key, text=echo(request.text)))
    spec = _COMMANDS.get(name)
    if spec is None:
        return Reply().text(i18n.t(lang, "unknown_command", command=echo(name, 32)))
    ctx = Ctx(app, request, member, lang, spec.name, tuple(args), account=account)
    return await _run(ctx, spec.fn, spec.operator, spec.purchase, spec.usage_key)


async def _run(ctx: Ctx, fn: Handler, operator_only: bool, purchase: bool,
               usage_key: str | None) -> Reply:
    if operator_only and not ctx.operator:
        log.info("operator command %s refused for %s", ctx.command, ctx.req.identity)
        return ctx.say("operator_only")
    if operator_only:  # the audit trail of reads (what changes money is also journaled)
        log.info("operator %s: %s %s", ctx.req.identity, ctx.command, " ".join(ctx.args)[:80])
    if purchase and not await asyncio.to_thread(ctx.app.limiter.allow, PURCHASE_RATE,
                                                ctx.req.identity):
        return ctx.say("slow_down_buy")
    try:
        return await fn(ctx)
    except BadInput as exc:
        text = ctx.t(exc.key, **exc.params)
        if usage_key:
            text += "\n" + ctx.t(usage_key)
        return Reply().text(text)
