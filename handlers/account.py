"""The consumer's own account: `/start`, `/help`, `/lang`, `/me`, `/queue`, `/points`,
`/withdraw`, `/sellpoints`, `/transfer`, `/history` (`/orders`: handlers/orders.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from engine import payouts, report, service, users
from engine.errors import Refusal

from . import i18n
from .base import Button, Reply
from .parsing import BadInput, callback, echo, money, points, whole
from .payouts import method_menu as payout_menu
from .payouts import method_text
from .registry import Ctx, button, command, commands

log = logging.getLogger(__name__)
ALL_WORDS = ("all", "全部")


@command("start", aliases=("开始",), listed=False)
async def start(c: Ctx) -> Reply:
    key = "start.new" if c.member["new"] else "start.again"
    text = c.t(key)
    if c.member["new"] and c.member["referrer_id"]:
        text += "\n" + c.t("start.referred")
    menu = ((Button(c.t("menu.shop"), "cmd:v1:shop"), Button(c.t("menu.me"), "cmd:v1:me")),
            (Button(c.t("menu.invite"), "cmd:v1:invite"), Button(c.t("menu.help"), "cmd:v1:help")))
    # a newcomer's first answer stays short: the welcome and the buttons, the list one tap
    # away (docs/shop.md); a returning member sees the list under the greeting
    more = c.t("start.buttons") if c.member["new"] else help_text(c)
    return Reply().text(text + "\n\n" + more, menu)


def help_text(c: Ctx) -> str:
    lines = [c.t("help.title")]
    for info in commands(operator=False):
        alias = next((a for a in info.aliases if not a.isascii()), "")
        lines.append(c.t("help.line", name=info.name, alias=f" {alias}" if alias else "",
                         text=info.description[c.lang]))
    if c.operator:
        lines.append(c.t("help.operator"))
    return "\n".join(lines)


@command("help", aliases=("帮助", "菜单", "menu", "?"))
async def help_(c: Ctx) -> Reply:
    return Reply().text(help_text(c))


@command("lang", aliases=("语言", "language"), usage_key="usage.lang")
async def lang(c: Ctx) -> Reply:
    if not c.args:
        return c.say("lang.choose", ((Button("中文", "lang:v1:zh"),
                                      Button("English", "lang:v1:en")),))
    return await _set_lang(c, c.args[0])


@button("lang")
async def lang_button(c: Ctx) -> Reply:
    if len(c.args) != 1:
        raise BadInput("bad.button")
    return await _set_lang(c, c.args[0])


async def _set_lang(c: Ctx, word: str) -> Reply:
    choice = {"zh": "zh", "cn": "zh", "中文": "zh", "chinese": "zh", "en": "en",
              "english": "en", "英文": "en"}.get(word.lower())
    if choice is None:
        raise BadInput("bad.lang", value=echo(word, 16))
    await c.call(users.set_lang, c.app.db, c.user_id, choice)
    c.lang = choice
    return c.say("lang.set")


def _exit_line(c: Ctx, a: dict[str, Any]) -> str:
    if a["exit_price_micro"] is None:
        return c.t("me.no_exit")
    return c.t("me.exit", price=i18n.price(a["exit_price_micro"], up=True),
               distance=i18n.price(a["distance_micro"], up=True),
               rise=f"{a['rise_permille'] // 10}.{a['rise_permille'] % 10}")


async def _account(c: Ctx) -> dict[str, Any]:
    """The member's account view: read along with the member when the command is registered
    with `account=True`, else read now."""
    if c.account is not None:
        return c.account
    return await c.call(users.account, c.app.db, c.handle)


@command("me", aliases=("我的", "account", "balance", "账户", "余额"), account=True)
async def me(c: Ctx) -> Reply:
    a = await _account(c)
    cur = a["currency"]
    lines = [c.t("me.title", name=echo(c.member.get("display_name") or c.handle, 40)),
             c.t("me.wallet", wallet=c.money(a["wallet"], cur), held=c.money(a["held"], cur)),
             c.t("me.points", points=i18n.pts(a["points"]), price=i18n.price(a["price_micro"]),
                 value=c.money(a["value"], cur)),
             _exit_line(c, a),
             c.t("me.queue", count=a["entries_waiting"], owed=c.money(a["owed"], cur))]
    if a["referrer"]:
        lines.append(c.t("me.referrer", name=echo(a["referrer"], 40)))
    rows = ((Button(c.t("menu.queue"), "cmd:v1:queue"),
             Button(c.t("menu.history"), "cmd:v1:history")),
            (Button(c.t("menu.orders"), "cmd:v1:orders"),
             Button(c.t("menu.points"), "cmd:v1:points")))
    return Reply().text("\n".join(lines), rows)


def _queue_view(db: Any, handle: str) -> list[dict[str, Any]]:
    """Each waiting entry with its position, the amount ahead and the release estimate."""
    return report.queue_view(db, handle, datetime.now(UTC))


@command("queue", aliases=("排队", "队列"))
async def queue(c: Ctx) -> Reply:
    entries = await c.call(_queue_view, c.app.db, c.handle)
    cfg = await c.cfg()
    if not entries:
        return c.say("queue.empty")
    lines = [c.t("queue.title")]
    for e in entries[:20]:
        est = e.get("estimate")
        lines.append(c.t(
            "queue.entry", seq=e["seq"], amount=c.money(e["amount"]),
            released=c.money(e["released"]), remaining=c.money(e["remaining"]),
            position=e["position"], ahead=c.money(e["owed_ahead"]),
            matures=i18n.when(e["matures_at"], cfg.timezone),
            estimate=i18n.day(est, cfg.timezone) if est else c.t("queue.no_estimate")))
    if len(entries) > 20:
        lines.append(c.t("more", count=len(entries) - 20))
    deposits = int(entries[0].get("deposits_30d") or 0)
    lines.append(c.t("queue.inflow", rate=c.money(int(entries[0].get("daily_inflow") or 0)),
                     deposits=c.t("queue.deposits", amount=c.money(deposits)) if deposits else ""))
    lines.append(c.t("queue.ahead_rule"))
    lines.append(c.t("queue.rule"))
    return Reply().text("\n".join(lines))


@command("points", aliases=("积分", "point"), account=True)
async def points_(c: Ctx) -> Reply:
    a = await _account(c)
    cur = a["currency"]
    lines = [c.t("points.title", points=i18n.pts(a["points"]), price=i18n.price(a["price_micro"]),
                  value=c.money(a["value"], cur), basis=c.money(a["basis"], cur)),
             _exit_line(c, a)]
    if a["points"]:
        lines.append(c.t("points.sell_all", net=c.money(a["value"] - a["sell_fee"], cur),
                         fee=c.money(a["sell_fee"], cur)))
    lines.append(c.t("points.how"))
    return Reply().text("\n".join(lines))


async def _amount_or_all(c: Ctx, balance: str, parse: Callable[[str], int],
                         nothing: str) -> int:
    """The one amount the user typed, or all of `balance` for "all" / "全部"; refused with
    `nothing` (a refusal code) when that is zero."""
    if len(c.args) != 1:
        raise BadInput("bad.missing")
    if c.args[0].lower() in ALL_WORDS:
        a = await c.call(users.account, c.app.db, c.handle)
        amount = int(a[balance])
    else:
        amount = parse(c.args[0])
    if amount == 0:
        raise Refusal(nothing)
    return amount


@command("withdraw", aliases=("提现", "cashout"), usage_key="usage.withdraw")
async def withdraw(c: Ctx) -> Reply:
    amount = await _amount_or_all(c, "wallet", money, "insufficient_balance")
    method = await c.call(payouts.method_of, c.app.db, c.handle)
    if method is None:  # ask where to be paid first (issue 17)
        return await payout_menu(c, c.t("withdraw.need_method"))
    r = await c.call(service.request_withdrawal, c.app.db, user=c.handle, amount=amount,
                     key=c.key("withdraw"))
    return c.say("withdraw.done_to", id=r["withdrawal"], to=method_text(c, method),
                 amount=c.money(r["amount"], (await c.cfg()).currency))


@command("sellpoints", aliases=("卖出积分", "积分提现", "sell"), usage_key="usage.sellpoints")
async def sellpoints(c: Ctx) -> Reply:
    q = await _amount_or_all(c, "points", points, "insufficient_points")
    r = await c.call(service.withdraw_points, c.app.db, user=c.handle, points=q,
                     key=c.key("sellpoints"))
    cur = (await c.cfg()).currency
    return c.say("sellpoints.done", points=i18n.pts(r["points"]), paid=c.money(r["paid"], cur),
                 fee=c.money(r["fee"], cur))


@command("transfer", aliases=("转让", "转赠", "give"), usage_key="usage.transfer")
async def transfer(c: Ctx) -> Reply:
    if len(c.args) != 2:
        raise BadInput("bad.missing")
    q = points(c.args[1])
    target = await c.call(users.find_handle, c.app.db, c.args[0])
    if target is None:
        raise BadInput("bad.user", value=echo(c.args[0], 32))
    r = await c.call(service.transfer_points, c.app.db, sender=c.handle, receiver=target,
                     points=q, key=c.key("transfer"))
    return c.say("transfer.done", points=i18n.pts(r["points"]), to=echo(c.args[0], 32))


STATEMENT_KINDS = ("purchase", "checkout", "release", "withdraw_points", "forced_exit",
                   "withdrawal_request", "withdrawal_approved", "withdrawal_rejected", "refund",
                   "cancel", "withdrawal_transfer", "transfer_paid", "transfer_failed")


def _statement_label(c: Ctx, item: dict[str, Any]) -> str:
    kind = item["kind"]
    if kind == "settle":
        kind = "acceleration" if item["wallet"] > 0 else "minted"
    elif kind == "transfer":
        kind = "transfer_in" if item["points"] > 0 else "transfer_out"
    elif kind not in STATEMENT_KINDS:
        kind = "other"
    return c.t(f"stmt.{kind}")


def _signed(value: int, fmt: Any) -> str:
    return ("+" if value > 0 else "") + fmt(value)


@command("history", aliases=("明细", "账单", "statement"), usage_key="usage.history")
async def history(c: Ctx) -> Reply:
    page = whole(c.args[0], "bad.page", low=1, high=100_000) - 1 if c.args else 0
    return await _history_page(c, page)


@button("hist")
async def history_button(c: Ctx) -> Reply:
    if len(c.args) != 1 or not c.args[0].isdigit() or len(c.args[0]) > 6:
        raise BadInput("bad.button")
    return await _history_page(c, int(c.args[0]))


async def _history_page(c: Ctx, page: int) -> Reply:
    st = await c.call(users.statement, c.app.db, c.handle, page)
    cfg = await c.cfg()
    if not st["items"]:
        return c.say("history.empty")
    lines = [c.t("history.title", page=st["page"] + 1, pages=st["pages"])]
    for item in st["items"]:
        parts = [i18n.when(item["at"], cfg.timezone), _statement_label(c, item)]
        if item["wallet"]:
            parts.append(c.t("history.wallet", amount=_signed(item["wallet"], c.money)))
        if item["held"]:
            parts.append(c.t("history.held", amount=_signed(item["held"], c.money)))
        if item["points"]:
            parts.append(c.t("history.points", amount=_signed(item["points"], i18n.pts)))
        lines.append(" · ".join(parts))
    nav: list[Button] = []
    if st["page"] > 0 and (data := callback("hist", st["page"] - 1)):
        nav.append(Button(c.t("history.newer"), data))
    if st["page"] + 1 < st["pages"] and (data := callback("hist", st["page"] + 1)):
        nav.append(Button(c.t("history.older"), data))
    return Reply().text("\n".join(lines), (tuple(nav),) if nav else ())
