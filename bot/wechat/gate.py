"""Who is speaking on `/wechat`: the query signed with WECHAT_TOKEN, fresh, its nonce used for
one body only (replay.py); in safe mode the body encrypted and its `msg_signature` right; and
the passive reply encrypted the same way. Nothing here reads what the message says."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException

from .messages import BadXml, parse_xml
from .replay import Nonces, log_refusal, query_refusal

NO_REPLY = (200, b"success", "text/plain")
FORBIDDEN = (403, b"forbidden", "text/plain")

Response = tuple[int, bytes, str]


class Gate:
    def __init__(self, token: str, nonces: Nonces, clock: Callable[[], float], *,
                 aes_key: str | None = None, appid: str = "") -> None:
        self.token = token
        self.nonces = nonces
        self.clock = clock  # the adapter's (tests move it)
        self.crypto = WeChatCrypto(token, aes_key, appid) if aes_key else None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def refusal(self, query: dict[str, str]) -> str | None:
        """Why this query is not believed (bad or missing signature, stale), or None."""
        return query_refusal(self.token, query, self.clock())

    def claim_nonce(self, query: dict[str, str], body: bytes) -> bool:
        """False when this signed query was already used for a different body. Raises
        `DatabaseUnavailable` when that cannot be known."""
        return self.nonces.claim(query["timestamp"], query["nonce"], body, self.now())

    @staticmethod
    def refuse(reason: str, query: dict[str, str]) -> Response:
        log_refusal(reason, query)
        return FORBIDDEN

    def open(self, body: bytes, query: dict[str, str]) -> dict[str, str] | str:
        """The message a signed body carries, or why it is refused (403). Raises `BadXml`
        for a body that is not a WeChat push (400)."""
        outer = parse_xml(body)
        if self.crypto is not None:
            # Safe mode: only what `msg_signature` covers is believed. A plaintext body
            # is signed by nothing (the query signature leaves the body out).
            if not outer.get("Encrypt"):
                return "a plaintext body in safe mode"
            plain = self.decrypt(outer, query)
            if plain is None:
                return "wrong msg_signature"
            return parse_xml(plain)
        if query.get("encrypt_type") == "aes" or "Encrypt" in outer:
            raise BadXml("a safe-mode message needs WECHAT_ENCODING_AES_KEY")
        return outer

    def decrypt(self, outer: dict[str, str], query: dict[str, str]) -> str | None:
        """The plaintext of a safe-mode message; None when its signature is wrong."""
        assert self.crypto is not None
        try:
            return str(self.crypto.decrypt_message(
                {"Encrypt": outer["Encrypt"]}, query.get("msg_signature", ""),
                query.get("timestamp", ""), query.get("nonce", "")))
        except InvalidSignatureException:
            return None
        except Exception as exc:  # noqa: BLE001 - bad base64, padding, app id: a bad body
            raise BadXml(f"cannot decrypt: {type(exc).__name__}") from None

    def reply(self, xml: str, query: dict[str, str]) -> Response:
        """The passive reply (encrypted in safe mode), or `success` for none."""
        if not xml:
            return NO_REPLY
        if self.crypto is not None:
            xml = self.crypto.encrypt_message(xml, query.get("nonce", ""),
                                              query.get("timestamp", ""))
        return 200, xml.encode("utf-8"), "application/xml"
