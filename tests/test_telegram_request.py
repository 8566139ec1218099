"""The bot's aiohttp request class (bot/telegram/request.py) over real loopback sockets: the
Bot API stand-in for what PTB sends and the errors it raises, scripted servers for time-outs,
broken answers, connection reuse, retries and proxies."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, InputFile
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut
from telegram.request import HTTPXRequest, RequestData
from telegram.request._requestparameter import RequestParameter  # how PTB's Bot builds them

from bot.settings import Settings
from bot.telegram.application import POOL_SIZE, bot_request, build_application
from bot.telegram.request import AiohttpRequest
from handlers.base import App
from tests.standins.telegram_api import FakeBotAPI

TOKEN = "4242:REQUEST-TEST-TOKEN"
OK = b'{"ok":true,"result":true}'

# (request head, body, writer) → keep the connection for the next request?
Answer = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]


class Scripted:
    """A loopback HTTP/1.1 server: reads each request (head and Content-Length body) and lets
    `answer` write whatever bytes it likes."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.read_body = True  # False: take the head, then leave the body unread
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.closed_by_client = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: list[asyncio.Task[None]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        self._handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.closed_by_client.set()
                    return
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length) if length and self.read_body else b""
                self.requests.append((head, body))
                if not await self.answer(head, body, writer):
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        """Hang up on every connection and let each handler end (none is left to the loop)."""
        for writer in self._writers:
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._handlers, return_exceptions=True), 5)


@asynccontextmanager
async def scripted(answer: Answer) -> AsyncIterator[tuple[Scripted, str]]:
    server = Scripted(answer)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}/bot{TOKEN}"
    finally:
        listener.close()
        await listener.wait_closed()
        await server.close()


def http_ok(body: bytes = OK) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def replying(raw: bytes, *, keep: bool = True, delay: float = 0.0) -> Answer:
    async def answer(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(delay)
        writer.write(raw)
        await writer.drain()
        return keep

    return answer


async def silent(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> bool:
    await writer.wait_closed()  # by the client giving up, or by the test's end
    return False


@asynccontextmanager
async def started(request: AiohttpRequest | None = None) -> AsyncIterator[AiohttpRequest]:
    request = request or AiohttpRequest(read_timeout=2.0, connect_timeout=2.0)
    async with request:
        yield request


@asynccontextmanager
async def bot_on(api: FakeBotAPI) -> AsyncIterator[Bot]:
    async with Bot(TOKEN, base_url=api.base_url, request=bot_request()) as bot:
        yield bot


async def test_the_application_sends_calls_on_aiohttp_and_polls_on_ptbs_own_request():
    settings = Settings(_env_file=None, TELEGRAM_BOT_TOKEN=TOKEN,  # type: ignore[call-arg,arg-type]
                        TELEGRAM_API_BASE_URL="http://127.0.0.1:9/bot",
                        TELEGRAM_PAYMENT_PROVIDER_TOKEN=None, TELEGRAM_WEBHOOK_URL=None,
                        TELEGRAM_WEBHOOK_SECRET=None)
    app = App(db=None, operators=frozenset())  # type: ignore[arg-type] # only built, not run
    application = build_application(settings, app)
    calls, polls = application.bot._request[1], application.bot._request[0]
    assert isinstance(calls, AiohttpRequest) and isinstance(polls, HTTPXRequest)
    assert calls._pool_size == POOL_SIZE and calls.read_timeout == 10.0
    assert (calls._connect_timeout, calls._write_timeout, calls._media_write_timeout,
            calls._pool_timeout) == (5.0, 10.0, 30.0, 5.0)
    assert polls.read_timeout == 10.0


async def test_a_call_is_answered_with_its_parameters_intact():
    keyboard = InlineKeyboardMarkup(
        [[InlineKeyboardButton("买 TEA ×2", callback_data="buy:v1:TEA:2")]])
    async with FakeBotAPI(token=TOKEN) as api, bot_on(api) as bot:
        assert (await bot.get_me()).username == "rebate_shop_bot"
        sent = await bot.send_message(7, "余额 ¥12.34 & more=yes", reply_markup=keyboard)
    assert sent.text == "余额 ¥12.34 & more=yes"
    [call] = api.calls_of("sendMessage")
    assert call.params["chat_id"] == 7 and call.params["text"] == "余额 ¥12.34 & more=yes"
    assert call.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "buy:v1:TEA:2"


async def test_a_multipart_upload_arrives_byte_for_byte_with_its_file_name():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2_000  # boundaries and CRLFs inside too
    report = b"id,amount\r\n1,12.34\r\n" * 1_000
    async with FakeBotAPI(token=TOKEN) as api, bot_on(api) as bot:
        await bot.send_photo(7, png, caption="图表")
        await bot.send_document(7, report, filename='账单 "May".csv', caption="report")
    photo, document = api.calls_of("sendPhoto")[0], api.calls_of("sendDocument")[0]
    assert photo.files["photo"] == png and photo.params["caption"] == "图表"
    assert document.files["document"] == report
    assert document.filenames["document"] == "账单 %22May%22.csv"  # as httpx escapes a quote


async def test_api_errors_come_back_as_ptbs_exceptions():
    async with FakeBotAPI(token=TOKEN) as api, bot_on(api) as bot:
        api.fail_next("sendMessage", 400, "Bad Request: message text is empty")
        with pytest.raises(BadRequest, match="Message text is empty"):
            await bot.send_message(7, "x")
        api.fail_next("sendMessage", 429, retry_after=3)
        with pytest.raises(RetryAfter) as limited:
            await bot.send_message(7, "x")
        assert limited.value.retry_after in (3, timedelta(seconds=3))  # PTB 22 moves to the latter
        api.block_chat(8)
        with pytest.raises(Forbidden):
            await bot.send_message(8, "x")
        assert (await bot.send_message(7, "fine")).text == "fine"  # the connection still serves


async def test_any_status_is_handed_to_ptb_with_its_body():
    body = b'{"ok":false,"error_code":502,"description":"Bad Gateway"}'
    raw = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    async with scripted(replying(raw)) as (_, url), started() as request:
        assert await request.do_request(f"{url}/getMe", "POST") == (502, body)
        with pytest.raises(NetworkError, match="Bad Gateway"):
            await request.post(f"{url}/getMe")


async def test_sequential_calls_share_one_kept_alive_connection():
    async with scripted(replying(http_ok())) as (server, url), started() as request:
        for n in range(10):
            assert await request.post(f"{url}/sendChatAction", _form(chat_id=n)) is True
    assert server.connections == 1 and len(server.requests) == 10
    head, body = server.requests[3]
    assert head.startswith(f"POST /bot{TOKEN}/sendChatAction HTTP/1.1\r\n".encode())
    assert b"application/x-www-form-urlencoded" in head and body == b"chat_id=3"
    assert b"python-telegram-bot" in head  # PTB's User-Agent


async def test_concurrent_calls_open_connections_and_later_calls_reuse_them():
    async with scripted(replying(http_ok(), delay=0.05)) as (server, url), \
            started() as request:
        for _ in range(3):
            answers = await asyncio.gather(*(request.post(f"{url}/getMe") for _ in range(4)))
            assert answers == [True] * 4
    assert server.connections == 4


async def test_a_silent_server_is_a_time_out():
    async with scripted(silent) as (_, url), started() as request:
        # the call's own 0.2 s read time-out ends it: were it ignored, nothing would (the
        # server never answers) and wait_for's asyncio.TimeoutError would fail the test
        with pytest.raises(TimedOut):
            await asyncio.wait_for(request.post(f"{url}/getMe", read_timeout=0.2), 120)


async def test_a_full_pool_past_the_pool_time_out_is_a_time_out_and_nothing_is_sent():
    async with scripted(replying(http_ok(), delay=0.5)) as (server, url), \
            started(AiohttpRequest(connection_pool_size=1)) as request:
        first = asyncio.ensure_future(request.post(f"{url}/first"))
        await asyncio.sleep(0.1)
        with pytest.raises(TimedOut, match=re.escape("*not* sent")):
            await request.post(f"{url}/second", pool_timeout=0.05, connect_timeout=0.05)
        assert await first is True
    assert [head.split(b" ")[1].rsplit(b"/", 1)[1] for head, _ in server.requests] == [b"first"]


async def test_an_upload_the_server_stops_reading_is_a_time_out():
    """aiohttp has no per-write time-out: the write time-out bounds the whole call instead."""
    upload = _files(document=("big.bin", b"\0" * (64 << 20)))  # more than socket buffers
    async with scripted(silent) as (server, url), \
            started(AiohttpRequest(connect_timeout=0.3, pool_timeout=0.1, read_timeout=0.3,
                                   media_write_timeout=0.3)) as request:
        server.read_body = False
        # TimedOut, not wait_for's asyncio.TimeoutError: the write time-out ended the call
        with pytest.raises(TimedOut):
            await asyncio.wait_for(request.post(f"{url}/sendDocument", upload), 120)


async def test_a_refused_connection_is_a_network_error():
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with started() as request:
        with pytest.raises(NetworkError) as refused:
            await request.post(f"http://127.0.0.1:{port}/bot{TOKEN}/getMe")
    assert not isinstance(refused.value, TimedOut)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"ok\":tr",  # cut short, then closed
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ok\"",
    b"HTTP/1.1 200 OK\r\nContent-Le",  # closed inside the head
    b"",  # closed without a word
    b"garbage\r\n\r\n",
])
async def test_a_server_closing_mid_answer_or_talking_nonsense_is_a_network_error(raw):
    async with scripted(replying(raw, keep=False)) as (server, url), started() as request:
        with pytest.raises(NetworkError) as broken:
            await request.post(f"{url}/sendMessage", _form(chat_id=7, text="hi"))
    assert not isinstance(broken.value, TimedOut)
    assert TOKEN not in str(broken.value)  # the URL carries the token: never in the message
    assert len(server.requests) == 1  # and the call was not sent again


async def test_a_call_on_a_kept_alive_connection_the_server_drops_is_not_sent_again():
    """A Bot API call is not idempotent: a sendMessage the server may have acted on must not
    go out twice, even when the connection it rode on was a reused one."""
    async def once_then_drop(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> bool:
        if len(server.requests) == 1:
            writer.write(http_ok())
            return True
        return False  # read the second request, then hang up without answering

    async with scripted(once_then_drop) as (server, url), started() as request:
        assert await request.post(f"{url}/sendMessage", _form(chat_id=7, text="1")) is True
        with pytest.raises(NetworkError):
            await request.post(f"{url}/sendMessage", _form(chat_id=7, text="2"))
    assert [body for _, body in server.requests] == [b"chat_id=7&text=1", b"chat_id=7&text=2"]
    assert server.connections == 1


async def test_shutdown_closes_the_connections_and_initialize_opens_anew():
    request = AiohttpRequest()
    async with scripted(replying(http_ok())) as (server, url):
        await request.initialize()
        assert await request.post(f"{url}/getMe") is True
        await request.shutdown()
        await asyncio.wait_for(server.closed_by_client.wait(), 2)
        with pytest.raises(NetworkError, match="not initialized"):  # as with HTTPXRequest
            await request.post(f"{url}/getMe")
        await request.shutdown()  # twice is harmless, as PTB may do
        await request.initialize()
        try:
            assert await request.post(f"{url}/getMe") is True
        finally:
            await request.shutdown()
    assert server.connections == 2


async def test_an_environment_proxy_is_used_as_httpx_would_unless_no_proxy_names_the_host(
        monkeypatch: pytest.MonkeyPatch):
    async with scripted(replying(http_ok(b'{"ok":true,"result":"direct"}'))) as (direct, url), \
            scripted(replying(http_ok(b'{"ok":true,"result":"proxied"}'))) as (proxy, purl):
        for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("HTTP_PROXY", purl.split("/bot")[0])
        async with started() as request:
            assert await request.post(f"{url}/getMe") == "proxied"
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        async with started() as request:
            assert await request.post(f"{url}/getMe") == "direct"
    assert proxy.requests[0][0].startswith(f"POST {url}/getMe HTTP/1.1".encode())
    assert len(direct.requests) == 1


def _form(**params: object) -> RequestData:
    return RequestData([RequestParameter.from_input(k, v) for k, v in params.items()])


def _files(**files: tuple[str, bytes]) -> RequestData:
    return RequestData([
        RequestParameter.from_input(name, InputFile(content, filename=filename, attach=False))
        for name, (filename, content) in files.items()])
