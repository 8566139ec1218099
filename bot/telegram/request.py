"""PTB's Bot API calls over aiohttp instead of httpx (docs/telegram.md, docs/perf.md `/me`).

PTB's stock `HTTPXRequest` sends each call through httpx, httpcore and anyio, which were about
half of the bot's CPU per `/me` answered. `AiohttpRequest` is the same contract
(`telegram.request.BaseRequest`) on one `aiohttp.ClientSession`, and behaves as
`HTTPXRequest` does wherever PTB or the adapter can tell:

- the same bodies: parameters as an urlencoded form, or a multipart form when files go up;
- the same time-outs, defaults given to the constructor and overridden per call (below);
- the same errors: any time-out is `TimedOut`, any other failure of the exchange
  `NetworkError`; an answer with any status comes back as (status, body) for
  `BaseRequest._request_wrapper` to turn into `BadRequest`, `RetryAfter`, `Forbidden`, …;
- no retry: a Bot API call is a POST, which aiohttp never sends twice (it re-sends only an
  idempotent method, here a GET file download, once, over a connection that broke), and
  redirects are not followed (httpx does not follow them either);
- proxies from the environment as httpx takes them (`HTTP_PROXY`, `HTTPS_PROXY`,
  `ALL_PROXY`, `NO_PROXY`, read when the session is made), certificates from `certifi` or
  `SSL_CERT_FILE` / `SSL_CERT_DIR`. aiohttp's own `trust_env` is off: it would also lend
  credentials from `~/.netrc` and look both up in a worker thread on every call.

aiohttp has no time-out per socket write, so the write time-out is folded into a bound on
the whole call: connect + pool + write + read (a stalled upload ends in `TimedOut` too).
"""

from __future__ import annotations

import functools
import io
import os
import re
import ssl
from typing import Any
from urllib.parse import urlencode, urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
import certifi
from telegram._utils.defaultvalue import DefaultValue  # what HTTPXRequest checks against
from telegram._utils.types import JSONDict, ODVInput, UploadFileDict  # BaseRequest's own
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, HTTPXRequest, RequestData

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept: httpx's default, as before
CONNECT_TIMED_OUT = ("Timed out connecting, or waiting for a free connection in the pool: "
                     "the request was *not* sent to Telegram.")


class AiohttpRequest(BaseRequest):
    """`telegram.request.BaseRequest` on aiohttp; arguments as `HTTPXRequest`'s."""

    __slots__ = ("_connect_timeout", "_media_write_timeout", "_pool_size", "_pool_timeout",
                 "_proxies", "_proxy_of", "_read_timeout", "_session", "_write_timeout")

    def __init__(self, connection_pool_size: int = 256, read_timeout: float | None = 5.0,
                 write_timeout: float | None = 5.0, connect_timeout: float | None = 5.0,
                 pool_timeout: float | None = 1.0,
                 media_write_timeout: float | None = 20.0) -> None:
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._media_write_timeout = media_write_timeout
        self._session: aiohttp.ClientSession | None = None  # made in `initialize`, on the loop
        self._proxies: dict[str, str] = {}
        self._proxy_of: dict[str, str | None] = {}  # origin → proxy

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    async def initialize(self) -> None:
        if self._session is not None and not self._session.closed:
            return
        self._proxies = getproxies()  # as httpx reads them: once, when the client is made
        self._proxy_of.clear()
        connector = aiohttp.TCPConnector(limit=self._pool_size,
                                         keepalive_timeout=KEEPALIVE_EXPIRY,
                                         ssl=_ssl_context())
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self.USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),  # the Bot API sets none; skips the jar's work
            trust_env=False,  # proxies are taken as httpx takes them (`_proxy_for`)
        )

    async def shutdown(self) -> None:
        if self._session is None or self._session.closed:
            return
        await self._session.close()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")

        files = request_data.multipart_data if request_data else None
        fields = request_data.json_parameters if request_data else None
        data: aiohttp.FormData | aiohttp.BytesPayload | None = (
            _multipart(fields or {}, files) if files else _urlencoded(fields) if fields
            else None)

        # Not passed (DEFAULT_NONE): the defaults given to the constructor; None: no limit.
        if isinstance(read_timeout, DefaultValue):
            read_timeout = self._read_timeout
        if isinstance(connect_timeout, DefaultValue):
            connect_timeout = self._connect_timeout
        if isinstance(pool_timeout, DefaultValue):
            pool_timeout = self._pool_timeout
        if isinstance(write_timeout, DefaultValue):
            write_timeout = self._media_write_timeout if files else self._write_timeout

        try:
            async with session.request(
                method, url, data=data, allow_redirects=False, proxy=self._proxy_for(url),
                timeout=_client_timeout(connect_timeout, read_timeout, write_timeout,
                                        pool_timeout),
            ) as response:
                return response.status, await response.read()
        except aiohttp.ConnectionTimeoutError as err:
            raise TimedOut(CONNECT_TIMED_OUT) from err
        except TimeoutError as err:  # aiohttp's read and total time-outs are ones too
            raise TimedOut from err
        except aiohttp.ClientError as err:
            # The class name says what broke when the message is empty (as HTTPXRequest does);
            # the URL, which carries the bot token, is left out.
            message = str(err).replace(url, "<Bot API URL>")
            raise NetworkError(f"aiohttp.{type(err).__name__}: {message}") from err

    def _proxy_for(self, url: str) -> str | None:
        """The proxy httpx would take from the environment for `url`, looked up per origin."""
        if not self._proxies:
            return None
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._proxy_of:
            self._proxy_of[origin] = _environment_proxy(parts.scheme, parts.netloc,
                                                        self._proxies)
        return self._proxy_of[origin]


def _environment_proxy(scheme: str, netloc: str, proxies: dict[str, str]) -> str | None:
    """`<scheme>_PROXY`, else `ALL_PROXY`, unless `NO_PROXY` names the host (or is `*`)."""
    if proxy_bypass(netloc):
        return None
    found = proxies.get(scheme) or proxies.get("all")
    if not found:
        return None
    return found if "://" in found else f"http://{found}"


@functools.lru_cache(maxsize=64)
def _client_timeout(connect: float | None, read: float | None, write: float | None,
                    pool: float | None) -> aiohttp.ClientTimeout:
    """HTTPXRequest's four time-outs in aiohttp's terms.

    `sock_connect` bounds a new connection, `connect` the wait for a free one plus that,
    `sock_read` each wait for bytes of the answer (from the end of sending the request), and
    `total` — there being no per-write time-out — the whole call."""
    parts = (connect, pool, write, read)
    return aiohttp.ClientTimeout(
        total=None if None in parts else sum(p for p in parts if p is not None),
        connect=None if connect is None or pool is None else connect + pool,
        sock_connect=connect,
        sock_read=read,
    )


_CONTROL = re.compile(r"[\x00-\x1f\"]")


def _urlencoded(fields: dict[str, str]) -> aiohttp.BytesPayload:
    """The form body aiohttp would make of `fields`, made directly: a dict passed as `data`
    becomes a `FormData`, which makes a multipart writer, and so a random boundary, for every
    request before it finds it has no file (~4% of the bot's time on each answer)."""
    return aiohttp.BytesPayload(urlencode(fields, doseq=True).encode(),
                                content_type="application/x-www-form-urlencoded")


def _multipart(fields: dict[str, str], files: UploadFileDict) -> aiohttp.FormData:
    """Parameters then files, as httpx sends them: file names in UTF-8 (Telegram shows them
    as given, not %-quoted), `"` and control characters escaped as HTML forms do. Bytes go
    as a stream, which aiohttp writes in chunks (it warns about a large `bytes` body)."""
    form = aiohttp.FormData(quote_fields=False)
    for name, value in fields.items():
        form.add_field(name, value)
    for name, (filename, content, mimetype) in files.items():
        safe = _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", filename)
        body = io.BytesIO(content) if isinstance(content, bytes) else content
        form.add_field(name, body, content_type=mimetype, filename=safe)
    return form


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The certificates httpx trusts: `SSL_CERT_FILE` or `SSL_CERT_DIR`, else certifi's."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())


class UpdatesRequest(HTTPXRequest):
    """getUpdates on PTB's stock `HTTPXRequest`, keeping the raw updates of the last answer:
    the inbox stores each update as received (bot/telegram/inbox.py `poll`) instead of PTB's
    `to_dict` of the object it parsed (an eighth of the bot's CPU with the inbox's commits
    batched, docs/perf.md). Only the one long poll uses it, so the last answer is the poll's."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._raw: list[Any] = []

    def parse_json_payload(self, payload: bytes) -> JSONDict:  # (PTB's is a staticmethod)
        data = BaseRequest.parse_json_payload(payload)
        result = data.get("result") if isinstance(data, dict) else None
        self._raw = result if isinstance(result, list) else []
        return data

    def take(self) -> dict[int, dict[str, Any]]:
        """The last answer's updates by `update_id`, once (then none until the next)."""
        raw, self._raw = self._raw, []
        return {u["update_id"]: u for u in raw
                if isinstance(u, dict) and isinstance(u.get("update_id"), int)}
