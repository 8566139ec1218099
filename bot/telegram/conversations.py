"""The channel-agnostic side the adapter drives, behind one seam.

`Conversations.from_handlers()` binds the real `handlers` package; tests may pass their own.
The adapter calls these and nothing else of `handlers/` (besides the reply types).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from handlers.base import App, Reply, Request

# Telegram command names: 1–32 of a-z, 0-9 and underscore.
COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")


@dataclass(frozen=True)
class MenuCommand:
    """One registry command as Telegram sees it: its names and its menu descriptions."""

    name: str
    aliases: tuple[str, ...] = ()
    operator: bool = False
    descriptions: Mapping[str, str] = field(default_factory=dict)

    def telegram_names(self) -> list[str]:
        """The canonical name and the aliases Telegram accepts as `/commands`, lower-cased."""
        names = [self.name, *self.aliases]
        return [n for n in dict.fromkeys(x.lower() for x in names) if COMMAND_NAME.fullmatch(n)]

    def description(self, lang: str) -> str:
        text = (self.descriptions.get(lang) or self.descriptions.get("en") or self.name).strip()
        return text[:256] or self.name


def menu_command(entry: Any) -> MenuCommand:
    """Normalise a `handlers.registry.commands()` entry (object or mapping)."""
    get = entry.get if isinstance(entry, Mapping) else (lambda k, d=None: getattr(entry, k, d))
    descriptions = get("descriptions", None) or get("description", None) or {}
    if isinstance(descriptions, str):
        descriptions = {"en": descriptions}
    return MenuCommand(name=str(get("name")), aliases=tuple(get("aliases", ()) or ()),
                       operator=bool(get("operator", False)), descriptions=dict(descriptions))


async def invoke(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Await `fn` if it is a coroutine function; otherwise run it in a worker thread (it may
    do blocking database work) and await what it returns if that is awaitable."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


@dataclass(frozen=True)
class Conversations:
    dispatch: Callable[[App, Request], Any]
    precheck: Callable[..., Any]
    paid: Callable[..., Any]
    run_job: Callable[..., Any]
    menu: Sequence[MenuCommand]
    # a payment's shipping details (`order_info`), recorded before the payment
    shipping: Callable[..., Any] | None = None

    @classmethod
    def from_handlers(cls) -> Conversations:
        import handlers
        from handlers import delivery, registry, shop

        return cls(dispatch=handlers.dispatch, precheck=shop.precheck, paid=shop.paid,
                   run_job=handlers.run_job,
                   menu=tuple(menu_command(c) for c in registry.commands()),
                   shipping=delivery.shipping_details)

    async def reply_to(self, app: App, request: Request) -> Reply:
        reply = await invoke(self.dispatch, app, request)
        return reply if isinstance(reply, Reply) else Reply()
