"""Secrets kept out of the logs: the bot token in Bot API URLs (PTB at DEBUG, httpx at INFO,
some aiohttp exceptions) and the payment provider token in PTB's call parameters."""

from __future__ import annotations

import logging


class _Redact(logging.Filter):
    """Replaces known secrets in a record's message and in its formatted traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            record.msg, record.args = self._clean(message), None
        if record.exc_info and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            if any(s in formatted for s in self.secrets):
                record.exc_text = self._clean(formatted)
        return True


_redactor = _Redact()
_REDACTED_LIBRARIES = ("telegram", "httpx", "httpcore", "aiohttp", "bot")


def redact_in_logs(*secrets: str | None) -> None:
    """PTB (at DEBUG) and httpx (at INFO) log Bot API URLs, which carry the bot token, and
    PTB logs call parameters at DEBUG, which carry the payment provider token. (Some of
    aiohttp's exceptions name the URL, and may be logged with their traceback.)

    Records are filtered where they are created, so the filter goes on every logger of those
    libraries (and of this adapter) that exists now; they are made when modules are imported."""
    _redactor.secrets.update(s for s in secrets if s)
    logging.getLogger("httpx")  # make sure it exists even if httpx has not logged yet
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.split(".")[0] in _REDACTED_LIBRARIES \
                and _redactor not in logger.filters:
            logger.addFilter(_redactor)
