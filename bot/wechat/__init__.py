"""The WeChat Official Account adapter (wechatpy 1.8): see docs/wechat.md.

- `WeChatAdapter` (adapter.py) serves `GET`/`POST /wechat` for bot/http.py: the server
  check, then messages and events — signature first, safe mode, defusedxml, dedupe by
  `MsgId`, `handlers.dispatch`, a passive reply within five seconds and customer-service
  follow-ups for the rest.
- render.py: a `Reply` as WeChat messages (`Renderer`: texts with buttons as menu links,
  pictures, invoices, product cards as permanent images) and the passive reply;
  followups.py: what follows it as customer-service messages, in background tasks.
- gate.py: who is speaking (signature, freshness, one body per nonce, safe mode) and the
  passive reply's encryption; inbound.py: what a push asks for, as a `Request`.
- replay.py: a signed query is fresh for five minutes and good for one body (nonces in
  Redis or the database); seen.py: what was already answered (the dedupe).
- `WeChatSender` (sender.py) delivers notifications: customer-service messages inside the
  48-hour window, template messages outside it, `RecipientUnreachable` otherwise.
- messages.py: WeChat's formats (parsing pushes, rendering replies, links, text sizes).
"""

from .adapter import WeChatAdapter
from .messages import BadXml, Part, parse_xml, render_reply, split_text
from .sender import (
    RecipientUnreachable,
    StorefrontWeChatClient,
    WeChatSender,
    client_from_settings,
)

__all__ = [
    "BadXml",
    "Part",
    "RecipientUnreachable",
    "StorefrontWeChatClient",
    "WeChatAdapter",
    "WeChatSender",
    "client_from_settings",
    "parse_xml",
    "render_reply",
    "split_text",
]
