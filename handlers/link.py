"""`/link` (Telegram) and 绑定 (WeChat): one person, one account (engine/linking.py).

Without an argument: a fresh one-time code, valid for 10 minutes. With the code, sent from
the other app: both identities become one account (wallet, queue entries, points, referrals),
unless both accounts already hold money — then nothing changes and the reply says why.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from engine import linking

from .base import Reply
from .parsing import BadInput, echo
from .registry import Ctx, command

APPS = {"tg": ("Telegram", "Telegram"), "wx": ("微信", "WeChat")}


def new_code() -> str:
    return "".join(secrets.choice(linking.CODE_ALPHABET) for _ in range(linking.CODE_LENGTH))


def _other_app(identity: str, lang: str, code: str) -> tuple[str, str]:
    """The app the code should be sent from (the other one) and what to send there."""
    other = "wx" if identity.startswith("tg:") else "tg"
    zh, en = APPS[other]
    return (zh if lang == "zh" else en), (f"绑定 {code}" if other == "wx" else f"/link {code}")


@command("link", aliases=("绑定", "bind", "关联"), usage_key="usage.link")
async def link(c: Ctx) -> Reply:
    now = datetime.now(UTC)
    if not c.args:
        code = new_code()
        await c.call(linking.link_code, c.app.db, identity=c.req.identity, code=code, at=now)
        minutes = int(linking.CODE_TTL / timedelta(minutes=1))
        app, send = _other_app(c.req.identity, c.lang, code)
        return c.say("link.code", code=code, minutes=minutes, app=app, command=send)
    typed = "".join(c.args)  # "ABCD 2345" and "abcd-2345" are the same code
    if len(typed) > 16 or linking.normalise_code(typed) is None:
        raise BadInput("link.bad_code", value=echo(" ".join(c.args), 24))
    result = await c.call(linking.link_accounts, c.app.db, code=typed,
                          identity=c.req.identity, at=now)
    cur = (await c.cfg()).currency
    return c.say("link.done", identities=c.t("list.sep").join(result["identities"]),
                 wallet=c.money(result["wallet"], cur))
