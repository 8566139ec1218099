"""Replayed and reused WeChat callbacks, against the running shop over loopback (issue 13.2).

WeChat's query signature covers token, timestamp and nonce, not the body. The attacks: a
signed query reused with a forged plaintext body from the operator; a correctly signed
callback from 31 days ago; a captured encrypted operator message replayed at once and again
after its dedupe record would have been forgotten. None may change anything."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.wechat.replay import NONCE_KEEP, WINDOW, check_no_gap
from bot.wechat.seen import KEEP
from storage.models import Product, SeenMessage
from tests.fault_driver import fingerprint
from tests.standins import wechat as sw
from tests.wechat_harness import (
    GH_ID,
    OPERATOR,
    TOKEN,
    Shop,
    next_msg_id,
    open_shop,
    stock,
)

DEPOSIT = "注资 queue 77777.00"
NOW = 1_800_000_000  # the shop's clock where a test sets it


def books(shop: Shop) -> dict[str, Any]:
    """`storefront state` and everything else a message could move, with product prices."""
    return {**fingerprint(shop.db),
            "products": shop.db.read(lambda s: [(p.sku, p.price, p.name) for p in s.execute(
                select(Product).order_by(Product.sku)).scalars()])}


def queue_pool(shop: Shop) -> str:
    return str(fingerprint(shop.db)["state"]["pools"]["queue"])


def operator_says(text: str, msg_id: int | None = None) -> str:
    return sw.text_message_xml(GH_ID, OPERATOR, text, msg_id or next_msg_id())


async def post(shop: Shop, query: dict[str, str], body: str) -> Any:
    response = await shop.http.post("/wechat", params=query, content=body,
                                    headers={"Content-Type": "text/xml"})
    await shop.server.wechat.drain()
    return response


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "refused a callback" in r.getMessage()]


@pytest.fixture
async def safe_shop(sqlite_url: str, keys: sw.PayKeys) -> Any:
    async with open_shop(sqlite_url, keys, aes=True) as s:
        stock(s.db)
        yield s


# -- (a) a reused signed query carrying a forged plaintext body --------------------------------

async def test_a_forged_plaintext_operator_body_is_refused_in_safe_mode_under_any_signed_query(
        safe_shop: Shop, caplog: pytest.LogCaptureFixture) -> None:
    shop = safe_shop
    # The operator really writes to us once (encrypted): its query is now in a proxy log.
    body, real_query = sw.encrypt_for_safe_mode(operator_says("我的"), TOKEN, shop.aes_key or "",
                                                shop.appid)
    assert (await post(shop, real_query, body)).status_code == 200
    # And the server-check URL, with its signature, is somewhere too.
    check = sw.echostr_query(TOKEN, "4711")
    assert (await shop.http.get("/wechat", params=check)).text == "4711"
    before, pool = books(shop), queue_pool(shop)
    forged = operator_says(DEPOSIT)
    caplog.set_level(logging.INFO)
    queries = [
        real_query,                                        # a used query, msg_signature and all
        {k: v for k, v in real_query.items() if k not in ("msg_signature", "encrypt_type")},
        {k: check[k] for k in ("signature", "timestamp", "nonce")},  # the server check's
        sw.sign_query(TOKEN),                              # a signed query never used at all
    ]
    for query in queries:
        r = await post(shop, query, forged)
        assert (r.status_code, r.text) == (403, "forbidden")
    assert books(shop) == before and queue_pool(shop) == pool == "0.00"
    logged = refusals(caplog)
    assert len(logged) == len(queries)  # one line each, no traceback
    for record in logged:
        text = record.getMessage()
        assert "plaintext body in safe mode" in text and record.exc_info is None
        for secret in (TOKEN, shop.aes_key or "", real_query["signature"],
                       real_query["msg_signature"], "77777"):
            assert secret not in text
    # The operator's genuine encrypted deposit still works.
    body, query = sw.encrypt_for_safe_mode(operator_says(DEPOSIT), TOKEN, shop.aes_key or "",
                                           shop.appid)
    assert (await post(shop, query, body)).status_code == 200
    assert queue_pool(shop) == "77777.00"


async def test_without_an_aes_key_a_used_signed_query_cannot_carry_another_body(
        shop: Shop) -> None:
    """Plaintext mode: the nonce of a query WeChat already used (a message, or the server
    check) is refused with any other body; only a query never delivered to us could carry a
    forged one (docs/wechat.md: why an operator runs in safe mode)."""
    query = sw.sign_query(TOKEN)
    assert (await post(shop, query, operator_says("我的"))).status_code == 200
    check = sw.echostr_query(TOKEN, "4712")
    assert (await shop.http.get("/wechat", params=check)).text == "4712"
    before = books(shop)
    for used in (query, {k: check[k] for k in ("signature", "timestamp", "nonce")}):
        assert (await post(shop, used, operator_says(DEPOSIT))).status_code == 403
    assert books(shop) == before
    # the server-check URL again only echoes what it echoed (a retry); nothing else
    assert (await shop.http.get("/wechat", params=check)).text == "4712"
    assert (await shop.http.get("/wechat", params={**check, "echostr": "other"})
            ).status_code == 403


# -- (b) a correctly signed callback from long ago ---------------------------------------------

async def test_a_validly_signed_callback_from_31_days_ago_is_refused(
        safe_shop: Shop, caplog: pytest.LogCaptureFixture) -> None:
    shop = safe_shop
    shop.server.wechat.clock = lambda: float(NOW)
    old = NOW - 31 * 24 * 3600
    before = books(shop)
    caplog.set_level(logging.INFO)
    body, query = sw.encrypt_for_safe_mode(operator_says(DEPOSIT), TOKEN, shop.aes_key or "",
                                           shop.appid, timestamp=old)
    assert (await post(shop, query, body)).status_code == 403
    assert (await shop.http.get("/wechat", params=sw.echostr_query(
        TOKEN, "4713", timestamp=old))).status_code == 403
    assert books(shop) == before
    assert [r.getMessage() for r in refusals(caplog)][0] == (
        f"wechat: refused a callback: timestamp more than five minutes from our clock "
        f"(timestamp {old}, nonce {query['nonce']})")
    assert len(refusals(caplog)) == 2
    # The edges: five minutes either way is fresh, a second more is not.
    for skew, status in ((-WINDOW - 1, 403), (WINDOW + 1, 403), (-WINDOW, 200), (WINDOW, 200)):
        body, query = sw.encrypt_for_safe_mode(operator_says("我的"), TOKEN,
                                               shop.aes_key or "", shop.appid,
                                               timestamp=NOW + skew)
        assert (await post(shop, query, body)).status_code == status, skew
    assert queue_pool(shop) == "0.00"


# -- (c) a captured encrypted operator message, replayed --------------------------------------

async def test_a_captured_operator_message_never_acts_twice_now_or_after_the_dedupe_expires(
        safe_shop: Shop) -> None:
    shop = safe_shop
    adapter = shop.server.wechat
    adapter.clock = lambda: float(NOW)
    cut = "上架 TEA 100.00 0.50 15 both Oolong tea"
    captured = sw.encrypt_for_safe_mode(operator_says(cut), TOKEN, shop.aes_key or "",
                                        shop.appid, timestamp=NOW)
    first = await post(shop, captured[1], captured[0])
    assert first.status_code == 200 and "100.00" in shop.reply_of(first, safe=True)["Content"]
    body, query = sw.encrypt_for_safe_mode(operator_says("上架 TEA 150.00 0.50 15 both "
                                                         "Oolong tea"), TOKEN,
                                           shop.aes_key or "", shop.appid, timestamp=NOW)
    assert (await post(shop, query, body)).status_code == 200
    before = books(shop)
    assert ("TEA", 15000, "Oolong tea") in before["products"]

    # At once: the same signed request is WeChat's retry; it gets the first answer, acts not.
    again = await post(shop, captured[1], captured[0])
    assert again.status_code == 200
    assert shop.reply_of(again, safe=True) == shop.reply_of(first, safe=True)
    assert books(shop) == before

    # At the last fresh second, after the hourly prune: the dedupe record is still there.
    adapter.clock = lambda: float(NOW + WINDOW)
    await adapter.prune_seen()
    assert (await post(shop, captured[1], captured[0])).status_code == 200
    assert books(shop) == before

    # After the dedupe table forgot the message: the timestamp is long stale.
    adapter.clock = lambda: float(NOW) + KEEP.total_seconds() + 3600
    await adapter.prune_seen()
    assert shop.db.read(lambda s: s.execute(select(func.count()).select_from(SeenMessage))
                        .scalar_one()) == 0  # messages and nonces forgotten
    assert (await post(shop, captured[1], captured[0])).status_code == 403
    assert books(shop) == before


async def test_a_replayed_event_acts_once(safe_shop: Shop) -> None:
    shop = safe_shop
    xml = sw.event_xml(GH_ID, "oNewcomer_00000000000000001", "subscribe", create_time=NOW)
    body, query = sw.encrypt_for_safe_mode(xml, TOKEN, shop.aes_key or "", shop.appid)
    first = await post(shop, query, body)
    before = books(shop)
    again = await post(shop, query, body)  # the same signed request
    assert shop.reply_of(again, safe=True) == shop.reply_of(first, safe=True)
    # a fresh signature over the same event (WeChat's retry may be signed anew)
    body, query = sw.encrypt_for_safe_mode(xml, TOKEN, shop.aes_key or "", shop.appid)
    assert shop.reply_of(await post(shop, query, body), safe=True) == \
        shop.reply_of(first, safe=True)
    assert books(shop) == before


# -- where nonces are kept ----------------------------------------------------------------------

CLAIM_IN_ANOTHER_PROCESS = """
import json, sys
from datetime import UTC, datetime
from bot.wechat.replay import Nonces
from storage.db import Database
db = Database(sys.argv[1])
nonces = Nonces(db)
print(json.dumps([nonces.claim(ts, nonce, body.encode(), datetime.now(UTC))
                  for ts, nonce, body in json.loads(sys.argv[2])]))
db.dispose()
"""


def claims_in_another_process(url: str, claims: list[tuple[dict[str, str], str]]) -> list[bool]:
    """`Nonces.claim` for each (query, body), in a process of its own on the database."""
    done = subprocess.run(
        [sys.executable, "-c", CLAIM_IN_ANOTHER_PROCESS, url,
         json.dumps([(q["timestamp"], q["nonce"], body) for q, body in claims])],
        capture_output=True, text=True, timeout=120, check=True,
        cwd=Path(__file__).resolve().parents[1])
    return list(json.loads(done.stdout))


async def test_two_servers_on_one_database_share_their_nonces(
        db_url: str, keys: sw.PayKeys) -> None:
    async with open_shop(db_url, keys) as one, open_shop(db_url, keys) as two:
        stock(one.db)
        query = sw.sign_query(TOKEN)
        said = operator_says("我的")
        first = await post(one, query, said)
        assert first.status_code == 200
        before = books(one)
        assert (await post(two, query, operator_says(DEPOSIT))).status_code == 403
        retry = await post(two, query, said)  # byte-identical: WeChat's retry, answered again
        assert retry.status_code == 200 and retry.text == first.text
        assert books(one) == before and queue_pool(two) == "0.00"
        if not db_url.startswith("postgresql"):
            return  # a process of its own: once is enough (it costs an interpreter's start)
        # a process of its own, on the same database, sees the same
        other = sw.sign_query(TOKEN)
        assert claims_in_another_process(db_url, [
            (query, operator_says(DEPOSIT)), (query, said), (other, said)]) == [
            False, True, True]
        assert (await post(one, other, operator_says(DEPOSIT))).status_code == 403
        assert books(one) == before


async def test_nonces_live_in_redis_when_it_is_configured(
        sqlite_url: str, keys: sw.PayKeys, redis_url: str) -> None:
    import redis

    async with open_shop(sqlite_url, keys, REDIS_URL=redis_url) as shop:
        stock(shop.db)
        query = sw.sign_query(TOKEN)
        assert (await post(shop, query, operator_says("我的"))).status_code == 200
        key = (f"storefront:wechat:nonce:{shop.appid}:{query['timestamp']}:"
               f"{query['nonce']}")
        client = redis.Redis.from_url(redis_url)
        try:
            ttl = client.ttl(key)
            assert 0 < ttl <= NONCE_KEEP.total_seconds()
        finally:
            client.close()
        assert shop.db.read(lambda s: s.execute(select(func.count()).where(
            SeenMessage.key.like("wxn:%"))).scalar_one()) == 0
        before = books(shop)
        assert (await post(shop, query, operator_says(DEPOSIT))).status_code == 403
        assert books(shop) == before


async def test_with_redis_down_nonces_fall_back_to_the_database(
        sqlite_url: str, keys: sw.PayKeys, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with open_shop(sqlite_url, keys, REDIS_URL="redis://127.0.0.1:1/0") as shop:
        stock(shop.db)
        query = sw.sign_query(TOKEN)
        assert (await post(shop, query, operator_says("我的"))).status_code == 200
        assert (await post(shop, sw.sign_query(TOKEN), operator_says("我的"))).status_code == 200
        before = books(shop)
        assert (await post(shop, query, operator_says(DEPOSIT))).status_code == 403
        assert books(shop) == before
    assert sum("keeping nonces in the database" in r.getMessage()
               for r in caplog.records) == 1


async def test_database_nonces_are_forgotten_once_their_timestamp_cannot_be_fresh(
        shop: Shop) -> None:
    adapter = shop.server.wechat
    adapter.clock = lambda: float(NOW)
    query = sw.sign_query(TOKEN, timestamp=NOW)
    assert (await post(shop, query, operator_says("我的"))).status_code == 200

    def nonces() -> int:
        return shop.db.read(lambda s: s.execute(select(func.count()).where(
            SeenMessage.key.like("wxn:%"))).scalar_one())

    adapter.clock = lambda: float(NOW + WINDOW)
    await adapter.prune_seen()
    assert nonces() == 1
    adapter.clock = lambda: float(NOW) + NONCE_KEEP.total_seconds() + 1
    await adapter.prune_seen()
    assert nonces() == 0


def test_dedupe_records_outlive_the_freshness_window() -> None:
    check_no_gap()  # the module checks this on import too
    assert KEEP > NONCE_KEEP > timedelta(seconds=2 * WINDOW)
    with pytest.raises(RuntimeError):
        check_no_gap(timedelta(seconds=2 * WINDOW))


async def test_malformed_timestamps_and_nonces_are_refused(shop: Shop) -> None:
    before = books(shop)
    now = str(int(time.time()))
    for timestamp, nonce in (("", "1"), (now, ""), ("１" * 10, "1"), (now, "a b"),
                             (now, "n" * 65), ("-" + now, "1"), (now + "0" * 10, "1")):
        query = {"signature": sw.wechat_signature(TOKEN, timestamp, nonce),
                 "timestamp": timestamp, "nonce": nonce}
        assert (await post(shop, query, operator_says("我的"))).status_code == 403
    assert books(shop) == before
