"""`/weblink` (后台): an operator asks for a one-time login link to the web dashboard
(`/admin`, bot/web), good for ten minutes and one sign-in (docs/web.md)."""

from __future__ import annotations

from .base import Reply
from .registry import Ctx, command


@command("weblink", aliases=("后台",), operator=True)
async def weblink(c: Ctx) -> Reply:
    make = c.app.channels.web_login
    if make is None:
        return c.say("weblink.unset")
    return Reply().text(c.t("weblink.link", link=make(c.req.identity)))
