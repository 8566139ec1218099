"""Who is asking: the web pages' sign-ins, sessions and CSRF tokens.

- Telegram Mini App: every request carries `initData` (header `X-Telegram-Init-Data`),
  checked by its HMAC (key = HMAC-SHA256("WebAppData", bot token)) and its `auth_date` age
  (`check_init_data`); never trusted otherwise.
- WeChat H5: the openid from OAuth (`snsapi_base`), kept in a signed, HTTP-only session
  cookie (`Sessions`).
- Operators in a browser: the same cookie, given by one of the sign-ins above or by a
  one-time login link sent in chat (`LoginLinks`).
- The console user on `make run` (no chat channel): loopback only, see bot/web/__init__.py.

Every form and every state-changing call carries a CSRF token bound to the session
(`csrf_token`), compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

INIT_DATA_MAX_AGE = 24 * 3600  # seconds an initData stays good (Telegram re-signs on open)
SESSION_MAX_AGE = 7 * 24 * 3600
LOGIN_LINK_TTL = 10 * 60
COOKIE = "sf_session"


@dataclass(frozen=True)
class TelegramUser:
    id: int
    lang: str | None
    name: str | None

    @property
    def identity(self) -> str:
        return f"tg:{self.id}"


def check_init_data(init_data: str, bot_token: str, *, now: float | None = None,
                    max_age: int = INIT_DATA_MAX_AGE) -> TelegramUser | None:
    """The Mini App user `init_data` speaks for, or None when its hash is wrong, it is
    older than `max_age` (or from the future), or it names no user. Telegram's rule:
    hash = HMAC-SHA256(key=HMAC-SHA256("WebAppData", token), the other fields as
    `key=value` lines in key order)."""
    if not init_data or len(init_data) > 4096:
        return None
    try:
        fields = dict(parse_qsl(init_data, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        return None
    given = fields.pop("hash", "")
    check = "\n".join(f"{k}={v}" for k, v in sorted(fields.items()))
    secret = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    expected = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        return None
    auth_date = fields.get("auth_date", "")
    at = now if now is not None else time.time()
    if not auth_date.isdigit() or not (at - max_age <= int(auth_date) <= at + 60):
        return None
    try:
        user = json.loads(fields.get("user", ""))
        uid = int(user["id"])
    except (ValueError, KeyError, TypeError):
        return None
    if uid <= 0:
        return None
    lang = user.get("language_code")
    name = user.get("first_name")
    return TelegramUser(uid, lang if isinstance(lang, str) else None,
                        name[:64] if isinstance(name, str) else None)


def sign_init_data(fields: dict[str, str], bot_token: str) -> str:
    """initData as Telegram would sign it (the tests' and the benchmark's Mini App)."""
    from urllib.parse import urlencode

    check = "\n".join(f"{k}={v}" for k, v in sorted(fields.items()))
    secret = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    digest = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    return urlencode({**fields, "hash": digest})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """HMAC-signed, timestamped values (cookies, OAuth state, login links)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def mac(self, purpose: str, payload: str) -> str:
        return _b64(hmac.new(self._secret, f"{purpose}|{payload}".encode(),
                             hashlib.sha256).digest()[:24])

    def sign(self, purpose: str, data: dict[str, Any], *, now: float | None = None) -> str:
        body = _b64(json.dumps({**data, "t": int(now or time.time())},
                               separators=(",", ":")).encode())
        return f"{body}.{self.mac(purpose, body)}"

    def unsign(self, purpose: str, value: str | None, max_age: int,
               *, now: float | None = None) -> dict[str, Any] | None:
        if not value or len(value) > 2048 or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(mac, self.mac(purpose, body)):
            return None
        try:
            data = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("t"), int):
            return None
        if not (0 <= (now or time.time()) - data["t"] <= max_age):
            return None
        return data


@dataclass(frozen=True)
class Session:
    """A signed-in web visitor: `identity` (`tg:…`, `wx:…`, `console:…`) and the session's
    own random id, which its CSRF token is bound to."""

    identity: str
    sid: str
    via: str  # telegram | wechat | link | console


def new_session(identity: str, via: str) -> Session:
    return Session(identity, secrets.token_urlsafe(12), via)


def session_cookie(signer: Signer, session: Session) -> str:
    return signer.sign("session", {"i": session.identity, "s": session.sid, "v": session.via})


def read_session(signer: Signer, cookie: str | None) -> Session | None:
    data = signer.unsign("session", cookie, SESSION_MAX_AGE)
    if data is None:
        return None
    identity, sid, via = data.get("i"), data.get("s"), data.get("v")
    if not (isinstance(identity, str) and isinstance(sid, str) and isinstance(via, str)):
        return None
    return Session(identity, sid, via)


def csrf_token(signer: Signer, session: Session) -> str:
    return signer.mac("csrf", f"{session.identity}|{session.sid}")


def csrf_ok(signer: Signer, session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(signer, session), str(given))


class LoginLinks:
    """One-time login links for operators: a signed token naming the operator, good for
    `LOGIN_LINK_TTL` seconds and once (its nonce is remembered until it expires; a link is
    used by the process that made it, the one HTTP server)."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def make(self, identity: str) -> str:
        return self._signer.sign("login", {"i": identity, "n": secrets.token_urlsafe(9)})

    def redeem(self, token: str | None, *, now: float | None = None) -> str | None:
        data = self._signer.unsign("login", token, LOGIN_LINK_TTL, now=now)
        if data is None or not isinstance(data.get("i"), str):
            return None
        at = now or time.time()
        with self._lock:
            for nonce, expires in list(self._used.items()):
                if expires < at:
                    del self._used[nonce]
            nonce = str(data.get("n"))
            if nonce in self._used:
                return None
            self._used[nonce] = at + LOGIN_LINK_TTL + 60
        return str(data["i"])
