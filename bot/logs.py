"""Logging for `storefront run` and `storefront chat`, set up here and nowhere else.

- Where: `STOREFRONT_LOG_FILE` (default `var/storefront.log`, appended to); `-` sends the
  lines to the terminal (stderr) instead. The console chat shares the terminal with its
  user, so by default its logs never land in the chat.
- How much: `STOREFRONT_LOG_LEVEL` (`DEBUG`, `INFO` — the default —, `WARNING`, `ERROR`).
  Below DEBUG, APScheduler's two lines per job run (the outbox job runs every 2 s) are left
  out.
- Never a secret, at any level: the one handler carries `Redactor`, which every record passes
  through whichever logger made it (ours, python-telegram-bot, httpx, aiohttp, wechatpy,
  urllib3…). It blanks every secret the settings hold, Bot API URLs' tokens, secrets in query
  strings and passwords in connection URLs, in the message, its traceback and stack.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from pydantic import SecretStr

from bot.settings import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "<redacted>"

# A Bot API token in a URL (`…/bot123456:AA…/getMe`) or anywhere else (`123456:AA…`).
_BOT_TOKEN = re.compile(r"\d{3,}:[A-Za-z0-9_-]{20,}")
# WeChat's API carries the app secret and the access token in the query string.
_QUERY_SECRET = re.compile(r"(?i)\b((?:secret|appsecret|access_token|component_access_token"
                           r"|token|key|password|sign)=)[^&\s\"']+")
# postgresql://user:password@host, redis://:password@host
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(@)")


def secrets_of(settings: Settings) -> set[str]:
    """Every secret value the settings hold (each `SecretStr` field that is set)."""
    found = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr) and value.get_secret_value():
            found.add(value.get_secret_value())
    return found


class Redactor(logging.Filter):
    """Blanks secrets in a record before any handler writes it."""

    def __init__(self, secrets: set[str] | None = None) -> None:
        super().__init__()
        # longest first, so a secret containing another is blanked whole
        self.secrets = sorted((s for s in secrets or () if len(s) >= 4), key=len, reverse=True)

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        text = _BOT_TOKEN.sub(REDACTED, text)
        text = _QUERY_SECRET.sub(rf"\1{REDACTED}", text)
        return _URL_PASSWORD.sub(rf"\1{REDACTED}\2", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: let logging report it
            return True
        cleaned = self.clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self.clean(record.stack_info)
        return True


def level_of(settings: Settings) -> int:
    return int(logging.getLevelName(settings.log_level))


def setup_logging(settings: Settings) -> str:
    """Send every log record to the one configured place, redacted; returns where that is
    (a path, or "stderr") so the caller can say so."""
    level = level_of(settings)
    handler: logging.Handler
    if settings.log_file == "-":
        handler, where = logging.StreamHandler(sys.stderr), "stderr"
    else:
        path = Path(settings.log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler, where = logging.FileHandler(path, encoding="utf-8"), str(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(Redactor(secrets_of(settings)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    quiet = logging.WARNING if level > logging.DEBUG else logging.NOTSET
    logging.getLogger("apscheduler.executors.default").setLevel(quiet)
    logging.getLogger("apscheduler.scheduler").setLevel(quiet)
    return where
