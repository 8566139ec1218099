"""A person (`/support`, 客服): the buyer's message goes to every operator with a reply
button; the operator's answer reaches the buyer on their own channel; the thread is kept
(engine/support.py, docs/support.md).

- `/support TEXT` sends at once; `/support` alone shows the buyer's latest thread and takes
  their next message as the text.
- Operators: the notice's button (`sup:v1:reply:N`) or `/tickets` then the answer, or
  `/reply N TEXT` typed (WeChat has no buttons under a notice); `sup:v1:close:N` closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine import support
from engine.limits import SUPPORT as SUPPORT_RATE

from . import i18n
from .base import Button, Reply
from .parsing import BadInput, echo, normalise, visible, whole
from .registry import Ctx, button, command, expect_next

SHOWN = 8  # messages of a thread shown in chat
LISTED = 10  # threads `/tickets` lists


def text_after(c: Ctx, words: tuple[str, ...]) -> str:
    """What was written after the command word (`/support@bot …`, `客服 …`), line breaks
    kept; the arguments joined when the adapter gave no text."""
    raw = c.req.text.strip()
    if not raw or c.req.callback is not None:
        return " ".join(c.args).strip()
    head = normalise(raw)
    if head.startswith("/"):
        parts = raw.split(None, 1)
        return parts[1].strip() if len(parts) > 1 else ""
    for word in sorted(words, key=len, reverse=True):
        if head.lower().startswith(word.lower()):
            return raw[len(word):].strip()
    return " ".join(c.args).strip()


async def _lines(c: Ctx, thread: dict[str, Any], *, operator: bool) -> list[str]:
    tz = (await c.cfg()).timezone
    out = []
    for m in thread["messages"]:
        who = ("support.from_buyer" if m["author"] == support.BUYER else "support.from_shop")
        if operator and m["author"] == support.BUYER:
            who = "support.from_them"
        out.append(c.t(who, when=i18n.when(m["at"], tz), text=m["text"][:500]))
    return out


SUPPORT_WORDS = ("support", "客服", "联系客服")


@command("support", aliases=SUPPORT_WORDS[1:], usage_key="usage.support")
async def support_cmd(c: Ctx) -> Reply:
    text = text_after(c, SUPPORT_WORDS)
    if text:
        return await _send(c, text)
    thread = await c.call(support.latest_of, c.app.db, user_id=c.user_id, limit=SHOWN)
    lines = []
    if thread is not None:
        lines.append(c.t("support.thread", thread=thread["thread"],
                         status=c.t(f"support.status.{thread['status']}")))
        lines.extend(await _lines(c, thread, operator=False))
    await expect_next(c, "sup", "write")
    lines.append(c.t("support.prompt"))
    return Reply().text("\n".join(lines))


async def _send(c: Ctx, text: str) -> Reply:
    # each message notifies every operator: a flood is refused before it is written
    if not await asyncio.to_thread(c.app.limiter.allow, SUPPORT_RATE, c.req.identity):
        return c.say("support.slow_down")
    r = await c.call(support.write, c.app.db, user_id=c.user_id, identity=c.req.identity,
                     text=visible(text), key=c.key("support"), operators=c.app.operators)
    return c.say("support.sent", thread=r["thread"])


@button("sup")
async def support_button(c: Ctx) -> Reply:
    """`sup:v1:reply:N` and `sup:v1:close:N` (operators' buttons); `write` and `answer` are
    the follow-ups of `/support` and of the reply button (the next message's text)."""
    action = c.args[0] if c.args else ""
    followup = c.req.callback is None
    if action == "write" and followup and len(c.args) == 1:
        if not c.req.text.strip():
            await expect_next(c, "sup", "write")
            return c.say("support.empty")
        return await _send(c, c.req.text)
    if action not in ("reply", "close", "answer") or len(c.args) != 2 or \
            (action == "answer") != followup:
        raise BadInput("bad.button")
    if not c.operator:
        return c.say("operator_only")
    thread = whole(c.args[1], "bad.button", low=1)
    if action == "close":
        r = await c.call(support.close, c.app.db, thread=thread, operator=c.req.identity)
        return c.say("support.closed" if r["closed"] else "support.was_closed", thread=thread)
    if action == "reply":
        view = await c.call(support.view, c.app.db, thread=thread, limit=SHOWN)
        await expect_next(c, "sup", "answer", str(thread))
        lines = [c.t("support.thread_of", thread=thread, buyer=echo(view["buyer"], 40)),
                 *await _lines(c, view, operator=True), c.t("support.answer_prompt", thread=thread)]
        return Reply().text("\n".join(lines))
    if not c.req.text.strip():
        await expect_next(c, "sup", "answer", str(thread))
        return c.say("support.empty")
    return await _answer(c, thread, c.req.text)


async def _answer(c: Ctx, thread: int, text: str) -> Reply:
    await c.call(support.answer, c.app.db, thread=thread, operator=c.req.identity,
                 text=visible(text), key=c.key("support-answer"))
    return c.say("support.answered", _thread_buttons(c, thread), thread=thread)


def _thread_buttons(c: Ctx, thread: int) -> tuple[tuple[Button, ...], ...]:
    return ((Button(c.t("support.reply_button", thread=thread), f"sup:v1:reply:{thread}"),
             Button(c.t("support.close_button", thread=thread), f"sup:v1:close:{thread}")),)


REPLY_WORDS = ("reply", "回复")


@command("reply", aliases=REPLY_WORDS[1:], operator=True, usage_key="usage.reply")
async def reply_cmd(c: Ctx) -> Reply:
    rest = text_after(c, REPLY_WORDS)
    number, _, text = rest.partition(" ") if " " in rest else (rest, "", "")
    if "\n" in number:
        number, _, more = number.partition("\n")
        text = (more + " " + text).strip()
    if not number or not text.strip():
        raise BadInput("bad.missing")
    return await _answer(c, whole(number, "bad.number", low=1), text)


@command("tickets", aliases=("工单",), operator=True)
async def tickets(c: Ctx) -> Reply:
    r = await c.call(support.open_threads, c.app.db, limit=LISTED)
    if not r["threads"]:
        return c.say("support.none_open")
    lines = [c.t("support.open", count=r["open"])]
    rows = []
    for t in r["threads"]:
        last = t["messages"][-1] if t["messages"] else None
        lines.append(c.t("support.open_line", thread=t["thread"], buyer=echo(t["buyer"], 40),
                         when=i18n.when(t["updated_at"], (await c.cfg()).timezone),
                         text=echo(last["text"], 80) if last else "-"))
        rows.extend(_thread_buttons(c, t["thread"]))
    return Reply().text("\n".join(lines), tuple(rows))
