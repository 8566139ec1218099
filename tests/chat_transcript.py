"""A Telegram chat as the Bot API stand-in saw it, rendered as a small HTML page: what the
user sent (from the `getUpdates` results) and what the bot sent (`send*` calls), in order, with
photos, inline buttons and invoices. The screenshots in docs/shop.md are made from these pages
(`save_transcript` writes them only when SHOP_TRANSCRIPT_DIR is set; see docs/shop.md)."""

from __future__ import annotations

import base64
import html
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.standins.telegram_api import Call

STYLE = """
body{margin:0;font:14px/1.35 -apple-system,'Noto Sans','WenQuanYi Micro Hei','Noto Color Emoji',
 sans-serif;
 background:#9bb7cf;}
.top{background:#517da2;color:#fff;padding:10px 14px;font-weight:600}
.chat{padding:8px 10px}
.msg{max-width:78%;margin:6px 0;padding:7px 10px;border-radius:12px;white-space:pre-wrap;
 word-wrap:break-word;box-shadow:0 1px 1px rgba(0,0,0,.15)}
.bot{background:#fff;margin-right:auto;border-bottom-left-radius:3px}
.me{background:#e1ffc7;margin-left:auto;border-bottom-right-radius:3px}
.row{display:flex;justify-content:flex-start}.row.me-row{justify-content:flex-end}
.kb{display:flex;flex-wrap:wrap;gap:4px;margin:-2px 0 6px 0;max-width:78%}
.kb .line{display:flex;gap:4px;width:100%}
.kb span{flex:1;text-align:center;background:rgba(0,0,0,.28);color:#fff;border-radius:8px;
 padding:6px 4px;font-size:13px}
img{display:block;width:100%;max-width:260px;border-radius:8px;margin-bottom:4px;
 image-rendering:pixelated}
.inv{border-left:3px solid #517da2;padding-left:8px}
.inv b{display:block}.pay{margin-top:6px;text-align:center;background:#517da2;color:#fff;
 border-radius:8px;padding:6px}
.sys{text-align:center;color:#fff;font-size:12px;margin:8px 0}
"""


def picture(seed: int, width: int = 96, height: int = 64) -> bytes:
    """A small PNG with soft stripes (a stand-in product photo that reads in a screenshot)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = []
    for y in range(height):
        row = bytearray(b"\x00")
        for x in range(width):
            band = ((x + y + seed * 7) // 12) % 2
            row += bytes(((90 + band * 40 + seed * 30) % 256, 150 + band * 40, 80 + y))
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def _esc(text: object) -> str:
    return html.escape(str(text or ""))


def _keyboard(markup: Any) -> str:
    if not isinstance(markup, Mapping) or "inline_keyboard" not in markup:
        return ""
    lines = "".join("<div class=line>" + "".join(
        f"<span>{_esc(b.get('text'))}</span>" for b in row) + "</div>"
        for row in markup["inline_keyboard"])
    return f"<div class=kb>{lines}</div>"


def _image(content: bytes | None) -> str:
    if not content:
        return ""
    return f"<img src='data:image/png;base64,{base64.b64encode(content).decode()}'>"


def _user_side(update: Mapping[str, Any], files: Mapping[str, bytes],
               labels: Mapping[str, str]) -> tuple[Any, str] | None:
    """(chat id, html) for one update a user sent, or None for what a chat does not show."""
    if "callback_query" in update:
        q = update["callback_query"]
        label = labels.get(q.get("data"), q.get("data"))
        return q["from"]["id"], f"<div class=sys>tapped “{_esc(label)}”</div>"
    m = update.get("message")
    if not isinstance(m, Mapping):
        return None
    chat = m["chat"]["id"]
    if "successful_payment" in m:
        p = m["successful_payment"]
        return chat, (f"<div class=sys>paid {p['total_amount'] / 100:.2f} "
                      f"{_esc(p['currency'])}</div>")
    body = ""
    if m.get("photo"):
        body += _image(files.get(m["photo"][-1]["file_id"]))
    body += _esc(m.get("text") or m.get("caption"))
    return chat, f"<div class='row me-row'><div class='msg me'>{body}</div></div>"


def _bot_side(call: Call, files: dict[str, bytes], labels: dict[str, str]) -> str:
    p = call.params
    markup = p.get("reply_markup")
    if isinstance(markup, Mapping):
        for row in markup.get("inline_keyboard", []):
            for b in row:
                labels[b.get("callback_data", "")] = b.get("text", "")
    if call.is_("sendInvoice"):
        total = sum(int(x["amount"]) for x in p.get("prices", [])) / 100
        asks = [k[5:].replace("_", " ") for k in ("need_name", "need_phone_number",
                                                 "need_shipping_address") if p.get(k)]
        body = (f"<div class=inv><b>{_esc(p.get('title'))}</b>{_esc(p.get('description'))}"
                f"<br><i>asks for: {_esc(', '.join(asks))}</i></div>"
                f"<div class=pay>Pay {total:.2f} {_esc(p.get('currency'))}</div>")
    else:
        content = call.files.get("photo")
        if call.is_("sendPhoto"):
            if content is None and isinstance(p.get("photo"), str):
                content = files.get(p["photo"])
            if content is not None and isinstance(call.result, Mapping):
                for size in call.result.get("photo", []):
                    files[size["file_id"]] = content  # later sends reuse the file_id
        body = _image(content) + _esc(call.text)
    return (f"<div class=row><div class='msg bot'>{body}</div></div>"
            + _keyboard(p.get("reply_markup")))


class Tape:
    """The updates pushed to the stand-in, each with how many calls it had seen then: the
    place it takes in the chat (a poll for the next update is often made before the answer
    to the last one is sent, so the `getUpdates` calls alone would misplace them)."""

    def __init__(self, api: Any) -> None:
        self.api, self.pushed = api, []
        push = api.push_update

        def recorded(update: dict[str, Any]) -> dict[str, Any]:
            self.pushed.append((len(api.calls), update))
            return push(update)

        api.push_update = recorded  # push_text / push_callback go through it too
        self.pushed: list[tuple[int, dict[str, Any]]]


def transcript_html(calls: Iterable[Call], tape: Tape, chat: int, *, title: str,
                    files: Mapping[str, bytes] | None = None, part: slice = slice(None)) -> str:
    """One chat (`chat`) from the stand-in's recorded calls and the tape of what users sent,
    oldest first; `part` picks a stretch of its messages (a screenshot shows a few)."""
    known, labels = dict(files or {}), dict[str, str]()
    events: list[tuple[int, int, Any]] = [(at, 0, u) for at, u in tape.pushed]
    events += [(i, 1, c) for i, c in enumerate(calls)]
    parts = []
    for _, bot, item in sorted(events, key=lambda e: (e[0], e[1])):
        if not bot:
            side = _user_side(item, known, labels)
            if side is not None and side[0] == chat:
                parts.append(side[1])
        elif item.method.startswith("send") and item.chat_id == chat and item.ok:
            parts.append(_bot_side(item, known, labels))
    return (f"<!doctype html><meta charset=utf-8><style>{STYLE}</style>"
            f"<div class=top>{_esc(title)}</div><div class=chat>{''.join(parts[part])}</div>")


def save_transcript(calls: Iterable[Call], tape: Tape, name: str, *, chat: int, title: str,
                    files: Mapping[str, bytes] | None = None,
                    parts: Mapping[str, slice] | None = None) -> list[Path]:
    """Write `<SHOP_TRANSCRIPT_DIR>/<name>.html` (the whole chat) and one page per named
    part when that variable is set (for docs); nothing otherwise."""
    folder = os.environ.get("SHOP_TRANSCRIPT_DIR")
    if not folder:
        return []
    recorded = list(calls)
    written = []
    for suffix, part in {"": slice(None), **(parts or {})}.items():
        path = Path(folder) / f"{name}{'_' + suffix if suffix else ''}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(transcript_html(recorded, tape, chat, title=title, files=files,
                                        part=part), encoding="utf-8")
        written.append(path)
    return written
