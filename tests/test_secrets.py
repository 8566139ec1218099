"""Secrets: tokens, keys and payment secrets come from the environment only, are never
logged, never told to a user, and never committed; the README names every one.

The end-to-end run drives both channels over real sockets with every logger (ours,
python-telegram-bot, httpx, httpcore, uvicorn, wechatpy, wechatpayv3, requests, urllib3) at
DEBUG, with a failing Bot API call and a failing WeChat call thrown in so tracebacks are
logged too, then searches every record for every secret."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.settings import Settings
from bot.telegram import start_telegram, stop_telegram
from bot.telegram.webhook import SECRET_HEADER
from handlers.base import App, Channels
from storage.db import Database
from storage.migrate import migrate
from storage.ratelimit import RateLimiter
from tests.standins import wechat as sw
from tests.standins.telegram_api import FakeBotAPI, make_text_update
from tests.wechat_harness import OPERATOR as WX_OPERATOR
from tests.wechat_harness import SECRET as WX_APP_SECRET
from tests.wechat_harness import TOKEN as WX_TOKEN
from tests.wechat_harness import checkout_path, open_shop, stock

ROOT = Path(__file__).resolve().parent.parent
LOGGERS = ("", "bot", "handlers", "engine", "storage", "scheduler", "telegram", "httpx",
           "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access", "wechatpy",
           "wechatpayv3", "requests", "urllib3", "apscheduler", "asyncio")


def _made_up(prefix: str) -> str:
    """A secret made at run time: no literal of it exists in the repository."""
    return prefix + secrets.token_hex(12)


def all_log_text(records: list[logging.LogRecord]) -> str:
    out = []
    formatter = logging.Formatter()
    for r in records:
        out.append(r.getMessage())
        if r.exc_info:
            out.append(formatter.formatException(r.exc_info))
        if r.exc_text:
            out.append(r.exc_text)
        if r.stack_info:
            out.append(r.stack_info)
    return "\n".join(out)


async def test_an_end_to_end_run_never_logs_or_tells_a_secret(
        sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    tg_token = f"{secrets.randbelow(9 * 10**9) + 10**9}:{_made_up('TGSECRET')}"
    provider = _made_up("PROVIDERSECRET")
    webhook = _made_up("WEBHOOKSECRET")
    keys = sw.generate_pay_keys(tmp_path / "keys")
    pem_body = keys.merchant_private_key_pem.splitlines()[5]  # a line of the private key

    db = Database(sqlite_url)
    migrate(db)
    app = App(db=db, operators=frozenset({"tg:1", f"wx:{WX_OPERATOR}"}), currency="CNY",
              limiter=RateLimiter.disabled(),
              channels=Channels(payments=frozenset({"telegram", "wechat"})))
    api = FakeBotAPI(token=tg_token).start()
    tg_settings = Settings(_env_file=None, TELEGRAM_BOT_TOKEN=tg_token,  # type: ignore[call-arg]
                           TELEGRAM_API_BASE_URL=api.base_url,
                           TELEGRAM_PAYMENT_PROVIDER_TOKEN=provider)
    application = await start_telegram(tg_settings, app, poll_timeout=1)
    told: list[str] = []
    try:
        async with open_shop(sqlite_url, keys, aes=True, app=app,
                             telegram_application=application,
                             TELEGRAM_WEBHOOK_SECRET=webhook) as shop:
            stock(db)
            # -- Telegram: a purchase paid with the provider, a failing call, the webhook
            mark = len(api.calls)
            api.fail_next("sendMessage", 400, "Bad Request: fake failure")
            api.push_text(2, "/me")
            api.push_text(2, "/buy TEA")
            invoice = await api.wait_for("sendInvoice", timeout=10, since=mark)
            payload = invoice.params["payload"]
            api.push_pre_checkout(2, payload, 12000)
            await api.wait_for("answerPreCheckoutQuery", timeout=10, since=mark)
            api.push_successful_payment(2, payload, 12000, "charge-1")
            await api.wait_for(lambda c: c.is_("sendMessage") and "TEA" in (c.text or "")
                               and c.chat_id == 2, timeout=10, since=len(api.calls) - 1)
            forged = await shop.http.post("/telegram", json=make_text_update(3, "/me"))
            assert forged.status_code == 403
            genuine = await shop.http.post("/telegram", json=make_text_update(3, "/me"),
                                           headers={SECRET_HEADER: webhook})
            assert genuine.status_code == 200
            await api.wait_for(lambda c: c.is_("sendMessage") and c.chat_id == 3, timeout=10)

            # -- WeChat: safe mode, a purchase paid by a signed notification, a failing call
            buyer = "oSecrets_0000000000000000001"
            await shop.say(buyer, "我的", safe=True)
            reply = await shop.say(buyer, "购买 TEA", safe=True)
            page = await shop.http.get(checkout_path(str(reply.get("Content", ""))),
                                       headers={"User-Agent": "MicroMessenger/8.0"})
            assert page.status_code == 200
            order = shop.last_order_of(f"wx:{buyer}")
            shop.api.inject_error("message/custom/send", 45015, "response out of time limit")
            headers, body = sw.signed_pay_notification(
                keys, out_trade_no=order.ref, transaction_id="4200000000000000000000000009",
                total_fen=order.cash, payer_openid=buyer)
            assert (await shop.notify(headers, body)).status_code == 204
            await shop.server.wechat.drain()
            told += [str(v) for m in shop.api.sent_messages for v in m.values()]
            told += [str(reply), page.text]
            access_tokens = list(shop.api.issued_tokens)
    finally:
        await stop_telegram(application)
        await asyncio.to_thread(api.stop)
        db.dispose()
    told += api.sent_texts()

    secrets_used = {"Telegram bot token": tg_token.split(":", 1)[1],
                    "Telegram payment provider token": provider,
                    "Telegram webhook secret": webhook,
                    "WeChat token": WX_TOKEN, "WeChat app secret": WX_APP_SECRET,
                    "WeChat EncodingAESKey": shop.aes_key or "",
                    "WeChat Pay APIv3 key": keys.apiv3_key,
                    "WeChat Pay private key": pem_body,
                    **{f"WeChat access token {n}": t for n, t in enumerate(access_tokens)}}
    logged = all_log_text(caplog.records)
    assert "sendInvoice" in logged and "HTTP Request" in logged  # DEBUG really was captured
    assert "cgi-bin" in logged or "message/custom/send" in logged
    for what, value in secrets_used.items():
        assert value, what
        assert value not in logged, f"the {what} is in the logs"
        assert all(value not in t for t in told), f"the {what} was told to a user"


def test_settings_never_show_a_secret() -> None:
    token = _made_up("SHOWNEVER")
    s = Settings(_env_file=None, TELEGRAM_BOT_TOKEN=token,  # type: ignore[call-arg]
                 WECHAT_APP_SECRET=token, WECHAT_PAY_APIV3_KEY=token)
    assert token not in repr(s) and token not in str(s) and token not in str(s.model_dump())
    with pytest.raises(Exception) as bad:
        Settings(_env_file=None, TELEGRAM_BOT_TOKEN=token,  # type: ignore[call-arg]
                 STOREFRONT_HTTP_PORT="not-a-port")
    assert token not in str(bad.value)


def _secret_settings() -> list[str]:
    out = []
    for name, field in Settings.model_fields.items():
        if field.annotation in (SecretStr, SecretStr | None) or name.endswith("_key_file"):
            out.append(field.alias or name.upper())
    return out


def test_the_readme_names_every_secret_the_shop_needs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    needed = _secret_settings()
    assert "TELEGRAM_BOT_TOKEN" in needed and "WECHAT_PAY_APIV3_KEY" in needed
    for alias in needed:
        short = alias.removeprefix("WECHAT_PAY_")
        assert alias in readme or (alias.startswith("WECHAT_PAY_") and f"`{short}`" in readme), \
            f"README does not name {alias}"
    assert "environment" in readme and "never logged" in readme


# -- nothing secret in the repository ---------------------------------------------------------

PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"
                              r"\s*[A-Za-z0-9+/=]{40,}"),  # a header with key material
    "Telegram bot token": re.compile(r"\b\d{8,10}:AA[A-Za-z0-9_-]{33}\b"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "assigned secret": re.compile(
        r"""(?i)(?:secret|token|api_?key|apiv3_key|password|passwd)["']?\s*[:=]\s*"""
        r"""["'][A-Za-z0-9+/=_-]{24,}["']"""),
    "WeChat app secret": re.compile(r"(?i)appsecret\W{1,4}[0-9a-f]{32}\b"),
}


def _repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in listed.splitlines() if line]


def test_no_key_or_token_is_committed() -> None:
    files = _repository_files()
    assert len(files) > 50 and ROOT / "README.md" in files
    found: list[str] = []
    for path in files:
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for what, pattern in PATTERNS.items():
            for m in pattern.finditer(text):
                found.append(f"{path.relative_to(ROOT)}: {what}: {m.group(0)[:40]}")
    assert not found, "\n".join(found)
    assert not [p for p in files if p.name in (".env", ".env.local") or p.suffix == ".pem"]
    ignored = (ROOT / ".gitignore").read_text()
    assert ".env" in ignored


def test_the_repository_scan_would_catch_a_committed_key() -> None:
    """The patterns above are not vacuous: each catches what it is named after."""
    samples = {
        "private key": "-----BEGIN RSA PRIVATE KEY-----\n" + "M" * 64,
        "Telegram bot token": "123456789:AA" + "x" * 33,
        "AWS access key": "AKIA" + "ABCDEFGHIJKLMNOP",
        "assigned secret": 'WECHAT_PAY_APIV3_KEY = "' + "k" * 32 + '"',
        "WeChat app secret": "AppSecret: " + "0123456789abcdef" * 2,
    }
    for what, sample in samples.items():
        assert PATTERNS[what].search(sample), what




def test_debug_logging_as_set_up_never_writes_a_secret(tmp_path: Path) -> None:
    """`STOREFRONT_LOG_LEVEL=DEBUG` through the one set-up (bot/logs.py): the libraries log
    URLs, parameters and tracebacks carrying secrets; the file written holds none of them,
    whichever logger made the record and however the secret got into it."""
    from bot.logs import setup_logging

    tg_token = f"{secrets.randbelow(9 * 10**9) + 10**9}:{_made_up('TGSECRET')}"
    other_token = f"{secrets.randbelow(9 * 10**9) + 10**9}:{_made_up('OTHERBOT')}"
    provider, wx_secret, aes = _made_up("PROVIDER"), _made_up("WXSECRET"), _made_up("AES")
    apiv3, db_password, access = _made_up("APIV3"), _made_up("DBPASS"), _made_up("ACCESS")
    settings = Settings(_env_file=None,  # type: ignore[call-arg]
                        STOREFRONT_LOG_LEVEL="debug",
                        STOREFRONT_LOG_FILE=str(tmp_path / "logs" / "storefront.log"),
                        TELEGRAM_BOT_TOKEN=tg_token, TELEGRAM_PAYMENT_PROVIDER_TOKEN=provider,
                        WECHAT_TOKEN=_made_up("WXTOKEN"), WECHAT_APP_ID="wx0001",
                        WECHAT_APP_SECRET=wx_secret, WECHAT_ENCODING_AES_KEY=aes,
                        WECHAT_PAY_APIV3_KEY=apiv3,
                        DATABASE_URL=f"postgresql://shop:{db_password}@127.0.0.1/shop")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        where = setup_logging(settings)
        assert where == str(tmp_path / "logs" / "storefront.log")
        logging.getLogger("telegram.ext.ExtBot").debug(
            "Calling Bot API endpoint `sendInvoice` with parameters `%s`",
            {"provider_token": provider, "chat_id": 7})
        logging.getLogger("httpx").info('HTTP Request: POST https://api.telegram.org/bot%s/getMe'
                                        ' "HTTP/1.1 200 OK"', tg_token)
        logging.getLogger("aiohttp.client").debug(
            "GET https://api.telegram.org/bot%s/getUpdates", other_token)  # not in settings
        logging.getLogger("urllib3.connectionpool").debug(
            'https://api.weixin.qq.com:443 "GET /cgi-bin/token?grant_type=client_credential'
            '&appid=wx0001&secret=%s HTTP/1.1" 200 None', wx_secret)
        logging.getLogger("wechatpy.client.base").debug(
            "POST /cgi-bin/message/custom/send?access_token=%s", access)
        logging.getLogger("sqlalchemy.engine").info(
            "connect postgresql://shop:%s@127.0.0.1/shop", db_password)
        try:
            raise RuntimeError(f"WeChat Pay said no to key {apiv3} and AES {aes}")
        except RuntimeError:
            logging.getLogger("wechatpayv3").exception("payment call failed")
        logging.getLogger("bot.app").debug("stack here", stack_info=True)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    written = (tmp_path / "logs" / "storefront.log").read_text(encoding="utf-8")
    assert "sendInvoice" in written and "getUpdates" in written and "cgi-bin/token" in written
    assert "payment call failed" in written and "RuntimeError" in written  # the traceback
    assert " DEBUG telegram.ext.ExtBot: " in written
    for value in (tg_token.split(":")[1], other_token.split(":")[1], provider, wx_secret,
                  aes, apiv3, db_password, access):
        assert value not in written, value


def test_the_log_level_is_checked() -> None:
    assert Settings(_env_file=None).log_level == "INFO"  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="STOREFRONT_LOG_LEVEL"):
        Settings(_env_file=None, STOREFRONT_LOG_LEVEL="loud")  # type: ignore[call-arg]


def test_one_shot_commands_log_through_the_same_filter(tmp_path: Path) -> None:
    """`storefront release`, `outbox --deliver`…: Python's last-resort handler (warnings to
    stderr) blanks secrets too."""
    token = f"{secrets.randbelow(9 * 10**9) + 10**9}:{_made_up('ONESHOT')}"
    code = ("import logging, sys\n"
            "from bot.cli import redact_last_resort\n"
            "redact_last_resort()\n"
            "logging.getLogger('httpx').warning('POST https://api.telegram.org/bot%s/x', "
            "sys.argv[1])\n")
    env = {"TELEGRAM_BOT_TOKEN": token, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code, token], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "api.telegram.org/bot<redacted>/x" in done.stderr, done.stderr
    assert token.split(":")[1] not in done.stderr
