"""WeChat's message formats: pushes parsed safely, passive replies rendered, texts cut to size.

Pushes are parsed with defusedxml (no DTD, no entities, no external references): a body that
needs any of those is not a WeChat push. Replies are rendered here rather than with wechatpy's
templates, which break on a "]]>" inside a CDATA section.

Characters XML 1.0 forbids (C0 controls but tab and line ends, surrogates, U+FFFE, U+FFFF)
break a parse on either side. In a push each becomes U+FFFD before parsing — replaced, not
dropped: dropping the \x01 of "]]\x01>" would end a CDATA section early and let a user's
text add fields. In what we send they are dropped (`xml_safe`): product names, support texts
and user names are echoed back without them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring

from handlers.base import Document

MAX_TEXT_BYTES = 2000  # WeChat's text messages carry at most 2048 bytes
OPENID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DIGITS = re.compile(r"^\d{1,32}$")
SCENE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# What XML 1.0's `Char` production leaves out, as text and as UTF-8 bytes (a C0 control is
# one byte; a surrogate, invalid UTF-8 anyway, three; U+FFFE and U+FFFF three).
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
NOT_XML_BYTES = re.compile(b"[\x00-\x08\x0b\x0c\x0e-\x1f]|\xed[\xa0-\xbf][\x80-\xbf]"
                           b"|\xef\xbf[\xbe\xbf]")
REPLACEMENT = "\ufffd"


def xml_safe(text: str) -> str:
    """`text` without the characters XML 1.0 forbids: safe in a reply's XML and in the
    JSON of WeChat's message API (UTF-8 cannot carry a lone surrogate either)."""
    return NOT_XML.sub("", text)


class BadXml(ValueError):
    """A body that is not one flat, entity-free WeChat `<xml>` push."""


def parse_xml(data: bytes | str) -> dict[str, str]:
    """`<xml><A>1</A>…</xml>` → {"A": "1", …}, refusing DTDs, entities and anything that is
    not one flat WeChat push. Characters XML forbids come as U+FFFD. Raises `BadXml`."""
    if isinstance(data, bytes):
        data = NOT_XML_BYTES.sub(REPLACEMENT.encode(), data)
    elif isinstance(data, str):
        data = NOT_XML.sub(REPLACEMENT, data)
    try:
        root = safe_fromstring(data, forbid_dtd=True, forbid_entities=True,
                               forbid_external=True)
    except (ParseError, DefusedXmlException, ValueError, TypeError) as exc:
        raise BadXml(f"not acceptable XML: {type(exc).__name__}") from None
    if root.tag != "xml":
        raise BadXml("root element is not <xml>")
    out: dict[str, str] = {}
    for child in root:
        if len(child) == 0 and isinstance(child.tag, str):
            out[child.tag] = child.text or ""
    return out


def _cdata(text: str) -> str:
    # "]]>" cannot appear inside one CDATA section: split it across two.
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_reply(to_user: str, from_user: str, kind: str, value: str, now: int) -> str:
    """A passive reply: `text` (value = content) or `image` (value = media id)."""
    value = xml_safe(value)
    body = (f"<Content>{_cdata(value)}</Content>" if kind == "text"
            else f"<Image><MediaId>{_cdata(value)}</MediaId></Image>")
    return (f"<xml><ToUserName>{_cdata(to_user)}</ToUserName>"
            f"<FromUserName>{_cdata(from_user)}</FromUserName><CreateTime>{now}</CreateTime>"
            f"<MsgType>{_cdata(kind)}</MsgType>{body}</xml>")


@dataclass(frozen=True)
class Part:
    """One WeChat message: text, or an image (PNG bytes, or a permanent image's media id:
    a product photo, docs/catalogue.md)."""

    text: str = ""
    png: bytes | None = None
    media_id: str | None = None

    @property
    def is_text(self) -> bool:
        return self.png is None and self.media_id is None


def split_text(text: str, limit: int = MAX_TEXT_BYTES) -> list[str]:
    """Split at line ends so each piece fits one WeChat text message."""
    pieces: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line.encode()) > limit:  # one very long line: cut it by characters
            cut = len(line.encode()[:limit].decode("utf-8", "ignore"))
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:cut])
            line = line[cut:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate.encode()) > limit:
            pieces.append(current)
            current = line
        else:
            current = candidate
    if current.strip():
        pieces.append(current)
    return pieces or [""]


def merge_texts(parts: list[Part]) -> list[Part]:
    """Consecutive texts travel together: one passive reply says as much as it can."""
    merged: list[Part] = []
    for part in parts:
        if merged and part.is_text and merged[-1].is_text and len(
                (merged[-1].text + "\n\n" + part.text).encode()) <= MAX_TEXT_BYTES:
            merged[-1] = Part(text=merged[-1].text + "\n\n" + part.text)
        else:
            merged.append(part)
    return merged


def link(href: str, label: str) -> str:
    """An `<a>` link, the one piece of markup WeChat text messages understand."""
    return f"<a href=\"{_href(href)}\">{_label(label)}</a>"


def menu_link(label: str, menu_id: str) -> str:
    """A `weixin://bizmsgmenu` link: tapping it sends `label` back as a text message that
    carries `bizmsgmenuid` = `menu_id`."""
    text = _label(label)
    return (f"<a href=\"weixin://bizmsgmenu?msgmenucontent={text}&msgmenuid={menu_id}\">"
            f"{text}</a>")


def _href(url: str) -> str:
    """A URL safe inside a double-quoted href: nothing that could end the attribute."""
    return re.sub(r"[\"'<>\s]", "", url)[:1000]


def _label(text: str) -> str:
    """A label safe as link text and as `msgmenucontent` (no quotes, brackets or `&`)."""
    return re.sub(r"[\"'<>\s]+", " ", text).replace("&", "＆").strip()[:60]


def scene_of(event: str, key: str) -> str | None:
    """The invite scene of a `subscribe` (`qrscene_<scene>`) or `SCAN` (`<scene>`) event."""
    if event.lower() == "subscribe":
        if not key.startswith("qrscene_"):
            return None
        key = key[len("qrscene_"):]
    return key if SCENE.match(key) else None


def document_text(item: Document) -> str:
    """WeChat cannot carry files to a chat: small text files come as text, others not."""
    head = item.caption or item.filename
    try:
        body = item.content.decode("utf-8")
    except UnicodeDecodeError:
        body = None
    if body is not None and len(item.content) <= 1500:
        return f"{head}\n{body}"
    digest = hashlib.sha256(item.content).hexdigest()[:12]
    return (f"{head}\n文件 {item.filename}（{len(item.content)} 字节）请在 Telegram 或命令行获取。"
            f"\nThe file {item.filename} ({len(item.content)} bytes, {digest}) is available on "
            "Telegram or the command line.")
