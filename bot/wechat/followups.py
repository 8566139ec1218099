"""What follows the passive reply: customer-service messages sent from background tasks —
the rest of a reply, a whole reply that took too long for the passive one, and the outcome
of an operator's long job (WeChat cannot edit a message, so only the outcome follows)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from handlers.base import App, Progress, Reply, Request

from .messages import Part, split_text
from .sender import WeChatSender

log = logging.getLogger(__name__)

APOLOGY = "抱歉，出了点问题，请稍后再试。\nSorry, something went wrong; please try again later."
Render = Callable[[Reply, Request, str], Awaitable[list[Part]]]


class FollowUps:
    """Background deliveries to one account's users; `render` turns a job's final reply
    into messages (the adapter's `Renderer`, set once both exist)."""

    def __init__(self, app: App, sender: WeChatSender) -> None:
        self.app = app
        self.sender = sender
        self.render: Render | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Any) -> None:
        """Run `coro` in the background, kept until it ends (`drain` waits for it)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send(self, openid: str, parts: list[Part]) -> None:
        self.start(self.deliver(openid, parts))

    def when_done(self, task: asyncio.Task[list[Part]], openid: str) -> None:
        """A reply too slow for the passive answer: its messages follow when it is ready."""
        async def follow() -> None:
            await self.deliver(openid, await task)

        self.start(follow())

    def job(self, item: Progress, request: Request, openid: str) -> None:
        """A `Progress` item's job, run now; its outcome follows."""
        self.start(self._run_job(item, request, openid))

    async def _run_job(self, item: Progress, request: Request, openid: str) -> None:
        import handlers

        try:
            final = await handlers.run_job(self.app, item.job, request, lambda _text: None)
        except Exception:
            log.exception("wechat: job %s failed", item.job)
            final = APOLOGY
        if isinstance(final, Reply) and self.render is not None:
            await self.deliver(openid, await self.render(final, request, openid))
        elif isinstance(final, str) and final:
            await self.deliver(openid, [Part(text=t) for t in split_text(final)])

    async def deliver(self, openid: str, parts: list[Part]) -> None:
        for part in parts:
            try:
                await self.sender.send_part(openid, part)
            except Exception as exc:  # noqa: BLE001 - one lost follow-up must not stop the rest
                log.warning("wechat: customer-service message to %s failed: %s", openid, exc)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for the follow-ups in flight (shutdown, tests)."""
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))

    async def aclose(self) -> None:
        await self.drain()
        for task in list(self._tasks):
            task.cancel()
