"""An operator's image (a catalogue photo) is read from WeChat as a stream and given up at the
5 MB limit: a huge or endless body is never held in memory, and the operator is refused
politely in their language (bot/wechat/inbound.py, docs/catalogue.md)."""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bot.wechat.inbound import MAX_PHOTO_BYTES, operator_photo, read_media
from handlers import i18n
from handlers.base import Request
from tests.standins import wechat as sw
from tests.test_catalogue_telegram import png
from tests.wechat_harness import GH_ID, OPERATOR, next_msg_id

APPID, SECRET = "wx1234567890abcdef", "secret-0123456789"
BODY_BYTES = 64 * 1024 * 1024  # "endless": far beyond the limit, but finite if read whole
MB = 1024 * 1024


class Endless(BaseHTTPRequestHandler):
    """`media/get` answering an image whose body goes on (no Content-Length): counts what
    the reader took before it hung up."""

    protocol_version = "HTTP/1.0"  # the body ends when the connection does
    written = 0
    done = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        cls = type(self)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        chunk = png(1) + bytes(64 * 1024 - len(png(1)))
        try:
            while cls.written < BODY_BYTES:
                self.wfile.write(chunk)
                cls.written += len(chunk)
        except OSError:
            pass  # the reader hung up
        finally:
            cls.done.set()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endless() -> Iterator[str]:
    Endless.written, Endless.done = 0, threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cgi-bin/"
    finally:
        server.shutdown()
        server.server_close()


def request() -> Request:
    return Request(channel="wechat", identity="wx:oOperator", request_id="wx:1", text="")


async def test_an_endless_image_is_read_only_up_to_the_limit_and_comes_as_no_bytes(endless):
    client = sw.make_wechat_client(APPID, SECRET, endless, access_token="TOKEN")
    tracemalloc.start()
    try:
        got = await operator_photo(client, request(), "m" * 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.command == "photo" and got.upload is not None and got.upload.content == b""
    assert Endless.done.wait(60)  # the server saw the reader hang up (not a timing check)
    # Held: at most the limit and a chunk, never the body; read: the limit and what the
    # sockets' buffers took, far from the 64 MB sent to a reader that would read it all.
    assert peak < MAX_PHOTO_BYTES + 8 * MB
    assert Endless.written < BODY_BYTES // 2


async def test_photos_up_to_the_limit_arrive_whole_and_a_stale_token_is_renewed():
    with sw.FakeWeChatAPI(appid=APPID, secret=SECRET) as api:
        client = sw.make_wechat_client(APPID, SECRET, api.base_url)
        small = png(2)
        exact = png(3) + bytes(MAX_PHOTO_BYTES - len(png(3)))
        assert read_media(client, api.store_media(small, "image/png"), MAX_PHOTO_BYTES) == small
        api.expire_access_tokens()  # WeChat says 42001: a new token, then the bytes
        assert read_media(client, api.store_media(exact, "image/png"),
                          MAX_PHOTO_BYTES) == exact
        assert len(api.calls_of("/cgi-bin/token")) == 2
        # one byte over, with its Content-Length: refused without reading it
        over = api.store_media(exact + b"\x00", "image/png")
        assert read_media(client, over, MAX_PHOTO_BYTES) == b""
        # an id WeChat does not know: its JSON error, no bytes
        assert read_media(client, "gone", MAX_PHOTO_BYTES) == b""


@pytest.mark.parametrize("lang", ["en", "zh"])
async def test_an_operator_sending_a_too_large_photo_is_refused_in_their_language(shop, lang):
    await shop.say(OPERATOR, f"/lang {lang}")
    await shop.say(OPERATOR, "图片 TEA")
    media_id = shop.api.store_media(png(4) + bytes(MAX_PHOTO_BYTES), "image/png")
    xml = sw.message_xml(GH_ID, OPERATOR, "image", {"PicUrl": "http://x/y.jpg",
                                                    "MediaId": media_id}, msg_id=next_msg_id())
    reply = shop.reply_of(await shop.post(xml))
    await shop.server.wechat.drain()
    assert reply["Content"].startswith(i18n.t(lang, "catalogue.bad_photo"))  # + the usage
