"""Loopback stand-ins for WeChat, for end-to-end tests.

Everything here talks to 127.0.0.1 only. Three parts:

1. Official Account *message* side: what WeChat's servers POST to our ``/wechat`` webhook
   (signed query strings, plaintext XML messages/events, the safe-mode AES envelope) and
   helpers to read our passive replies.
2. ``FakeWeChatAPI``: a Starlette app on uvicorn (background thread) that answers the
   Official Account HTTP API (``/cgi-bin/...``) and records every call, plus
   ``make_wechat_client`` which points a real ``wechatpy.WeChatClient`` at it.
3. WeChat Pay APIv3 in *public-key mode*: generated keys (``PayKeys``), signed payment and
   refund notifications exactly as WeChat Pay sends them, ``FakeWeChatPayAPI`` (signed
   responses) and ``make_pay_client`` which points a real ``wechatpayv3.WeChatPay`` at it.

Notes on the SDKs (1.8.18 / 2.0.4), learned by reading their source:

* ``wechatpy.WeChatClient.API_BASE_URL`` is ``https://api.weixin.qq.com/cgi-bin/`` and
  ``_request`` prefixes relative endpoints with it (or with an API class's own
  ``API_BASE_URL``), but ``fetch_access_token`` hard-codes
  ``https://api.weixin.qq.com/cgi-bin/token`` and ``qrcode.show``/``get_url`` hard-code
  ``https://mp.weixin.qq.com/cgi-bin/showqrcode`` (``show`` even uses module-level
  ``requests.get``, bypassing the client's session).  ``LoopbackWeChatClient`` overrides the
  base URL and the token fetch, rewrites the per-API base URLs, and mounts a transport that
  refuses any non-loopback URL.
* ``wechatpayv3`` has no gateway parameter: ``Core._gate_way`` is hard-coded to
  ``https://api.mch.weixin.qq.com`` and must be overwritten after construction.  Passing
  both ``public_key`` and ``public_key_id`` skips ``_init_certificates`` (no network at
  construction).  Verification of a response/notification whose ``Wechatpay-Serial`` is
  not the public key id falls back to downloading ``GET /v3/certificates`` from the
  gateway; a missing/other ``Wechatpay-Signature-Type`` header raises instead of failing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import socket
import string
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from functools import cached_property
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

import requests
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from requests.adapters import HTTPAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpy import WeChatClient
from wechatpy.client.api import WeChatQRCode
from wechatpy.client.api.base import BaseWeChatAPI
from wechatpy.crypto import WeChatCrypto

__all__ = [
    "DEFAULT_OPENID",
    "FakeWeChatAPI",
    "FakeWeChatPayAPI",
    "LoopbackWeChatClient",
    "PayKeys",
    "RecordedCall",
    "decrypt_reply",
    "echostr_query",
    "encrypt_for_safe_mode",
    "event_xml",
    "generate_aes_key",
    "generate_pay_keys",
    "make_pay_client",
    "make_wechat_client",
    "message_xml",
    "pay_signature_headers",
    "pay_transaction_resource",
    "parse_reply_xml",
    "refund_resource",
    "sign_query",
    "signed_pay_notification",
    "signed_refund_notification",
    "text_message_xml",
    "unknown_message_xml",
    "wechat_signature",
]

LOOPBACK = "127.0.0.1"
CST = timezone(timedelta(hours=8))
DEFAULT_OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
_ALNUM = string.ascii_letters + string.digits
_UPPER_ALNUM = string.ascii_uppercase + string.digits


def _now() -> int:
    return int(time.time())


def _random_chars(n: int, alphabet: str = _ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _random_digits(n: int) -> str:
    return str(secrets.randbelow(9) + 1) + "".join(
        secrets.choice(string.digits) for _ in range(n - 1)
    )


def _iso_cst(ts: int | float | None = None) -> str:
    """RFC 3339 in China Standard Time, e.g. ``2018-06-08T10:34:56+08:00`` (WeChat Pay style)."""
    return datetime.fromtimestamp(_now() if ts is None else ts, CST).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# 1. Official Account message side (WeChat -> our POST /wechat)
# ---------------------------------------------------------------------------------------------


def wechat_signature(token: str, *parts: str | int) -> str:
    """sha1 over the byte-wise sorted concatenation of token and parts (WeChat's rule).

    With ``(timestamp, nonce)`` this is the query ``signature``; with
    ``(timestamp, nonce, encrypt)`` it is the safe-mode ``msg_signature``.
    """
    items = sorted(str(p).encode("utf-8") for p in (token, *parts))
    return hashlib.sha1(b"".join(items)).hexdigest()


def sign_query(
    token: str,
    timestamp: str | int | None = None,
    nonce: str | int | None = None,
    *,
    openid: str | None = None,
) -> dict[str, str]:
    """Query params WeChat appends to every webhook request: signature, timestamp, nonce.

    WeChat also appends ``openid`` (the sender) on message POSTs; pass it to include it.
    """
    ts = str(_now() if timestamp is None else timestamp)
    nc = str(_random_digits(10) if nonce is None else nonce)
    params = {"signature": wechat_signature(token, ts, nc), "timestamp": ts, "nonce": nc}
    if openid is not None:
        params["openid"] = openid
    return params


def echostr_query(
    token: str,
    echostr: str | None = None,
    timestamp: str | int | None = None,
    nonce: str | int | None = None,
) -> dict[str, str]:
    """Query of the ``GET /wechat`` URL-verification request (answer must echo ``echostr``)."""
    params = sign_query(token, timestamp, nonce)
    params["echostr"] = echostr if echostr is not None else _random_digits(19)
    return params


def _cdata(text: str) -> str:
    # "]]>" cannot appear inside one CDATA section; split it across two.
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _render_value(tag: str, value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError(f"{tag}: WeChat XML has no booleans")
    if isinstance(value, int | float):
        return f"<{tag}>{value}</{tag}>"
    if isinstance(value, Mapping):
        return f"<{tag}>{_render_fields(value)}</{tag}>"
    if isinstance(value, list | tuple):
        inner = "".join(_render_value("item", v) for v in value)
        return f"<{tag}>{inner}</{tag}>"
    return f"<{tag}>{_cdata(str(value))}</{tag}>"


def _render_fields(fields: Mapping[str, Any]) -> str:
    return "".join(_render_value(k, v) for k, v in fields.items() if v is not None)


def message_xml(
    to_user: str,
    from_user: str,
    msg_type: str,
    fields: Mapping[str, Any] | None = None,
    *,
    msg_id: int | None = None,
    create_time: int | None = None,
) -> str:
    """Generic WeChat push XML: ToUserName, FromUserName, CreateTime, MsgType, fields, MsgId.

    Strings are written as CDATA, ints bare, mappings as nested elements, lists as
    ``<item>`` children; ``None`` values are omitted.
    """
    head: dict[str, Any] = {
        "ToUserName": to_user,
        "FromUserName": from_user,
        "CreateTime": _now() if create_time is None else int(create_time),
        "MsgType": msg_type,
    }
    body = dict(fields or {})
    if msg_id is not None:
        body["MsgId"] = int(msg_id)
    return "<xml>" + _render_fields(head) + _render_fields(body) + "</xml>"


def text_message_xml(
    to_user: str,
    from_user: str,
    content: str,
    msg_id: int,
    create_time: int | None = None,
) -> str:
    """A user's text message. ``to_user`` is our account's gh_ id, ``from_user`` the openid."""
    return message_xml(
        to_user, from_user, "text", {"Content": content}, msg_id=msg_id, create_time=create_time
    )


def event_xml(
    to_user: str,
    from_user: str,
    event: str,
    event_key: str | int | None = None,
    ticket: str | None = None,
    create_time: int | None = None,
) -> str:
    """An event push (``subscribe``, ``unsubscribe``, ``SCAN``, ``CLICK``, ...).

    For ``subscribe`` with a scene, WeChat sends ``EventKey`` = ``qrscene_<scene>``; the prefix
    is added here when missing, so pass the bare scene for both ``subscribe`` and ``SCAN``
    (``SCAN`` carries the plain scene).
    """
    key = None if event_key is None else str(event_key)
    if key is not None and event == "subscribe" and key and not key.startswith("qrscene_"):
        key = "qrscene_" + key
    return message_xml(
        to_user,
        from_user,
        "event",
        {"Event": event, "EventKey": key, "Ticket": ticket},
        create_time=create_time,
    )


def unknown_message_xml(
    to_user: str,
    from_user: str,
    msg_type: str = "hologram",
    fields: Mapping[str, Any] | None = None,
    msg_id: int | None = None,
    create_time: int | None = None,
) -> str:
    """A message of a type neither wechatpy nor our bot knows (default MsgType ``hologram``)."""
    if fields is None:
        fields = {"Payload": "something new from WeChat"}
    if msg_id is None:
        msg_id = int(_random_digits(19))
    return message_xml(to_user, from_user, msg_type, fields, msg_id=msg_id, create_time=create_time)


def generate_aes_key() -> str:
    """An EncodingAESKey: 43 chars, base64 of 32 random bytes without the trailing '='."""
    key = base64.b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    assert len(key) == 43
    return key


def encrypt_for_safe_mode(
    xml: str,
    token: str,
    encoding_aes_key: str,
    app_id: str,
    timestamp: str | int | None = None,
    nonce: str | int | None = None,
) -> tuple[str, dict[str, str]]:
    """Wrap a plaintext push as WeChat does in safe mode (安全模式).

    Returns ``(body_xml, query_params)``: the body is
    ``<xml><ToUserName>..</ToUserName><Encrypt>..</Encrypt></xml>`` and the query carries
    ``signature``, ``timestamp``, ``nonce``, ``openid`` (when the message has a FromUserName),
    ``encrypt_type=aes`` and ``msg_signature``.
    """
    ts = str(_now() if timestamp is None else timestamp)
    nc = str(_random_digits(10) if nonce is None else nonce)
    crypto = WeChatCrypto(token, encoding_aes_key, app_id)
    envelope = ET.fromstring(crypto.encrypt_message(xml, nc, ts))
    encrypt = envelope.findtext("Encrypt") or ""
    msg_signature = envelope.findtext("MsgSignature") or ""
    assert msg_signature == wechat_signature(token, ts, nc, encrypt)
    plain = ET.fromstring(xml)
    to_user = plain.findtext("ToUserName") or ""
    from_user = plain.findtext("FromUserName")
    body = (
        "<xml>\n"
        f"<ToUserName>{_cdata(to_user)}</ToUserName>\n"
        f"<Encrypt>{_cdata(encrypt)}</Encrypt>\n"
        "</xml>"
    )
    params = sign_query(token, ts, nc, openid=from_user)
    params["encrypt_type"] = "aes"
    params["msg_signature"] = msg_signature
    return body, params


def decrypt_reply(
    body: str | bytes,
    token: str,
    aes_key: str,
    app_id: str,
    params: Mapping[str, str] | None = None,
) -> str:
    """Verify and decrypt our encrypted passive reply; returns the plaintext reply XML.

    The signature is checked like WeChat does, with the reply's own MsgSignature, TimeStamp
    and Nonce (``params``, the request query, is only a fallback for missing TimeStamp/Nonce).
    Raises ``wechatpy.exceptions.InvalidSignatureException`` / ``InvalidAppIdException``.
    """
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    root = ET.fromstring(text)
    if root.findtext("Encrypt") is None:
        raise ValueError("reply is not a safe-mode envelope (no <Encrypt>)")
    params = params or {}
    signature = root.findtext("MsgSignature") or params.get("msg_signature", "")
    timestamp = root.findtext("TimeStamp") or params.get("timestamp", "")
    nonce = root.findtext("Nonce") or params.get("nonce", "")
    return WeChatCrypto(token, aes_key, app_id).decrypt_message(text, signature, timestamp, nonce)


def _element_to_value(elem: ET.Element) -> Any:
    children = list(elem)
    if not children:
        return elem.text or ""
    if all(c.tag == "item" for c in children):
        return [_element_to_value(c) for c in children]
    out: dict[str, Any] = {}
    for c in children:
        value = _element_to_value(c)
        if c.tag in out:
            prev = out[c.tag]
            out[c.tag] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[c.tag] = value
    return out


def parse_reply_xml(body: str | bytes) -> dict[str, Any]:
    """Plaintext passive reply -> dict of the ``<xml>`` children (values as strings).

    Nested elements become dicts (``Image: {MediaId: ..}``), ``<item>`` lists become lists
    (news ``Articles``).  The "no reply" answers ``""`` and ``"success"`` give ``{}``.
    """
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    if text.strip() in ("", "success"):
        return {}
    value = _element_to_value(ET.fromstring(text))
    if not isinstance(value, dict):
        raise ValueError("unexpected reply XML shape")
    return value


# ---------------------------------------------------------------------------------------------
# Loopback server plumbing
# ---------------------------------------------------------------------------------------------


@dataclass
class RecordedCall:
    """One HTTP request a stand-in received (and what it answered)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    files: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    response_body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None

    @property
    def response_json(self) -> Any:
        try:
            return json.loads(self.response_body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None


Handler = Callable[[Request, RecordedCall], Awaitable[Response]]


class _LoopbackServer:
    """A Starlette app served by uvicorn on 127.0.0.1:<free port> in a daemon thread."""

    path_prefix = "/"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[RecordedCall] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port: int | None = None

    # -- subclasses -------------------------------------------------------------------------
    def _routes(self) -> list[tuple[str, list[str], Handler]]:
        raise NotImplementedError

    async def _after(self, request: Request, call: RecordedCall, response: Response) -> Response:
        return response

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Self:
        if self._server is not None:
            return self
        routes = [
            Route(path, self._wrap(handler), methods=methods)
            for path, methods, handler in self._routes()
        ]
        app = Starlette(routes=routes)
        # proto=IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted sockets (else ~40 ms/request)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, 0))
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            daemon=True,
            name=f"{type(self).__name__}-uvicorn",
        )
        self._server, self._thread, self._sock = server, thread, sock
        self.port = sock.getsockname()[1]
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{type(self).__name__} failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        if self.port is None:
            raise RuntimeError("stand-in not started")
        return f"http://{LOOPBACK}:{self.port}"

    # -- recording --------------------------------------------------------------------------
    def _wrap(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            call = RecordedCall(
                method=request.method,
                path=request.url.path,
                query=dict(request.query_params),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await request.body(),
            )
            with self._lock:
                self._calls.append(call)
            response = await handler(request, call)
            response = await self._after(request, call, response)
            call.status = response.status_code
            call.response_body = bytes(response.body)
            return response

        return endpoint

    def _normalize(self, path: str) -> str:
        return path if path.startswith("/") else self.path_prefix + path

    @property
    def calls(self) -> list[RecordedCall]:
        with self._lock:
            return list(self._calls)

    def calls_of(self, path: str, method: str | None = None) -> list[RecordedCall]:
        """Calls whose URL path (without query) equals ``path``.

        A relative path is taken relative to the stand-in's API prefix (``/cgi-bin/`` or ``/``).
        """
        target = self._normalize(path)
        return [
            c
            for c in self.calls
            if c.path == target and (method is None or c.method == method.upper())
        ]

    def wait_for_calls(self, path: str, count: int = 1, timeout: float = 5.0) -> list[RecordedCall]:
        """Poll until at least ``count`` calls of ``path`` arrived (for background senders)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.calls_of(path)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} call(s) of {path}, got {len(found)}")
            time.sleep(0.01)

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_response(payload: Any, status: int = 200) -> Response:
    return Response(_json_bytes(payload), status_code=status, media_type="application/json")


def _parse_multipart(content_type: str, body: bytes) -> list[dict[str, Any]]:
    """Minimal multipart/form-data parser (python-multipart is not installed)."""
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        return []
    parts: list[dict[str, Any]] = []
    for section in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if section.startswith(b"--"):
            break
        section = section.removeprefix(b"\r\n")
        head, _, content = section.partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        meta = Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                meta[name.strip()] = value.strip()
        parts.append(
            {
                "name": meta.get_param("name", header="content-disposition"),
                "filename": meta.get_filename(),
                "content_type": meta.get_content_type(),
                "content": content,
            }
        )
    return parts


# ---------------------------------------------------------------------------------------------
# 2. Official Account API stand-in (our code -> api.weixin.qq.com)
# ---------------------------------------------------------------------------------------------

_QR_ACTIONS = {"QR_SCENE", "QR_STR_SCENE", "QR_LIMIT_SCENE", "QR_LIMIT_STR_SCENE"}
_MEDIA_TYPES = {"image", "voice", "video", "thumb"}


class FakeWeChatAPI(_LoopbackServer):
    """Loopback stand-in for ``https://api.weixin.qq.com/cgi-bin/``.

    State you can poke from a test:

    * ``outside_window``: openids outside the 48-hour customer-service window; custom
      messages to them get errcode 45015 "response out of time limit ...".
    * ``unsubscribed``: openids that unfollowed; template messages get 43004, custom 45015.
    * ``inject_error(path, errcode, errmsg, times=1)``: the next call(s) of ``path`` fail.
    * ``expire_access_tokens()``: every issued token now answers 42001 (wechatpy refetches).

    And what it saw: ``calls``/``calls_of``, ``sent_messages`` (custom messages accepted),
    ``template_messages``, ``qrcodes`` (ticket -> scene info), ``media`` (media_id -> upload).
    """

    path_prefix = "/cgi-bin/"

    def __init__(
        self,
        appid: str | None = None,
        secret: str | None = None,
        *,
        check_access_token: bool = True,
    ) -> None:
        super().__init__()
        self.appid = appid
        self.secret = secret
        self.check_access_token = check_access_token
        self.outside_window: set[str] = set()
        self.unsubscribed: set[str] = set()
        self.issued_tokens: list[str] = []
        self.expired_tokens: set[str] = set()
        self.sent_messages: list[dict[str, Any]] = []
        self.template_messages: list[dict[str, Any]] = []
        self.qrcodes: dict[str, dict[str, Any]] = {}
        self.media: dict[str, dict[str, Any]] = {}
        self.materials: dict[str, dict[str, Any]] = {}  # permanent media (material/add_material)
        self._injected: dict[str, list[tuple[int, str]]] = {}
        self._msgid = 2_000_000_000

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/cgi-bin/`` - what replaces ``WeChatClient.API_BASE_URL``."""
        return self.root_url + "/cgi-bin/"

    def inject_error(self, path: str, errcode: int, errmsg: str, times: int = 1) -> None:
        with self._lock:
            self._injected.setdefault(self._normalize(path), []).extend([(errcode, errmsg)] * times)

    def expire_access_tokens(self) -> None:
        with self._lock:
            self.expired_tokens.update(self.issued_tokens)

    @property
    def scenes(self) -> list[Any]:
        """Scene ids/strings of created QR codes, in creation order."""
        return [q.get("scene_id", q.get("scene_str")) for q in self.qrcodes.values()]

    def _routes(self) -> list[tuple[str, list[str], Handler]]:
        return [
            ("/cgi-bin/token", ["GET"], self._token),
            ("/cgi-bin/message/custom/send", ["POST"], self._custom_send),
            ("/cgi-bin/message/template/send", ["POST"], self._template_send),
            ("/cgi-bin/qrcode/create", ["POST"], self._qrcode_create),
            ("/cgi-bin/media/upload", ["POST"], self._media_upload),
            ("/cgi-bin/showqrcode", ["GET"], self._show_qrcode),
            ("/cgi-bin/material/add_material", ["POST"], self._material_add),
            ("/cgi-bin/media/get", ["GET"], self._media_get),
        ]

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _err(errcode: int, errmsg: str) -> Response:
        return _json_response({"errcode": errcode, "errmsg": errmsg})

    def _precheck(self, call: RecordedCall) -> Response | None:
        with self._lock:
            queue = self._injected.get(call.path)
            injected = queue.pop(0) if queue else None
        if injected is not None:
            return self._err(*injected)
        if not self.check_access_token:
            return None
        token = call.query.get("access_token")
        if not token:
            return self._err(41001, "access_token missing")
        with self._lock:
            if token in self.expired_tokens:
                return self._err(42001, "access_token expired")
            if token not in self.issued_tokens:
                return self._err(40001, "invalid credential, access_token is invalid or not latest")
        return None

    # -- endpoints -------------------------------------------------------------------------
    async def _token(self, request: Request, call: RecordedCall) -> Response:
        q = call.query
        if q.get("grant_type") != "client_credential":
            return self._err(40002, "invalid grant_type")
        if self.appid is not None and q.get("appid") != self.appid:
            return self._err(40013, "invalid appid")
        if self.secret is not None and q.get("secret") != self.secret:
            return self._err(40125, "invalid appsecret")
        with self._lock:
            queue = self._injected.get(call.path)
            injected = queue.pop(0) if queue else None
            if injected is None:
                token = "ACCESS_TOKEN_" + _random_chars(48)
                self.issued_tokens.append(token)
        if injected is not None:
            return self._err(*injected)
        return _json_response({"access_token": token, "expires_in": 7200})

    async def _custom_send(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._precheck(call)) is not None:
            return early
        data = call.json
        if not isinstance(data, dict) or not data.get("touser") or not data.get("msgtype"):
            return self._err(44002, "empty post data")
        touser = data["touser"]
        if touser in self.outside_window or touser in self.unsubscribed:
            return self._err(45015, "response out of time limit or subscription is canceled")
        with self._lock:
            self.sent_messages.append(data)
        return self._err(0, "ok")

    async def _template_send(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._precheck(call)) is not None:
            return early
        data = call.json
        if not isinstance(data, dict) or not data.get("touser") or not data.get("template_id"):
            return self._err(44002, "empty post data")
        if data["touser"] in self.unsubscribed:
            return self._err(43004, "require subscribe")
        with self._lock:
            self._msgid += 1
            msgid = self._msgid
            self.template_messages.append(data)
        return _json_response({"errcode": 0, "errmsg": "ok", "msgid": msgid})

    async def _qrcode_create(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._precheck(call)) is not None:
            return early
        data = call.json
        if not isinstance(data, dict) or data.get("action_name") not in _QR_ACTIONS:
            return self._err(40097, "invalid args")
        action = data["action_name"]
        scene = (data.get("action_info") or {}).get("scene") or {}
        info: dict[str, Any] = {"action_name": action}
        if action.endswith("STR_SCENE"):
            scene_str = scene.get("scene_str")
            if not isinstance(scene_str, str) or not 1 <= len(scene_str) <= 64:
                return self._err(40097, "invalid args")
            info["scene_str"] = scene_str
        else:
            scene_id = scene.get("scene_id")
            if not isinstance(scene_id, int) or scene_id <= 0:
                return self._err(40097, "invalid args")
            info["scene_id"] = scene_id
        ticket = base64.b64encode(secrets.token_bytes(48)).decode("ascii")
        result: dict[str, Any] = {"ticket": ticket}
        if not action.startswith("QR_LIMIT"):
            expire = int(data.get("expire_seconds") or 60)
            expire = max(60, min(expire, 2_592_000))
            info["expire_seconds"] = expire
            result["expire_seconds"] = expire
        result["url"] = "http://weixin.qq.com/q/" + _random_chars(22)
        info.update(ticket=ticket, url=result["url"], created_at=_now())
        with self._lock:
            self.qrcodes[ticket] = info
        return _json_response(result)

    def _upload(self, call: RecordedCall) -> tuple[str, dict[str, Any]] | Response:
        """An upload's media type and its ``media`` part, or WeChat's error answer."""
        if (early := self._precheck(call)) is not None:
            return early
        media_type = call.query.get("type")
        if media_type not in _MEDIA_TYPES:
            return self._err(40004, "invalid media type")
        parts = _parse_multipart(call.headers.get("content-type", ""), call.body)
        call.files = parts
        media_part = next((p for p in parts if p["name"] == "media"), None)
        if media_part is None or not media_part["content"]:
            return self._err(41005, "media data missing")
        return media_type, media_part

    async def _media_upload(self, request: Request, call: RecordedCall) -> Response:
        upload = self._upload(call)
        if isinstance(upload, Response):
            return upload
        media_type, media_part = upload
        media_id = _random_chars(64, _ALNUM + "-_")
        created_at = _now()
        with self._lock:
            self.media[media_id] = {
                "type": media_type,
                "filename": media_part["filename"],
                "content_type": media_part["content_type"],
                "content": media_part["content"],
                "created_at": created_at,
            }
        key = "thumb_media_id" if media_type == "thumb" else "media_id"
        return _json_response({"type": media_type, key: media_id, "created_at": created_at})

    async def _show_qrcode(self, request: Request, call: RecordedCall) -> Response:
        # Upstream this lives on mp.weixin.qq.com and needs no access_token.
        with self._lock:
            info = self.qrcodes.get(call.query.get("ticket", ""))
        if info is None:
            return Response(b"invalid ticket", status_code=404, media_type="text/plain")
        return Response(_qr_png(info["url"]), media_type="image/jpg")

    # -- media: what a user's image message carries, and permanent images (the catalogue) --
    def store_media(self, content: bytes, content_type: str = "image/jpeg") -> str:
        """A temporary media as a user's image message would carry it (its ``MediaId``),
        downloadable through ``media/get``; returns the media id."""
        media_id = _random_chars(64, _ALNUM + "-_")
        with self._lock:
            self.media[media_id] = {"type": "image", "filename": "image.jpg",
                                    "content_type": content_type, "content": content,
                                    "created_at": _now()}
        return media_id

    async def _material_add(self, request: Request, call: RecordedCall) -> Response:
        """``material/add_material``: a permanent image, answered with its id and URL."""
        upload = self._upload(call)
        if isinstance(upload, Response):
            return upload
        media_type, media_part = upload
        media_id = _random_chars(43, _ALNUM + "-_")
        with self._lock:
            self.materials[media_id] = {"type": media_type, "content": media_part["content"],
                                        "content_type": media_part["content_type"]}
        url = f"http://mmbiz.qpic.cn/mmbiz_png/{media_id}/0?wx_fmt=png"
        return _json_response({"media_id": media_id, "url": url})

    async def _media_get(self, request: Request, call: RecordedCall) -> Response:
        """``media/get``: a temporary media's bytes (JSON errcode 40007 for an unknown id)."""
        if (early := self._precheck(call)) is not None:
            return early
        with self._lock:
            found = self.media.get(call.query.get("media_id", ""))
        if found is None:
            return self._err(40007, "invalid media_id")
        return Response(found["content"], media_type=found["content_type"] or "image/jpeg")


def _qr_png(data: str) -> bytes:
    """PNG of a QR code for ``data`` (pure python: qrcode + pypng, both project deps)."""
    import qrcode
    from qrcode.image.pure import PyPNGImage

    out = io.BytesIO()
    qrcode.make(data, image_factory=PyPNGImage, box_size=4, border=2).save(out)
    return out.getvalue()


class _LoopbackQRCode(WeChatQRCode):
    """``client.qrcode`` whose ``show``/``get_url`` use the stand-in, not mp.weixin.qq.com
    (upstream ``show`` calls module-level ``requests.get`` on a hard-coded URL)."""

    def _showqrcode_url(self) -> str:
        return self._client.API_BASE_URL + "showqrcode"

    def show(self, ticket: str | Mapping[str, Any]) -> requests.Response:
        if isinstance(ticket, Mapping):
            ticket = ticket["ticket"]
        return self._client._http.get(
            self._showqrcode_url(), params={"ticket": ticket}, timeout=self._client.timeout
        )

    def get_url(self, ticket: str | Mapping[str, Any]) -> str:  # type: ignore[override]
        if isinstance(ticket, Mapping):
            ticket = ticket["ticket"]
        return self._showqrcode_url() + "?ticket=" + quote(ticket, safe="")


class _LoopbackOnlyAdapter(HTTPAdapter):
    """requests transport that refuses any URL not on the loopback interface."""

    def send(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        host = urlsplit(request.url).hostname
        if host not in (LOOPBACK, "localhost", "::1"):
            raise requests.ConnectionError(
                f"stand-in client refuses non-loopback URL {request.url}"
            )
        return super().send(request, *args, **kwargs)


class LoopbackWeChatClient(WeChatClient):
    """``wechatpy.WeChatClient`` whose every URL points at a ``FakeWeChatAPI``.

    ``API_BASE_URL`` is overridden per instance, ``fetch_access_token`` (hard-coded to
    api.weixin.qq.com upstream) uses ``<base>token``, API classes with their own absolute
    ``API_BASE_URL`` (wxa, card, datacube, ...) are rebased onto the stand-in's root,
    ``qrcode.show``/``get_url`` use the stand-in's ``/cgi-bin/showqrcode``, and the HTTP
    session ignores proxy env vars and refuses non-loopback URLs.  (Other methods that call
    module-level ``requests`` with absolute URLs, e.g. ``cloud`` uploads, are not covered.)
    """

    API_BASE_URL = f"http://{LOOPBACK}:9/cgi-bin/"  # replaced in __init__

    def __init__(self, appid: str, secret: str, base_url: str, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", 10)
        super().__init__(appid, secret, **kwargs)
        if not base_url.endswith("/"):
            base_url += "/"
        self.API_BASE_URL = base_url
        root = base_url[: -len("cgi-bin/")] if base_url.endswith("/cgi-bin/") else base_url
        self._http.trust_env = False
        adapter = _LoopbackOnlyAdapter()
        self._http.mount("http://", adapter)
        self._http.mount("https://", adapter)
        self.qrcode = _LoopbackQRCode(self)
        # API objects are per-instance attributes (wechatpy's __new__ re-creates them). Walk
        # vars(), not dir(): dir()+getattr would touch the access_token property and fetch.
        upstream_root = "https://api.weixin.qq.com/"
        for api in list(vars(self).values()):
            upstream = (
                getattr(api, "API_BASE_URL", None) if isinstance(api, BaseWeChatAPI) else None
            )
            if upstream and upstream.startswith(upstream_root):
                api.API_BASE_URL = root + upstream[len(upstream_root) :]

    def fetch_access_token(self) -> dict[str, Any]:
        return self._fetch_access_token(
            url=self.API_BASE_URL + "token",
            params={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
        )


def make_wechat_client(appid: str, secret: str, base_url: str, **kwargs: Any) -> WeChatClient:
    """A real ``wechatpy.WeChatClient`` (subclass) talking to the stand-in at ``base_url``."""
    return LoopbackWeChatClient(appid, secret, base_url, **kwargs)


# ---------------------------------------------------------------------------------------------
# 3. WeChat Pay APIv3, public-key mode
# ---------------------------------------------------------------------------------------------


def _pem_private(key: rsa.RSAPrivateKey) -> str:
    # PKCS#8 "BEGIN PRIVATE KEY", like apiclient_key.pem; wechatpayv3 only accepts this form.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _pem_public(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


@dataclass(frozen=True)
class PayKeys:
    """Merchant + "WeChat Pay platform" key material for public-key mode tests.

    ``platform_public_key_pem`` plays the WeChat Pay public key (pub_key.pem downloaded from
    the merchant platform) identified by ``public_key_id``; its private half is what the
    stand-ins sign notifications/responses with.
    """

    mchid: str
    appid: str
    cert_serial_no: str
    apiv3_key: str
    public_key_id: str
    merchant_private_key_pem: str
    merchant_public_key_pem: str
    platform_private_key_pem: str
    platform_public_key_pem: str
    merchant_private_key_path: Path
    platform_public_key_path: Path

    def settings(self, notify_url: str, api_base_url: str) -> dict[str, str]:
        """The storefront's WeChat Pay settings for this merchant (bot/settings.py names)."""
        return {"WECHAT_PAY_MCH_ID": self.mchid,
                "WECHAT_PAY_PRIVATE_KEY_FILE": str(self.merchant_private_key_path),
                "WECHAT_PAY_CERT_SERIAL": self.cert_serial_no,
                "WECHAT_PAY_APIV3_KEY": self.apiv3_key,
                "WECHAT_PAY_PUBLIC_KEY_FILE": str(self.platform_public_key_path),
                "WECHAT_PAY_PUBLIC_KEY_ID": self.public_key_id,
                "WECHAT_PAY_NOTIFY_URL": notify_url, "WECHAT_PAY_API_BASE_URL": api_base_url}

    @cached_property
    def platform_private_key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.platform_private_key_pem.encode(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    @cached_property
    def merchant_public_key(self) -> rsa.RSAPublicKey:
        key = serialization.load_pem_public_key(self.merchant_public_key_pem.encode())
        assert isinstance(key, rsa.RSAPublicKey)
        return key


def generate_pay_keys(
    directory: str | Path | None = None,
    *,
    mchid: str = "1900000109",
    appid: str = "wxd678efh567hg6787",
) -> PayKeys:
    """Fresh RSA-2048 merchant and platform keys, written as ``apiclient_key.pem`` (merchant
    private key) and ``pub_key.pem`` (WeChat Pay public key) into ``directory`` (a new temp
    dir when omitted), plus a ``PUB_KEY_ID_0114...`` id, a 32-char APIv3 key and a serial."""
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="wxpay-"))
    folder.mkdir(parents=True, exist_ok=True)
    merchant = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    platform = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    merchant_path = folder / "apiclient_key.pem"
    platform_path = folder / "pub_key.pem"
    merchant_path.write_text(_pem_private(merchant))
    merchant_path.chmod(0o600)
    platform_path.write_text(_pem_public(platform.public_key()))
    return PayKeys(
        mchid=mchid,
        appid=appid,
        cert_serial_no=secrets.token_hex(20).upper(),
        apiv3_key=_random_chars(32),
        public_key_id="PUB_KEY_ID_0114" + mchid + _random_digits(14),
        merchant_private_key_pem=_pem_private(merchant),
        merchant_public_key_pem=_pem_public(merchant.public_key()),
        platform_private_key_pem=_pem_private(platform),
        platform_public_key_pem=_pem_public(platform.public_key()),
        merchant_private_key_path=merchant_path,
        platform_public_key_path=platform_path,
    )


def pay_signature_headers(
    keys: PayKeys,
    body: bytes | str,
    *,
    timestamp: int | str | None = None,
    nonce: str | None = None,
    serial: str | None = None,
    wrong_signature: bool = False,
) -> dict[str, str]:
    """``Wechatpay-*`` headers for ``body``: RSA-SHA256 (PKCS#1 v1.5) by the platform key over
    ``"timestamp\\nnonce\\nbody\\n"``, serial = public key id (unless ``serial`` given)."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    ts = str(_now() if timestamp is None else timestamp)
    nc = nonce or _random_chars(32, _UPPER_ALNUM)
    message = f"{ts}\n{nc}\n".encode() + raw + b"\n"
    if wrong_signature:
        message += b"tampered"
    signature = keys.platform_private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return {
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": nc,
        "Wechatpay-Serial": serial or keys.public_key_id,
        "Wechatpay-Signature": base64.b64encode(signature).decode("ascii"),
        "Wechatpay-Signature-Type": SIGNATURE_TYPE,
    }


_TRADE_STATE_DESC = {
    "SUCCESS": "支付成功",
    "REFUND": "转入退款",
    "NOTPAY": "订单未支付",
    "CLOSED": "订单已关闭",
    "REVOKED": "已撤销（刷卡支付）",
    "USERPAYING": "用户支付中",
    "PAYERROR": "支付失败",
}
_REFUND_EVENTS = {
    "SUCCESS": ("REFUND.SUCCESS", "退款成功"),
    "ABNORMAL": ("REFUND.ABNORMAL", "退款异常"),
    "CLOSED": ("REFUND.CLOSED", "退款关闭"),
}


def pay_transaction_resource(
    keys: PayKeys,
    *,
    out_trade_no: str,
    total_fen: int,
    transaction_id: str | None = None,
    currency: str = "CNY",
    trade_state: str = "SUCCESS",
    payer_openid: str | None = DEFAULT_OPENID,
    trade_type: str = "JSAPI",
    attach: str = "",
    bank_type: str = "OTHERS",
    payer_total: int | None = None,
    success_time: str | None = None,
) -> dict[str, Any]:
    """The decrypted ``transaction`` object (notification resource / query response)."""
    paid = trade_state in ("SUCCESS", "REFUND")
    data: dict[str, Any] = {"appid": keys.appid, "mchid": keys.mchid, "out_trade_no": out_trade_no}
    if transaction_id:
        data["transaction_id"] = transaction_id
    if paid or trade_state == "USERPAYING":
        data["trade_type"] = trade_type
    data["trade_state"] = trade_state
    data["trade_state_desc"] = _TRADE_STATE_DESC.get(trade_state, trade_state)
    if paid:
        data["bank_type"] = bank_type
    data["attach"] = attach
    if paid:
        data["success_time"] = success_time or _iso_cst()
    if payer_openid and (paid or trade_state == "USERPAYING"):
        data["payer"] = {"openid": payer_openid}
    amount: dict[str, Any] = {"total": total_fen, "currency": currency, "payer_currency": currency}
    if paid:
        amount["payer_total"] = total_fen if payer_total is None else payer_total
    data["amount"] = amount
    return data


def refund_resource(
    keys: PayKeys,
    *,
    out_trade_no: str,
    out_refund_no: str,
    refund_id: str,
    total_fen: int,
    refund_fen: int,
    transaction_id: str | None = None,
    refund_status: str = "SUCCESS",
    payer_total: int | None = None,
    payer_refund: int | None = None,
    user_received_account: str = "支付用户零钱",
    success_time: str | None = None,
) -> dict[str, Any]:
    """The decrypted ``refund`` object of a refund notification."""
    data: dict[str, Any] = {
        "mchid": keys.mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id or _random_digits(28),
        "out_refund_no": out_refund_no,
        "refund_id": refund_id,
        "refund_status": refund_status,
    }
    if refund_status == "SUCCESS":
        data["success_time"] = success_time or _iso_cst()
    data["user_received_account"] = user_received_account
    data["amount"] = {
        "total": total_fen,
        "refund": refund_fen,
        "payer_total": total_fen if payer_total is None else payer_total,
        "payer_refund": refund_fen if payer_refund is None else payer_refund,
    }
    return data


def _signed_notification(
    keys: PayKeys,
    *,
    event_type: str,
    summary: str,
    original_type: str,
    resource: Mapping[str, Any],
    timestamp: int | None,
    wrong_signature: bool,
    serial: str | None,
) -> tuple[dict[str, str], bytes]:
    ts = _now() if timestamp is None else int(timestamp)
    nonce = _random_chars(12)
    plaintext = _json_bytes(resource)
    ciphertext = AESGCM(keys.apiv3_key.encode("utf-8")).encrypt(
        nonce.encode("utf-8"), plaintext, original_type.encode("utf-8")
    )
    envelope = {
        "id": str(uuid.uuid4()),
        "create_time": _iso_cst(ts),
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary,
        "resource": {
            "original_type": original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
            "associated_data": original_type,
            "nonce": nonce,
        },
    }
    body = _json_bytes(envelope)
    headers = {"Content-Type": "application/json"}
    headers.update(
        pay_signature_headers(
            keys, body, timestamp=ts, serial=serial, wrong_signature=wrong_signature
        )
    )
    return headers, body


def signed_pay_notification(
    keys: PayKeys,
    *,
    out_trade_no: str,
    transaction_id: str,
    total_fen: int,
    currency: str = "CNY",
    trade_state: str = "SUCCESS",
    payer_openid: str = DEFAULT_OPENID,
    timestamp: int | None = None,
    event_type: str = "TRANSACTION.SUCCESS",
    wrong_signature: bool = False,
    trade_type: str = "JSAPI",
    attach: str = "",
    bank_type: str = "OTHERS",
    payer_total: int | None = None,
    success_time: str | None = None,
    serial: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """A payment notification (POSTed by WeChat Pay to notify_url): ``(headers, body)``.

    The transaction JSON is AES-256-GCM encrypted under the APIv3 key (associated_data
    ``transaction``), and the headers carry the platform-key signature over the exact body.
    ``wrong_signature`` signs something else; ``serial`` overrides ``Wechatpay-Serial``.
    """
    resource = pay_transaction_resource(
        keys,
        out_trade_no=out_trade_no,
        total_fen=total_fen,
        transaction_id=transaction_id,
        currency=currency,
        trade_state=trade_state,
        payer_openid=payer_openid,
        trade_type=trade_type,
        attach=attach,
        bank_type=bank_type,
        payer_total=payer_total,
        success_time=success_time,
    )
    if success_time is None and "success_time" in resource and timestamp is not None:
        resource["success_time"] = _iso_cst(timestamp)
    return _signed_notification(
        keys,
        event_type=event_type,
        summary=_TRADE_STATE_DESC.get(trade_state, trade_state),
        original_type="transaction",
        resource=resource,
        timestamp=timestamp,
        wrong_signature=wrong_signature,
        serial=serial,
    )


def signed_refund_notification(
    keys: PayKeys,
    *,
    out_trade_no: str,
    out_refund_no: str,
    refund_id: str,
    total_fen: int,
    refund_fen: int,
    transaction_id: str | None = None,
    refund_status: str = "SUCCESS",
    payer_total: int | None = None,
    payer_refund: int | None = None,
    timestamp: int | None = None,
    event_type: str | None = None,
    wrong_signature: bool = False,
    serial: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """A refund notification: ``event_type`` REFUND.SUCCESS/ABNORMAL/CLOSED (from
    ``refund_status`` unless given), resource ``original_type`` "refund"."""
    default_event, summary = _REFUND_EVENTS.get(refund_status, ("REFUND." + refund_status, ""))
    resource = refund_resource(
        keys,
        out_trade_no=out_trade_no,
        out_refund_no=out_refund_no,
        refund_id=refund_id,
        total_fen=total_fen,
        refund_fen=refund_fen,
        transaction_id=transaction_id,
        refund_status=refund_status,
        payer_total=payer_total,
        payer_refund=payer_refund,
        success_time=_iso_cst(timestamp) if timestamp is not None else None,
    )
    return _signed_notification(
        keys,
        event_type=event_type or default_event,
        summary=summary,
        original_type="refund",
        resource=resource,
        timestamp=timestamp,
        wrong_signature=wrong_signature,
        serial=serial,
    )


_AUTH_PREFIX = SIGNATURE_TYPE + " "


def _parse_authorization(value: str) -> dict[str, str] | None:
    if not value.startswith(_AUTH_PREFIX):
        return None
    out: dict[str, str] = {}
    for item in value[len(_AUTH_PREFIX) :].split(","):
        name, sep, raw = item.strip().partition("=")
        if not sep:
            return None
        out[name] = raw.strip('"')
    return out


class FakeWeChatPayAPI(_LoopbackServer):
    """Loopback stand-in for ``https://api.mch.weixin.qq.com`` (APIv3, public-key mode).

    Verifies the merchant ``Authorization`` signature (401 SIGN_ERROR otherwise, switch off
    with ``verify_requests=False``) and signs every response with the platform key
    (``corrupt_response_signatures = True`` makes the SDK reject them).  Keeps ``orders``
    (out_trade_no -> order) and ``refunds`` (out_refund_no -> refund); ``mark_paid``,
    ``notification_for`` and ``complete_refund`` drive the asynchronous side.
    """

    def __init__(self, keys: PayKeys, *, verify_requests: bool = True) -> None:
        super().__init__()
        self.keys = keys
        self.verify_requests = verify_requests
        self.corrupt_response_signatures = False
        self.orders: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self._injected: dict[str, list[tuple[int, str, str]]] = {}

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash: the SDK appends ``/v3/...``)."""
        return self.root_url

    def inject_error(self, path: str, status: int, code: str, message: str, times: int = 1) -> None:
        with self._lock:
            self._injected.setdefault(self._normalize(path), []).extend(
                [(status, code, message)] * times
            )

    def _routes(self) -> list[tuple[str, list[str], Handler]]:
        return [
            ("/v3/pay/transactions/jsapi", ["POST"], self._order_jsapi),
            ("/v3/pay/transactions/native", ["POST"], self._order_native),
            ("/v3/pay/transactions/out-trade-no/{no}", ["GET"], self._query_by_out_trade_no),
            ("/v3/pay/transactions/id/{tid}", ["GET"], self._query_by_transaction_id),
            ("/v3/pay/transactions/out-trade-no/{no}/close", ["POST"], self._close),
            ("/v3/refund/domestic/refunds", ["POST"], self._refund),
            ("/v3/refund/domestic/refunds/{no}", ["GET"], self._query_refund),
            ("/v3/certificates", ["GET"], self._certificates),
        ]

    # -- state drivers ---------------------------------------------------------------------
    def mark_paid(
        self,
        out_trade_no: str,
        *,
        payer_openid: str | None = None,
        transaction_id: str | None = None,
    ) -> dict[str, Any]:
        """The user paid: order becomes SUCCESS; returns the transaction resource."""
        with self._lock:
            order = self.orders[out_trade_no]
            order["trade_state"] = "SUCCESS"
            order["transaction_id"] = (
                transaction_id or order.get("transaction_id") or ("42000" + _random_digits(23))
            )
            if payer_openid:
                order["payer_openid"] = payer_openid
            order.setdefault("payer_openid", DEFAULT_OPENID)
            order["success_time"] = _iso_cst()
            return self._resource(order)

    def notification_for(
        self, out_trade_no: str, *, wrong_signature: bool = False
    ) -> tuple[dict[str, str], bytes]:
        """Signed TRANSACTION.SUCCESS notification for a paid order (see ``mark_paid``)."""
        with self._lock:
            order = dict(self.orders[out_trade_no])
        if order["trade_state"] != "SUCCESS":
            raise ValueError(f"order {out_trade_no} is {order['trade_state']}, not paid")
        return signed_pay_notification(
            self.keys,
            out_trade_no=out_trade_no,
            transaction_id=order["transaction_id"],
            total_fen=order["total"],
            currency=order["currency"],
            payer_openid=order["payer_openid"],
            trade_type=order["trade_type"],
            attach=order.get("attach", ""),
            success_time=order["success_time"],
            wrong_signature=wrong_signature,
        )

    def complete_refund(
        self, out_refund_no: str, status: str = "SUCCESS", *, wrong_signature: bool = False
    ) -> tuple[dict[str, str], bytes]:
        """Refund settles (SUCCESS/ABNORMAL/CLOSED); returns the signed refund notification."""
        with self._lock:
            refund = self.refunds[out_refund_no]
            refund["status"] = status
            refund = dict(refund)
        amount = refund["amount"]
        return signed_refund_notification(
            self.keys,
            out_trade_no=refund["out_trade_no"],
            out_refund_no=out_refund_no,
            refund_id=refund["refund_id"],
            total_fen=amount["total"],
            refund_fen=amount["refund"],
            transaction_id=refund["transaction_id"],
            refund_status=status,
            wrong_signature=wrong_signature,
        )

    # -- plumbing --------------------------------------------------------------------------
    def _resource(self, order: Mapping[str, Any]) -> dict[str, Any]:
        return pay_transaction_resource(
            self.keys,
            out_trade_no=order["out_trade_no"],
            total_fen=order["total"],
            transaction_id=order.get("transaction_id"),
            currency=order["currency"],
            trade_state=order["trade_state"],
            payer_openid=order.get("payer_openid"),
            trade_type=order["trade_type"],
            attach=order.get("attach", ""),
            success_time=order.get("success_time"),
        )

    @staticmethod
    def _error(status: int, code: str, message: str) -> Response:
        return _json_response({"code": code, "message": message}, status)

    def _check_request(self, request: Request, call: RecordedCall) -> Response | None:
        with self._lock:
            queue = self._injected.get(call.path)
            injected = queue.pop(0) if queue else None
        if injected is not None:
            return self._error(*injected)
        if not self.verify_requests:
            return None
        auth = _parse_authorization(call.headers.get("authorization", ""))
        if auth is None:
            return self._error(401, "SIGN_ERROR", "Authorization 头缺失或格式错误")
        if auth.get("mchid") != self.keys.mchid:
            return self._error(401, "SIGN_ERROR", "商户号不匹配")
        if auth.get("serial_no") != self.keys.cert_serial_no:
            return self._error(401, "SIGN_ERROR", "商户证书序列号有误")
        raw_path = request.scope.get("raw_path") or call.path.encode()
        url = raw_path.decode("latin-1")
        if request.scope.get("query_string"):
            url += "?" + request.scope["query_string"].decode("latin-1")
        message = (
            (
                f"{call.method}\n{url}\n{auth.get('timestamp', '')}\n{auth.get('nonce_str', '')}\n"
            ).encode()
            + call.body
            + b"\n"
        )
        try:
            self.keys.merchant_public_key.verify(
                base64.b64decode(auth.get("signature", "")),
                message,
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return self._error(401, "SIGN_ERROR", "签名错误")
        return None

    async def _after(self, request: Request, call: RecordedCall, response: Response) -> Response:
        body = bytes(response.body)
        headers = pay_signature_headers(
            self.keys, body, wrong_signature=self.corrupt_response_signatures
        )
        headers["Request-ID"] = str(uuid.uuid4())
        response.headers.update(headers)
        return response

    # -- endpoints -------------------------------------------------------------------------
    async def _create_order(
        self, request: Request, call: RecordedCall, trade_type: str
    ) -> Response:
        if (early := self._check_request(request, call)) is not None:
            return early
        data = call.json
        if not isinstance(data, dict):
            return self._error(400, "PARAM_ERROR", "请求体不是合法的JSON")
        for name in ("appid", "mchid", "description", "out_trade_no", "notify_url", "amount"):
            if not data.get(name):
                return self._error(400, "PARAM_ERROR", f"输入源“/body/{name}”映射到字段缺失")
        if data["appid"] != self.keys.appid or data["mchid"] != self.keys.mchid:
            return self._error(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        total = (data.get("amount") or {}).get("total")
        if not isinstance(total, int) or total <= 0:
            return self._error(
                400, "PARAM_ERROR", "输入源“/body/amount/total”映射到字段“总金额”错误"
            )
        openid = (data.get("payer") or {}).get("openid")
        if trade_type == "JSAPI" and not openid:
            return self._error(400, "PARAM_ERROR", "输入源“/body/payer/openid”映射到字段缺失")
        no = data["out_trade_no"]
        with self._lock:
            existing = self.orders.get(no)
            if existing is not None:
                if existing["trade_state"] == "SUCCESS":
                    return self._error(400, "ORDERPAID", "该订单已支付")
                if existing["total"] != total or existing["trade_type"] != trade_type:
                    return self._error(400, "INVALID_REQUEST", "201 商户订单号重复")
                order = existing
            else:
                order = {
                    "out_trade_no": no,
                    "trade_type": trade_type,
                    "trade_state": "NOTPAY",
                    "total": total,
                    "currency": data["amount"].get("currency", "CNY"),
                    "description": data["description"],
                    "notify_url": data["notify_url"],
                    "attach": data.get("attach", ""),
                    "payer_openid": openid,
                    "prepay_id": "wx" + time.strftime("%d%H%M%S") + _random_chars(24).lower(),
                    "code_url": "weixin://wxpay/bizpayurl?pr=" + _random_chars(7),
                    "request": data,
                }
                self.orders[no] = order
        if trade_type == "NATIVE":
            return _json_response({"code_url": order["code_url"]})
        return _json_response({"prepay_id": order["prepay_id"]})

    async def _order_jsapi(self, request: Request, call: RecordedCall) -> Response:
        return await self._create_order(request, call, "JSAPI")

    async def _order_native(self, request: Request, call: RecordedCall) -> Response:
        return await self._create_order(request, call, "NATIVE")

    async def _query_by_out_trade_no(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._check_request(request, call)) is not None:
            return early
        if call.query.get("mchid") != self.keys.mchid:
            return self._error(400, "PARAM_ERROR", "mchid 参数错误")
        with self._lock:
            order = self.orders.get(request.path_params["no"])
            resource = self._resource(order) if order else None
        if resource is None:
            return self._error(404, "ORDER_NOT_EXIST", "订单不存在")
        return _json_response(resource)

    async def _query_by_transaction_id(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._check_request(request, call)) is not None:
            return early
        tid = request.path_params["tid"]
        with self._lock:
            order = next((o for o in self.orders.values() if o.get("transaction_id") == tid), None)
            resource = self._resource(order) if order else None
        if resource is None:
            return self._error(404, "ORDER_NOT_EXIST", "订单不存在")
        return _json_response(resource)

    async def _close(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._check_request(request, call)) is not None:
            return early
        with self._lock:
            order = self.orders.get(request.path_params["no"])
            if order is None:
                return self._error(404, "ORDER_NOT_EXIST", "订单不存在")
            if order["trade_state"] == "SUCCESS":
                return self._error(400, "ORDERPAID", "该订单已支付")
            order["trade_state"] = "CLOSED"
        return Response(status_code=204)

    async def _refund(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._check_request(request, call)) is not None:
            return early
        data = call.json
        if not isinstance(data, dict):
            return self._error(400, "PARAM_ERROR", "请求体不是合法的JSON")
        amount = data.get("amount") or {}
        out_refund_no = data.get("out_refund_no")
        refund, total = amount.get("refund"), amount.get("total")
        if not out_refund_no or not isinstance(refund, int) or not isinstance(total, int):
            return self._error(400, "PARAM_ERROR", "输入源“/body/amount”映射到字段缺失")
        if amount.get("currency") != "CNY":
            return self._error(400, "PARAM_ERROR", "输入源“/body/amount/currency”映射到字段缺失")
        if refund <= 0 or refund > total:
            return self._error(400, "INVALID_REQUEST", "退款金额超过订单可退金额")
        with self._lock:
            if out_refund_no in self.refunds:
                return _json_response(self._refund_view(self.refunds[out_refund_no]))
            order = None
            if data.get("out_trade_no"):
                order = self.orders.get(data["out_trade_no"])
            elif data.get("transaction_id"):
                order = next(
                    (
                        o
                        for o in self.orders.values()
                        if o.get("transaction_id") == data["transaction_id"]
                    ),
                    None,
                )
            else:
                return self._error(400, "PARAM_ERROR", "transaction_id 和 out_trade_no 必须二选一")
            if order is not None:
                if order["trade_state"] not in ("SUCCESS", "REFUND"):
                    return self._error(400, "INVALID_REQUEST", "订单状态不正确，无法退款")
                if total != order["total"]:
                    return self._error(400, "INVALID_REQUEST", "订单金额与请求不符")
                refunded = sum(
                    r["amount"]["refund"]
                    for r in self.refunds.values()
                    if r["out_trade_no"] == order["out_trade_no"] and r["status"] != "CLOSED"
                )
                if refunded + refund > total:
                    return self._error(403, "NOT_ENOUGH", "订单可退金额不足")
                order["trade_state"] = "REFUND"
            record = {
                "refund_id": "50" + _random_digits(27),
                "out_refund_no": out_refund_no,
                "transaction_id": (order or {}).get("transaction_id")
                or data.get("transaction_id")
                or ("42000" + _random_digits(23)),
                "out_trade_no": (order or {}).get("out_trade_no") or data.get("out_trade_no", ""),
                "create_time": _iso_cst(),
                "status": "PROCESSING",
                "reason": data.get("reason"),
                "notify_url": data.get("notify_url"),
                "amount": {"total": total, "refund": refund, "currency": "CNY"},
            }
            self.refunds[out_refund_no] = record
            view = self._refund_view(record)
        return _json_response(view)

    @staticmethod
    def _refund_view(record: Mapping[str, Any]) -> dict[str, Any]:
        total, refund = record["amount"]["total"], record["amount"]["refund"]
        view = {
            "refund_id": record["refund_id"],
            "out_refund_no": record["out_refund_no"],
            "transaction_id": record["transaction_id"],
            "out_trade_no": record["out_trade_no"],
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "create_time": record["create_time"],
            "status": record["status"],
            "funds_account": "AVAILABLE",
            "amount": {
                "total": total,
                "refund": refund,
                "from": [],
                "payer_total": total,
                "payer_refund": refund,
                "settlement_refund": refund,
                "settlement_total": total,
                "discount_refund": 0,
                "currency": "CNY",
                "refund_fee": 0,
            },
            "promotion_detail": [],
        }
        if record["status"] == "SUCCESS":
            view["success_time"] = _iso_cst()
        return view

    async def _query_refund(self, request: Request, call: RecordedCall) -> Response:
        if (early := self._check_request(request, call)) is not None:
            return early
        with self._lock:
            record = self.refunds.get(request.path_params["no"])
            view = self._refund_view(record) if record else None
        if view is None:
            return self._error(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return _json_response(view)

    async def _certificates(self, request: Request, call: RecordedCall) -> Response:
        # Public-key mode merchants have no platform certificates to download.
        if (early := self._check_request(request, call)) is not None:
            return early
        return _json_response({"data": []})


def make_pay_client(
    keys: PayKeys,
    base_url: str,
    notify_url: str,
    *,
    wechatpay_type: WeChatPayType = WeChatPayType.JSAPI,
    timeout: float | tuple[float, float] = (3, 10),
) -> WeChatPay:
    """A real ``wechatpayv3.WeChatPay`` in public-key mode, pointed at ``base_url``.

    Public-key mode (``public_key`` + ``public_key_id``) keeps the constructor offline; the
    gateway is the private ``_core._gate_way`` (no constructor argument exists).  Proxies from
    the environment are disabled so loopback requests never leave the host.
    """
    pay = WeChatPay(
        wechatpay_type=wechatpay_type,
        mchid=keys.mchid,
        private_key=keys.merchant_private_key_pem,
        cert_serial_no=keys.cert_serial_no,
        appid=keys.appid,
        apiv3_key=keys.apiv3_key,
        notify_url=notify_url,
        timeout=timeout,
        proxy={"http": None, "https": None, "all": None},
        public_key=keys.platform_public_key_pem,
        public_key_id=keys.public_key_id,
    )
    pay._core._gate_way = base_url.rstrip("/")
    return pay
