"""The buyer's catalogue page (bot/web) with 100 products on sale: server time per page.

A SQLite file shop with 100 products (names in zh and en, descriptions, five categories) and
the web routes as `storefront run` mounts them (bot/http.py `build_app` with bot/web's
routes), called in process over httpx's ASGI transport, so the figure is the server's own
work: the Mini App's initData checked (HMAC), the visitor's language read, `catalogue.page`
and `catalogue.categories` read, the fragment rendered (Jinja2). Each run times `REQUESTS`
requests of the page listing all 100 products one after another; the figure is the median
request of the run, in milliseconds (target < 100 ms).

`python -m benchmarks.web_catalogue [--quick]` runs the row alone and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from .common import Context, Row, Stats

PRODUCTS = 100
REQUESTS = 200
TOKEN = "4242:BENCH-WEB"


def _shop(path: Path) -> object:
    from engine import catalogue, service
    from storage.db import Database
    from storage.migrate import migrate

    db = Database(f"sqlite:///{path}")
    migrate(db)
    for i in range(PRODUCTS):
        sku = f"P{i:03d}"
        service.upsert_product(db, sku=sku, price=f"{10 + i}.00", margin="0.30",
                               lock_days=7, scheme=("queue", "points", "both", "none")[i % 4],
                               name=f"商品 {i}", stock=None if i % 3 else 50 + i)
        catalogue.describe(db, sku=sku, field="name_en", text=f"Product {i}")
        catalogue.describe(db, sku=sku, field="category", text=f"Category {i % 5}")
        catalogue.describe(db, sku=sku, field="description",
                           text=f"第 {i} 号商品的说明。" * 3)
    return db


async def _timed(db: object, requests: int) -> list[float]:
    import httpx

    from bot.http import build_app
    from bot.web import WebConfig, routes
    from bot.web.auth import sign_init_data
    from handlers.base import App

    app = App(db=db, operators=frozenset(), currency="CNY")  # type: ignore[arg-type]
    web, _site = routes(app, WebConfig(secret=b"b" * 32, bot_token=TOKEN))
    asgi = build_app(db=db, web=web)  # type: ignore[arg-type]
    init = sign_init_data({"auth_date": str(int(time.time())), "user": json.dumps(
        {"id": 9, "first_name": "Bench", "language_code": "zh"})}, TOKEN)
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                 headers={"X-Telegram-Init-Data": init}) as client:
        assert (await client.get("/app/api/me")).status_code == 200  # the buyer joins once
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            r = await client.get("/app/v/shop", params={"per": PRODUCTS})
            times.append((time.perf_counter() - start) * 1000)
            if r.status_code != 200 or r.text.count('class="card"') != PRODUCTS:
                raise RuntimeError(f"the catalogue page did not list {PRODUCTS} products")
    return times


def web_catalogue(ctx: Context) -> Row:
    row = Row("web-catalogue", f"`/app` catalogue page, {PRODUCTS} products (server time)",
              "ms", ("<=", 100))
    db = _shop(ctx.scratch("web") / "shop.db")
    requests = 30 if ctx.quick else REQUESTS
    medians, p95 = [], []
    for _ in range(ctx.runs(5)):
        times = asyncio.run(_timed(db, requests))
        medians.append(statistics.median(times))
        p95.append(sorted(times)[int(len(times) * 0.95) - 1])
    row.measured = Stats(medians)
    row.facts = {"products": PRODUCTS, "requests_per_run": requests,
                 "p95_ms": round(statistics.median(p95), 2),
                 "timed": "in process (ASGI), initData check to rendered fragment"}
    db.dispose()  # type: ignore[attr-defined]
    return row


ROWS = {"web-catalogue": web_catalogue}


def main(argv: list[str] | None = None) -> int:
    import tempfile

    p = argparse.ArgumentParser(prog="python -m benchmarks.web_catalogue")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        row = web_catalogue(Context(quick=args.quick, work=Path(work), pg_problem=None))
    assert row.measured is not None
    print(f"{row.title}: median {row.measured.median:.1f} ms "
          f"(runs {', '.join(f'{r:.1f}' for r in row.measured.runs)}; p95 {row.facts['p95_ms']} "
          f"ms; target ≤ {row.target[1]:g} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
