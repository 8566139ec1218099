"""Operator commands (SPEC §1): only identities in `App.operators` may run them; everyone
else is refused politely by the dispatcher before anything is read or changed. Every action
passes `actor=<identity>` to the engine, so the journal records who did it. The commands
over the whole store (user lookup, broadcast, pause, verify, export) are in admin_store.py."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from engine import jobs, report, service, users
from engine.accounts import SCHEMES
from engine.money import AmountError, parse_rate
from engine.orders import ORDER_REF

from . import i18n, onsale
from .base import App, Button, Database, Photo, Progress, Reply, Request
from .parsing import BadInput, echo, money, normalise, qty, sku, whole
from .registry import Ctx, button, command, commands, first_lang, lookup
from .shop import render_receipt

log = logging.getLogger(__name__)



@command("admin", aliases=("管理",), operator=True)
async def admin(c: Ctx) -> Reply:
    names = ("pool", "release", "withdrawals", "settings", "verify", "export", "pause",
             "resume")
    rows = []
    for i in range(0, len(names), 3):
        rows.append(tuple(Button("/" + n, f"cmd:v1:{n}") for n in names[i:i + 3]))
    lines = [c.t("admin.title")]
    sep = c.t("list.sep")
    for info in commands(operator=True):
        words = sep.join(info.aliases)
        lines.append(c.t("admin.line", name=info.name, text=info.description[c.lang],
                         aliases=c.t("admin.aliases", words=words) if words else ""))
        spec = lookup(info.name)
        usage = c.t(spec.usage_key) if spec and spec.usage_key else \
            c.t("admin.usage", name=info.name)
        lines.append("   " + usage)
    return Reply().text("\n".join(lines), tuple(rows))


@command("product", aliases=("上架",), operator=True, usage_key="usage.product")
async def product(c: Ctx) -> Reply:
    if len(c.args) == 2 and c.args[1].lower() in onsale.OFF_WORDS + onsale.ON_WORDS:
        return await onsale.switch(c, c.args[0], c.args[1].lower() in onsale.ON_WORDS)
    if len(c.args) == 1 and normalise(c.req.text).lstrip().startswith("上架"):
        return await onsale.switch(c, c.args[0], True)  # 上架 SKU: back on sale
    if len(c.args) < 5:
        raise BadInput("bad.missing")
    code, price = sku(c.args[0]), money(c.args[1])
    margin = normalise(c.args[2])
    try:
        if parse_rate(margin) > 1:
            raise AmountError("above 1")
    except AmountError:
        raise BadInput("bad.margin", value=echo(c.args[2], 16)) from None
    lock = whole(c.args[3], "bad.lock_days", low=0, high=3650)
    scheme = c.args[4].lower()
    if scheme not in SCHEMES:
        raise BadInput("bad.scheme", value=echo(scheme, 16))
    name = " ".join(c.args[5:])[:128] or None
    r = await c.call(service.upsert_product, c.app.db, sku=code, price=price, margin=margin,
                     lock_days=lock, scheme=scheme, name=name, actor=c.req.identity)
    done = c.say("product.done", sku=r["sku"], name=echo(r["name"], 40),
                 price=c.money(r["price"], (await c.cfg()).currency),
                 margin=i18n.percent(r["margin"]), days=i18n.days(c.lang, r["lock_days"]),
                 scheme=r["scheme"])
    from .admin_store import after_product  # imported here: admin's commands register first

    return await after_product(c, r["sku"], done)  # its photo (docs/catalogue.md)


@command("deposit", aliases=("注资",), operator=True, usage_key="usage.deposit")
async def deposit(c: Ctx) -> Reply:
    if len(c.args) != 2:
        raise BadInput("bad.missing")
    pool = {"queue": "queue", "排队": "queue", "points": "points", "积分": "points"}.get(
        c.args[0].lower())
    if pool is None:
        raise BadInput("bad.pool", value=echo(c.args[0], 16))
    amount = money(c.args[1])
    r = await c.call(service.deposit, c.app.db, pool=pool, amount=amount,
                     actor=c.req.identity, key=c.key("deposit"))
    cur = (await c.cfg()).currency
    return c.say("deposit.done", pool=c.t(f"poolname.{pool}"), amount=c.money(r["amount"], cur),
                 balance=c.money(r["balance"], cur))


def _percent(value: Any) -> str:
    if value is None:
        return "-"
    tenths = int(Fraction(value) * 1000)  # rounded down, like every displayed ratio
    return f"{tenths // 10}.{tenths % 10}%"


def _near_exit_line(c: Ctx, r: dict[str, Any]) -> str:
    """How many holders are near forced exit, with what "near" means (docs/reports.md)."""
    within = Fraction(r.get("near_exit_within") or Fraction(1, 10))
    pct = within * 100
    return c.t("pool.near_exit_within", count=int(r.get("near_exit_count") or 0),
               within=f"{pct.numerator // pct.denominator}",
               share=f"{(100 - pct).numerator // (100 - pct).denominator}")


@command("pool", aliases=("奖金池", "资金池"), operator=True)
async def pool(c: Ctx) -> Reply:
    r = await c.call(report.pool_report, c.app.db, datetime.now(UTC))
    cur = r.get("currency") or (await c.cfg()).currency

    def m(key: str) -> str:
        return c.money(int(r.get(key) or 0), cur)

    pending = r.get("pending_withdrawals")
    if isinstance(pending, dict):
        pending_text = c.t("pool.pending", count=pending.get("count", 0),
                           amount=c.money(int(pending.get("amount", 0)), cur))
    else:
        pending_text = str(pending)
    lines = [c.t("pool.title"),
             c.t("pool.queue", balance=m("queue_balance"), liability=m("liability"),
                 coverage=_percent(r.get("coverage"))),
             c.t("pool.matured", amount=m("matured_unpaid"),
                 days=r.get("oldest_waiting_days") if r.get("oldest_waiting_days") is not None
                 else "-"),
             c.t("pool.flows", in7=m("inflow_7d"), in30=m("inflow_30d"), out7=m("released_7d"),
                 out30=m("released_30d")),
             c.t("pool.deposits", amount=m("deposits_30d")),
             c.t("pool.points", balance=m("points_balance"),
                 supply=i18n.pts_exact(int(r["supply"])),
                 price=i18n.price_exact(int(r["price_micro"])))]
    if r.get("points_unbacked"):  # supply 0, pool > 0: whoever mints next would own it
        lines.append(c.t("pool.points_unbacked", amount=m("points_unbacked")))
    lines += [_near_exit_line(c, r), pending_text]
    if r.get("payments_waiting"):  # taken by a channel, not recorded yet (engine/inbox.py)
        lines.append(c.t("pool.payments_waiting", count=int(r["payments_waiting"])))
    reply = Reply().text("\n".join(lines))
    for draw, caption in ((_pool_chart, "pool.chart"), (_price_chart, "pool.price_chart")):
        try:
            reply.items.append(Photo(await c.call(draw, c.app.db, lang=c.lang), c.t(caption)))
        except Exception:  # noqa: BLE001 - the numbers matter, the picture is a bonus
            log.exception("%s failed", caption)
    return reply


# matplotlib (~1-4 s to import) is loaded by the first chart drawn, in the worker thread that
# draws it, not by every process that starts the shop
def _pool_chart(db: Database, *, lang: str) -> bytes:
    from .charts import pool_chart_png

    return pool_chart_png(db, lang=lang)


def _price_chart(db: Database, *, lang: str) -> bytes:
    from .charts import price_chart_png

    return price_chart_png(db, lang=lang)


@command("release", aliases=("释放",), operator=True)
async def release(c: Ctx) -> Reply:
    return Reply(items=[Progress(job="release", initial=c.t("release.started"))])


def _release_runner(db: Any, progress: Callable[[int, int], None],
                    actor: str | None = None) -> dict[str, Any]:
    """`engine.jobs.run_release`: under the cross-process release lock, journaled with who
    started it."""
    result: dict[str, Any] = jobs.run_release(db, at=None, progress=progress, actor=actor)
    return result


async def run_job(app: App, job: str, request: Request,
                  update: Callable[[str], Any]) -> str:
    """Run a `Progress` job (`release`) in a worker thread, calling `update(text)` with
    localized progress (at most once a second; `update` may be sync — callable from any
    thread — or async) and once more with the final text, which it also returns. Checks the
    operator again: a job is never started on the strength of an earlier reply alone."""
    lang = await asyncio.to_thread(users.lang_of, app.db, request.identity) or first_lang(request)
    if request.identity not in app.operators:
        return i18n.t(lang, "operator_only")
    if job != "release":
        return i18n.t(lang, "job.unknown")
    loop = asyncio.get_running_loop()
    last = [0.0]

    def push(text: str) -> None:
        try:
            result = update(text)
            if inspect.isawaitable(result):
                asyncio.run_coroutine_threadsafe(_quiet(result), loop)
        except Exception:  # noqa: BLE001 - a progress line must never stop the job
            log.exception("progress update failed")

    def progress(paid: int, amount: int) -> None:
        now = time.monotonic()
        if now - last[0] < 1.0:
            return
        last[0] = now
        push(i18n.t(lang, "release.progress", paid=paid, amount=i18n.money(amount,
                                                                          app.currency)))

    # run_release takes no actor: the run is logged with who started it
    log.info("release started by %s", request.identity)
    try:
        r = await asyncio.to_thread(_release_runner, app.db, progress, request.identity)
        cur = await asyncio.to_thread(app.db.read, users.store_config)
        if r.get("skipped"):
            text = i18n.t(lang, "release.skipped", holder=echo(r.get("holder") or "-", 40))
        else:
            text = i18n.t(lang, "release.done", settled=r.get("settled", 0),
                          paid=r.get("paid", 0),
                          amount=i18n.money(int(r.get("amount", 0)), cur.currency))
            if r.get("blocked"):
                text += "\n" + i18n.t(lang, "release.blocked")
    except Exception:
        log.exception("release run by %s failed", request.identity)
        text = i18n.t(lang, "release.failed")
    try:  # the final line from the event loop itself: awaited, not scheduled
        result = update(text)
        if inspect.isawaitable(result):
            await result
    except Exception:  # noqa: BLE001
        log.exception("progress update failed")
    return text


async def _quiet(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001
        log.exception("progress update failed")


# `/withdrawals` (pending, in transfer, paid, failed) is handlers/payouts.py's.


async def _decide(c: Ctx, raw: str, approve: bool, reference: str | None = None) -> Reply:
    wid = whole(raw, "bad.withdrawal_id", low=1)
    r = await c.call(service.decide_withdrawal, c.app.db, withdrawal_id=wid, approve=approve,
                     actor=c.req.identity, reference=reference)
    if r["status"] == "transfer":  # to a WeChat balance: WeChat Pay pays it (issue 17)
        return c.say("withdrawals.transfer", id=r["withdrawal"], user=echo(r["user"], 32),
                     amount=c.money(r["amount"], (await c.cfg()).currency))
    return c.say("withdrawals.approved" if approve else "withdrawals.rejected", id=r["withdrawal"],
                 user=echo(r["user"], 32), amount=c.money(r["amount"],
                                                          (await c.cfg()).currency))


@command("approve", aliases=("批准",), operator=True, usage_key="usage.approve")
async def approve(c: Ctx) -> Reply:
    """`/approve ID [REFERENCE]`: the reference notes a manual payout (a bank slip number)."""
    if len(c.args) not in (1, 2):
        raise BadInput("bad.missing")
    return await _decide(c, c.args[0], True, echo(c.args[1], 64) if len(c.args) == 2 else None)


@command("reject", aliases=("拒绝",), operator=True, usage_key="usage.reject")
async def reject(c: Ctx) -> Reply:
    if len(c.args) != 1:
        raise BadInput("bad.missing")
    return await _decide(c, c.args[0], False)


@button("wd", operator=True)
async def withdrawal_button(c: Ctx) -> Reply:
    if len(c.args) != 2 or c.args[0] not in ("a", "r"):
        raise BadInput("bad.button")
    try:
        return await _decide(c, c.args[1], c.args[0] == "a")
    except BadInput:
        raise BadInput("bad.button") from None


@command("offline", aliases=("线下",), operator=True, usage_key="usage.offline")
async def offline(c: Ctx) -> Reply:
    if len(c.args) not in (2, 3):
        raise BadInput("bad.missing")
    code, n = sku(c.args[1]), qty(c.args[2]) if len(c.args) == 3 else 1
    buyer = await c.call(users.find_handle, c.app.db, c.args[0])
    if buyer is None:
        raise BadInput("bad.user", value=echo(c.args[0], 32))
    r = await c.call(service.buy, c.app.db, user=buyer, sku=code, qty=n, method="offline",
                     key=c.key("offline"), actor=c.req.identity)
    cfg = await c.cfg()
    return Reply().text(c.t("offline.done", user=echo(c.args[0], 32)) + "\n" +
                        render_receipt(c.lang, r, cfg.currency))


@command("refund", aliases=("退款",), operator=True, usage_key="usage.refund")
async def refund(c: Ctx) -> Reply:
    if len(c.args) != 1:
        raise BadInput("bad.missing")
    if not ORDER_REF.match(c.args[0]):
        raise BadInput("bad.order", value=echo(c.args[0], 32))
    r = await c.call(service.refund, c.app.db, order=c.args[0], actor=c.req.identity)
    method = await c.call(users.order_method, c.app.db, r["order"])
    cur = (await c.cfg()).currency
    lines = [c.t("refund.done", order=r["order"], user=echo(r["user"], 32))]
    if r["points_value"]:
        lines.append(c.t("refund.points", value=c.money(r["points_value"], cur)))
    if r["cash"]:
        # SPEC §8: the cash goes back through its channel, outside the engine; WeChat Pay
        # refunds are requested by the WeChat adapter, every other channel is the operator's.
        key = {"wallet": "refund.cash_wallet", "wechat": "refund.cash_wechat"}.get(
            method or "", "refund.cash_provider")
        lines.append(c.t(key, cash=c.money(r["cash"], cur), method=method or "-"))
    lines.append(c.t("refund.buyer_told"))
    return Reply().text("\n".join(lines))
