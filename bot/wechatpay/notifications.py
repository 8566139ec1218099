"""Reading a WeChat Pay notification: headers checked against the exact body, then the
resource decrypted. Nothing in the body is trusted before the signature verifies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wechatpayv3.utils import aes_decrypt, rsa_verify

NOTIFY_WINDOW = 300  # seconds a notification's timestamp may be off our clock, either way
MAX_NOTIFICATION = 64 * 1024
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"


@dataclass(frozen=True)
class Answer:
    """What a notification endpoint says back: 204 with no body, or a 4xx (503 when the
    database is away) with `{"code": "FAIL", "message": …}` — as WeChat Pay expects."""

    status: int
    body: bytes = b""

    @classmethod
    def ok(cls) -> Answer:
        return cls(204)

    @classmethod
    def fail(cls, status: int, message: str) -> Answer:
        return cls(status, json.dumps({"code": "FAIL", "message": message},
                                      ensure_ascii=False).encode())


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.answer = Answer.fail(status, message)


def outcome_answer(outcome: str, what: str, differs: str) -> Answer | None:
    """The answer when recording a notification found nothing to record: 404 for an unknown
    `what`, 400 (`differs`) when it does not match ours; None when it was recorded."""
    if outcome == "unknown":
        return Answer.fail(404, f"unknown {what}")
    if outcome == "mismatch":
        return Answer.fail(400, differs)
    return None


def verify(headers: Mapping[str, str], body: bytes, *, public_key: Any, public_key_id: str,
           apiv3_key: str, expect: str, now: float) -> dict[str, Any]:
    """The notification's envelope with its `resource` decrypted, or `Refused`.

    In order: the four `Wechatpay-*` headers present (401); the serial is our WeChat Pay
    public key's id — public-key mode never downloads certificates (401); the timestamp at
    most five minutes from `now` (400); the RSA-SHA256 signature over
    `timestamp\\nnonce\\nbody\\n` (401); then the AES-256-GCM resource under the APIv3 key
    (400), which must be of the `expect`ed type."""
    h = {k.lower(): v for k, v in headers.items()}
    if len(body) > MAX_NOTIFICATION:
        raise Refused(413, "body too large")
    signature, timestamp = h.get("wechatpay-signature", ""), h.get("wechatpay-timestamp", "")
    nonce, serial = h.get("wechatpay-nonce", ""), h.get("wechatpay-serial", "")
    if not (signature and timestamp and nonce and serial):
        raise Refused(401, "missing Wechatpay signature headers")
    if h.get("wechatpay-signature-type", SIGNATURE_TYPE) != SIGNATURE_TYPE:
        raise Refused(401, "unsupported signature type")
    if serial != public_key_id:
        raise Refused(401, "unknown Wechatpay-Serial")
    if not timestamp.isdigit() or len(timestamp) > 12 or abs(now - int(timestamp)) > NOTIFY_WINDOW:
        raise Refused(400, "timestamp outside the five-minute window")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "body is not UTF-8") from None
    if not rsa_verify(timestamp, nonce, text, signature, public_key):
        raise Refused(401, "signature does not verify")
    try:
        envelope = json.loads(text)
        resource = envelope["resource"]
        if envelope.get("resource_type") != "encrypt-resource" or \
                resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise ValueError("unexpected resource")
        plain = aes_decrypt(nonce=resource["nonce"], ciphertext=resource["ciphertext"],
                            associated_data=resource.get("associated_data") or "",
                            apiv3_key=apiv3_key)
        if plain is None:
            raise ValueError("cannot decrypt")
        envelope["resource"] = json.loads(plain)
        if resource.get("original_type") not in (None, expect) or \
                not isinstance(envelope["resource"], dict):
            raise ValueError("not a " + expect)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Refused(400, f"malformed notification: {exc}") from None
    return envelope
