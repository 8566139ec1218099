"""Payouts in chat (issue 17): `/payout` (where my withdrawals are paid), the operators'
`/withdrawals` board, `/payoutlimits` and `/payoutinfo`; and for WeChat Pay's adapter, the
transfer notification and the confirm page's facts (bot/wechatpay/transfers.py).

Payout details are shown masked (`支付宝 张* ****5678`); the full account appears only in
an operator's `/payoutinfo` reply, for a manual payout, and is never logged."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from engine import payouts, service, transfers
from engine.database import Database
from engine.errors import Refusal

from . import i18n
from .base import Button, Reply
from .parsing import BadInput, callback, echo, money, whole
from .registry import Ctx, button, command

log = logging.getLogger(__name__)

KIND_WORDS = {"wechat": "wechat", "wx": "wechat", "微信": "wechat", "零钱": "wechat",
              "alipay": "alipay", "支付宝": "alipay", "bank": "bank", "银行卡": "bank",
              "card": "bank"}
LIMIT_WORDS = {"min": "payout.min", "最低": "payout.min", "daily": "payout.user_daily_max",
               "每日": "payout.user_daily_max", "shop": "payout.shop_daily_max",
               "全店": "payout.shop_daily_max"}


def method_text(c: Ctx, method: dict[str, Any] | None) -> str:
    """Where the money goes, as the user reads it (masked)."""
    if method is None:
        return c.t("payout.none")
    label = c.t(f"payout.kind.{method['kind']}")
    return f"{label} {echo(method['masked'], 64)}".strip()


async def method_menu(c: Ctx, intro: str) -> Reply:
    """The current method and how to set one: a button for the WeChat balance (when the
    user has a WeChat identity), the commands for Alipay and bank cards."""
    # the WeChat balance only where WeChat Pay is configured to pay it
    has_wx = c.app.takes_payments("wechat") and \
        await c.call(payouts.has_wechat, c.app.db, c.handle)
    rows: tuple[tuple[Button, ...], ...] = ()
    data = callback("po", "wx")
    if has_wx and data:
        rows = ((Button(c.t("payout.button.wechat"), data),),)
    lines = [intro, c.t("payout.how_alipay"), c.t("payout.how_bank")]
    if not has_wx and c.app.takes_payments("wechat"):
        lines.append(c.t("payout.how_wechat_missing"))
    return Reply().text("\n".join(lines), rows)


# In the help list after `/withdraw` (which also leads here when no method is set).
@command("payout", aliases=("收款方式", "提现方式"), usage_key="usage.payout")
async def payout(c: Ctx) -> Reply:
    if not c.args:
        current = await c.call(payouts.method_of, c.app.db, c.handle)
        return await method_menu(c, c.t("payout.current", method=method_text(c, current)))
    kind = KIND_WORDS.get(c.args[0].lower())
    if kind is None:
        raise BadInput("bad.payout_kind", value=echo(c.args[0], 16))
    if kind == "wechat":
        if len(c.args) > 2:
            raise BadInput("bad.missing")
        name = c.args[1] if len(c.args) == 2 else None
        account = None
    else:
        if len(c.args) < 3:
            raise BadInput("bad.missing")
        name, account = c.args[1], "".join(c.args[2:])  # a card number typed in groups
    return await _set(c, kind, name, account)


async def _set(c: Ctx, kind: str, name: str | None, account: str | None) -> Reply:
    if kind == "wechat" and not c.app.takes_payments("wechat"):
        return c.say("payout.wechat_off")  # nothing would ever pay it
    r = await c.call(service.set_payout_method, c.app.db, user=c.handle, kind=kind, name=name,
                     account=account)
    text = c.t("payout.set", method=method_text(c, r))
    if kind == "wechat" and not r["real_name"]:
        big = c.money(payouts.REAL_NAME_FROM, (await c.cfg()).currency)
        text += "\n" + c.t("payout.real_name_hint", amount=big)
    return Reply().text(text)


@button("po")
async def payout_button(c: Ctx) -> Reply:
    if c.args != ("wx",):
        raise BadInput("bad.button")
    return await _set(c, "wechat", None, None)


# -- operators ---------------------------------------------------------------------------------

def _age(c: Ctx, at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    minutes = max(0, int((now - at).total_seconds() // 60))
    if minutes < 120:
        return c.t("age.minutes", n=minutes)
    if minutes < 48 * 60:
        return c.t("age.hours", n=minutes // 60)
    return c.t("age.days", n=minutes // 1440)


@command("withdrawals", aliases=("提现审核", "提现列表"), operator=True)
async def withdrawals(c: Ctx) -> Reply:
    """Pending (with approve/reject buttons), in transfer, paid and failed withdrawals, with
    amounts and ages."""
    board = await c.call(payouts.board, c.app.db)
    cfg = await c.cfg()
    now = datetime.now(UTC)
    lines: list[str] = []
    buttons: list[tuple[Button, ...]] = []
    for status in payouts.BOARD:
        group = board[status]
        if not group["count"]:
            continue
        lines.append(c.t(f"withdrawals.group.{status}", count=group["count"],
                         amount=c.money(group["amount"], cfg.currency)))
        for w in group["rows"]:
            since = w["requested_at"] if status in ("pending", "transfer") else w["decided_at"]
            lines.append(c.t("withdrawals.row", id=w["id"], user=echo(w["user"], 32),
                             amount=c.money(w["amount"], cfg.currency),
                             to=method_text(c, {"kind": w["method"], "masked": w["payee"] or ""})
                             if w["method"] else c.t("payout.none"),
                             age=_age(c, since, now), state=w["state"] or "").rstrip())
            ok, no = callback("wd", "a", w["id"]), callback("wd", "r", w["id"])
            if status == "pending" and ok and no and len(buttons) < 10:
                buttons.append((Button(c.t("withdrawals.approve", id=w["id"]), ok),
                                Button(c.t("withdrawals.reject", id=w["id"]), no)))
    if not lines:
        return c.say("withdrawals.empty")
    return Reply().text("\n".join([c.t("withdrawals.board"), *lines]), tuple(buttons))


@command("payoutlimits", aliases=("提现限额",), operator=True, usage_key="usage.payoutlimits")
async def payoutlimits(c: Ctx) -> Reply:
    """`/payoutlimits` shows them; `/payoutlimits min 10.00 daily 500 shop 20000` sets any
    of them (0 turns one off)."""
    if len(c.args) % 2:
        raise BadInput("bad.missing")
    values: dict[str, int] = {}
    for word, amount in zip(c.args[::2], c.args[1::2], strict=True):
        key = LIMIT_WORDS.get(word.lower())
        if key is None:
            raise BadInput("bad.payout_limit", value=echo(word, 16))
        values[key] = 0 if amount.strip() in ("0", "0.00", "off", "关") else money(amount)
    if values:
        lim = await c.call(service.set_payout_limits, c.app.db, values)
    else:
        lim = await c.call(payouts.current_limits, c.app.db)
    cur = (await c.cfg()).currency

    def show(fen: int) -> str:
        return c.money(fen, cur) if fen else c.t("payout.no_limit")

    return c.say("payout.limits", minimum=show(lim.minimum), daily=show(lim.user_daily_max),
                 shop=show(lim.shop_daily_max))


@command("payoutinfo", aliases=("收款信息",), operator=True, usage_key="usage.payoutinfo")
async def payoutinfo(c: Ctx) -> Reply:
    """Where to pay a manual withdrawal by hand: the full account, in this reply only."""
    if len(c.args) != 1:
        raise BadInput("bad.missing")
    wid = whole(c.args[0], "bad.withdrawal_id", low=1)
    info = await c.call(payouts.manual_details, c.app.db, wid)
    if info is None:
        return c.say("refusal.unknown_withdrawal")
    cur = (await c.cfg()).currency
    if info["account"] is None:
        return c.say("payout.info_none", id=wid, amount=c.money(info["amount"], cur))
    return c.say("payout.info", id=wid, amount=c.money(info["amount"], cur),
                 kind=c.t(f"payout.kind.{info['kind']}"), name=echo(info["name"] or "-", 32),
                 account=echo(info["account"], 64))


# -- for WeChat Pay's adapter ------------------------------------------------------------------

def transfer_notified(db: Database, no: str, bill: dict[str, Any], at: datetime) -> str:
    """A verified transfer notification's bill recorded: `ok`, `unknown` (no such transfer)
    or `mismatch` (not our amount)."""
    try:
        result = transfers.record_answer(db, no, bill, at)
    except Refusal as refusal:
        return "unknown" if refusal.code == "unknown_withdrawal" else "mismatch"
    if result.get("conflict"):
        log.error("transfer %s ended %s here but WeChat Pay says %s: check it by hand",
                  no, result["state"], bill.get("state"))
    return "ok"


def confirm_facts(db: Database, token: str) -> dict[str, Any] | None:
    facts = transfers.confirm_facts(db, token)
    if facts is not None:
        facts["amount_text"] = i18n.money(facts["amount"])
    return facts


__all__ = ["confirm_facts", "method_text", "transfer_notified"]
