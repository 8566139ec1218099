"""Where the `/me` row's time goes (issue 19): `python -m benchmarks.telegram_me_parts`.

One stand-in process (benchmarks/telegram_me.py `on_standin`), the same 1,000 `/me` updates
per run from 2,000 users, and these clients taking turns round by round (the order rotating)
so that all of them meet the same load of a shared machine:

- `bare`: the row's baseline (benchmarks/baselines.py `_bare_bot`): aiohttp, getUpdates, one
  answer of the same length per update, 16 at once;
- `ptb`: python-telegram-bot alone: an Application with PTB's own updater polling, updates
  16 at once, and a `/me` CommandHandler answering a constant text with `send_message`;
  the Bot API calls on PTB's stock httpx (`ptb-httpx`) or on the shop's aiohttp request
  (`ptb`, bot/telegram/request.py);
- `shop-const`: the shop's own `start_telegram` (the inbox's durable commits, the adapter,
  the output path) with a dispatch that answers a constant text: no engine, no read. The
  shop's text replies do not parse Telegram's answer into a PTB `Message`, as `ptb`'s
  `send_message` does (bot/telegram/output.py `post_text`), so this can read at or below
  `ptb` in CPU per update;
- `shop`: the full `/me` (the row itself).

Prints one JSON line per run and, at the end, the medians and each client's ratio to `bare`
taken run by run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from . import telegram_me
from .baselines import _bare_bot
from .fixtures import Plan, build_history

TEXT = telegram_me.ANSWER_PREFIX + "x" * 200  # about the length of a /me answer


async def _ptb_alone(port: int, conn: Any, batches: list[list[int]], *,
                     aiohttp_request: bool) -> list[dict[str, Any]]:
    """PTB's Application, its own updater, a constant answer: the library and nothing else."""
    from datetime import timedelta

    from telegram import Update
    from telegram.ext import ApplicationBuilder, CommandHandler, ContextTypes

    builder = (ApplicationBuilder().token(telegram_me.TOKEN)
               .base_url(f"http://127.0.0.1:{port}/bot").concurrent_updates(16)
               .job_queue(None))
    if aiohttp_request:
        from bot.telegram.application import bot_request

        builder = builder.get_updates_read_timeout(10.0).request(bot_request())
    application = builder.build()

    async def answer(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_chat is not None
        await context.bot.send_message(update.effective_chat.id, TEXT)

    application.add_handler(CommandHandler("me", answer))
    await application.initialize()
    await application.start()
    assert application.updater is not None
    await application.updater.start_polling(poll_interval=0.0, timeout=timedelta(seconds=1))
    try:
        results = await telegram_me.play(conn, batches)
    finally:
        await application.updater.stop()
        await application.stop()
        await application.shutdown()
    return results


def _constant_conversations() -> Any:
    from bot.telegram.conversations import Conversations
    from handlers.base import Reply

    async def dispatch(_app: Any, _request: Any) -> Reply:
        return Reply().text(TEXT)

    return dataclasses.replace(Conversations.from_handlers(), dispatch=dispatch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.telegram_me_parts")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--per-run", type=int, default=1_000)
    p.add_argument("--only", default="bare,ptb-httpx,ptb,shop-const,shop")
    a = p.parse_args(argv)
    modes = [m.strip() for m in a.only.split(",") if m.strip()]
    work = Path(tempfile.mkdtemp(prefix="me-parts-"))
    built = build_history(work / "shop.db", Plan(users=a.users, orders=a.users * 10,
                                                 identities=True, seed=5))
    url = f"sqlite:///{built.path}"
    chats = [telegram_me.FIRST_CHAT + u for u in range(a.users)]
    figures: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    n = 0

    def one(mode: str, port: int, pipe: Any, batch: list[int]) -> dict[str, Any]:
        if mode == "bare":
            return asyncio.run(_bare_bot(port, pipe, [batch]))[0]
        if mode in ("ptb", "ptb-httpx"):
            return asyncio.run(_ptb_alone(port, pipe, [batch],
                                          aiohttp_request=mode == "ptb"))[0]
        conv = _constant_conversations() if mode == "shop-const" else None
        return asyncio.run(telegram_me._drive(url, port, pipe, [batch], lift=True,
                                              conversations=conv))[0]

    def drive(port: int, pipe: Any) -> None:
        nonlocal n
        for r in range(a.rounds):
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for mode in order:
                batch = [chats[(n * a.per_run + k) % a.users] for k in range(a.per_run)]
                n += 1
                out = one(mode, port, pipe, batch)
                if out["answered"] < out["wanted"] or out["wrong"]:
                    raise RuntimeError(f"{mode}: not answered properly: {out}")
                rate = out["answered"] / out["seconds"]
                figures[mode].append(rate)
                if "bot_cpu_s" in out:
                    cpu[mode].append(1000 * out["bot_cpu_s"] / out["answered"])
                print(json.dumps({"round": r, "mode": mode, "per_s": round(rate, 1),
                                  "cpu_ms": round(cpu[mode][-1], 2) if cpu[mode] else None}),
                      flush=True)

    telegram_me.on_standin(drive)
    print("| client | updates/s (median, min–max) | ratio to bare (median of runs) "
          "| bot CPU ms/update |")
    print("|---|---|---|---|")
    for mode in modes:
        runs = figures[mode]
        ratios = [m / b for m, b in zip(runs, figures.get("bare", runs), strict=True)]
        c = f"{statistics.median(cpu[mode]):.2f}" if cpu[mode] else "—"
        print(f"| {mode} | {statistics.median(runs):,.0f} ({min(runs):,.0f}–{max(runs):,.0f})"
              f" | {statistics.median(ratios):.2f} | {c} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
