"""The console chat: the shop's conversations in a terminal (`storefront chat`).

A third channel beside Telegram and WeChat, for trying the shop without any chat account:
each line goes through the same `handlers.dispatch` as a chat message. Console-only lines:

    :as IDENTITY   talk as someone else (e.g. `:as console:alice`)
    :press N       press button N of the last reply
    pay [TOKEN]    pay the last invoice — a console SIMULATION of the channel's payment,
                   recorded through the same `paid` path with a generated charge id
    :help          this list
    :quit          leave (end of input works too)

Operators are STOREFRONT_OPERATORS plus `console:admin`, so a newcomer can try the operator
commands. Photos and documents are saved under `var/console/` and their paths printed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import sys
from pathlib import Path
from typing import TextIO

import handlers
from bot.senders import ANY_CHANNEL, Sender
from handlers import shop
from handlers.base import (
    App,
    Button,
    Card,
    Document,
    Invoice,
    Photo,
    Progress,
    Reply,
    Request,
    Text,
)
from handlers.i18n import money
from handlers.registry import is_identity

CONSOLE_ADMIN = "console:admin"
CONSOLE_HELP = """Console lines (everything else goes to the shop as a chat message):
  :as IDENTITY   talk as someone else (e.g. :as console:alice)
  :press N       press button N of the last reply
  pay [TOKEN]    pay the last invoice (a console simulation: no real money moves)
  :help          this list
  :quit          leave (end of input works too)"""
BANNER = """Rebate storefront — console chat. 返利商城 —— 控制台聊天
You are {identity}. Try /help, /shop, /admin; `:as console:alice` to be someone else,
`pay` to pay an invoice (simulated), `:press N` for buttons, `:quit` to leave."""


class Console:
    def __init__(self, app: App, identity: str = CONSOLE_ADMIN, *, lang: str | None = None,
                 out: TextIO | None = None, save_dir: Path | None = None) -> None:
        self.app = app
        self.identity = identity
        self.lang = lang
        self.out = out or sys.stdout
        self.save_dir = save_dir or Path("var/console")
        self.buttons: list[Button] = []
        self.invoices: dict[str, Invoice] = {}  # identity → its latest invoice
        self._ids = itertools.count(1)
        self._session = secrets.token_hex(4)

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _request(self, **fields: object) -> Request:
        rid = f"{os.getpid()}-{self._session}-{next(self._ids)}"
        return Request(channel="console", identity=self.identity, request_id=rid,
                       lang=self.lang, display_name=None, **fields)  # type: ignore[arg-type]

    async def handle(self, line: str) -> bool:
        """One line typed; False when the console should stop."""
        line = line.strip()
        if not line:
            return True
        if line in (":quit", ":q", ":exit"):
            return False
        if line == ":help":
            self.say(CONSOLE_HELP)
        elif line.startswith(":as"):
            self._switch(line[3:].strip())
        elif line.startswith(":press"):
            await self._press(line[6:].strip())
        elif line == "pay" or line.startswith("pay "):
            await self._pay(line[3:].strip())
        else:
            await self.show(await handlers.dispatch(self.app, self._request(text=line)))
        return True

    def _switch(self, identity: str) -> None:
        if not is_identity(identity):
            self.say("usage: :as IDENTITY, e.g. :as console:alice (prefix:name, no spaces)")
            return
        self.identity = identity
        self.buttons = []
        role = " (operator)" if identity in self.app.operators else ""
        self.say(f"you are now {identity}{role}")

    async def _press(self, which: str) -> None:
        if not which.isdigit() or not 1 <= int(which) <= len(self.buttons):
            self.say(f"usage: :press N, with N from 1 to {len(self.buttons)}"
                     if self.buttons else "there is no button to press")
            return
        b = self.buttons[int(which) - 1]
        if b.data is None:
            self.say(f"(a link: {b.url})")
            return
        await self.show(await handlers.dispatch(self.app, self._request(callback=b.data)))

    async def _pay(self, token: str) -> None:
        invoice = self.invoices.get(self.identity)
        if token:
            invoice = next((i for i in self.invoices.values() if i.token == token), None) or \
                Invoice(order="?", token=token, title="", description="", amount=0,
                        currency=self.app.currency)
        if invoice is None:
            self.say("no invoice to pay: /buy something first")
            return
        self.say(f"[console simulation] paying {money(invoice.amount, invoice.currency)} "
                 f"for order {invoice.order} — no real money moves")
        ok, error = await shop.precheck(self.app, invoice.token, invoice.amount,
                                        invoice.currency, self.identity)
        if not ok:
            self.say(error or "payment refused")
            return
        charge = "console-" + secrets.token_hex(8)
        reply = await shop.paid(self.app, invoice.token, invoice.amount, invoice.currency,
                                charge, "console", self.identity)
        self.invoices.pop(self.identity, None)
        await self.show(reply)

    async def show(self, reply: Reply) -> None:
        self.buttons = []
        for item in reply.items:
            if isinstance(item, Card) and item.photo is not None:  # a product's photo
                self.say(f"[photo {item.photo.sha256[:12]}]")
            if isinstance(item, Text):
                self.say(item.text)
                for row in item.buttons:
                    for b in row:
                        self.buttons.append(b)
                        target = b.url if b.data is None else ""
                        self.say(f"  [{len(self.buttons)}] {b.label} {target}".rstrip())
            elif isinstance(item, Photo | Document):
                self.say(f"[{self._save(item)}] {item.caption}")
            elif isinstance(item, Invoice):
                self.invoices[self.identity] = item
                self.say(f"[invoice] {item.title}: {item.description}\n"
                         f"[console simulation] type `pay` to pay "
                         f"{money(item.amount, item.currency)} as the channel would "
                         f"(no real money moves)")
            elif isinstance(item, Progress):
                self.say(item.initial)
                await handlers.run_job(self.app, item.job, self._request(), self._progress)

    def _progress(self, text: str) -> None:
        self.say(text)

    def _save(self, item: Photo | Document) -> str:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(item, Photo):
            name, content = f"photo-{self._session}-{next(self._ids)}.png", item.png
        else:
            safe = "".join(ch for ch in item.filename if ch.isalnum() or ch in "._-")[:80]
            name, content = f"{self._session}-{safe or 'document'}", item.content
        path = self.save_dir / name
        path.write_bytes(content)
        return f"saved {len(content)} bytes to {path}"


class ConsoleSender:
    """The scheduler's `Sender` in the console: every notification (release paid,
    acceleration, broadcast…) is printed into the console chat, whichever user and channel it
    is for (`tg:2`, `wx:…`, `console:alice`), marked with its recipient. The console is one
    person trying every role, so they see what each user would be told."""

    channel = ANY_CHANNEL

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    async def send(self, identity: str, text: str) -> None:
        self.out.write(f"\n🔔 [to {identity}] {text}\n")
        self.out.flush()


def console_senders(out: TextIO | None = None) -> dict[str, Sender]:
    """The console process's senders: one `ConsoleSender` for every channel."""
    return {ANY_CHANNEL: ConsoleSender(out)}


async def run_console(app: App, identity: str = CONSOLE_ADMIN, *, lang: str | None = None,
                      stdin: TextIO | None = None) -> None:
    """Read lines until `:quit` or end of input; readline editing when on a terminal."""
    source = stdin or sys.stdin
    tty = source.isatty()
    if tty:
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
    console = Console(app, identity, lang=lang)
    console.say(BANNER.format(identity=identity))
    while True:
        if tty:
            try:
                line = await asyncio.to_thread(input, f"{console.identity}> ")
            except EOFError:
                break
        else:
            line = await asyncio.to_thread(source.readline)
            if not line:
                break
            console.say(f"{console.identity}> {line.rstrip()}")
        if not await console.handle(line):
            break
    console.say("bye")
