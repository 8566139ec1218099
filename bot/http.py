"""The one HTTP server of `storefront run`: a Starlette app on uvicorn.

    GET  /healthz                    200 when the database answers ("degraded" if Redis does not)
    GET  /wechat                     WeChat's server check: echo `echostr` if signed and fresh, else 403
    POST /wechat                     Official Account messages and events (bot/wechat/)
    POST /wechat/pay/notify          WeChat Pay payment notifications (bot/wechatpay/)
    POST /wechat/pay/refund-notify   WeChat Pay refund notifications
    GET  /wechat/pay/checkout/<t>    the page a WeChat Pay link opens (JSAPI or Native QR)
    POST /wechat/pay/transfer-notify WeChat Pay merchant transfer notifications (withdrawals)
    GET  /wechat/pay/transfer/<t>    where a user confirms receipt of a withdrawal in WeChat
    POST /telegram                   Telegram's webhook, when a Telegram application is given

Every body is read with a cap (64 KiB; 413 beyond it) before anything looks at it, and no
request, however malformed, gets a 500 or a traceback: the last line of defence below turns
any unexpected error into a plain 400/503 and logs it. Slow headers and bodies, connection
floods and the open-file limit are bot/http_guard.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from bot.http_guard import LISTEN_QUEUE, ConnectionGuard, connection_cap, install_storm_filters
from bot.settings import Settings
from handlers.base import App, Database, ping
from scheduler import Chore
from scheduler.transfers import TRANSFER_INTERVAL

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
REFUND_SWEEP_SECONDS = 60.0
SEEN_PRUNE_SECONDS = 3600.0

Endpoint = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refusing (before reading it all) anything above `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge()
    return bytes(body)


def _guarded(endpoint: Endpoint) -> Endpoint:
    """Bad input never becomes a 500 with a traceback: too large → 413, anything else that
    escapes an endpoint is logged and answered 400 (the request could not be understood)."""
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except BodyTooLarge:
            return PlainTextResponse("request body too large", status_code=413)
        except ClientDisconnect:
            # gone before its body was in (or closed by the guard: timed out, or the
            # longest-waiting slow client at the connection cap); nobody to answer
            return PlainTextResponse("client disconnected", status_code=400)
        except Exception:  # noqa: BLE001 - the last line of defence
            log.exception("%s %s failed", request.method, request.url.path)
            return PlainTextResponse("bad request", status_code=400)

    return guarded


def build_app(*, db: Database, redis_url: str | None = None, wechat: Any = None,
              pay: Any = None, telegram: Endpoint | None = None,
              web: list[BaseRoute] | None = None) -> Starlette:
    """The ASGI app. `wechat` is a `bot.wechat.WeChatAdapter`, `pay` a
    `bot.wechatpay.WeChatPayGateway`, `telegram` the webhook endpoint, `web` the web pages'
    routes (bot/web: /app, /admin); each is optional."""

    async def healthz(request: Request) -> Response:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(asyncio.to_thread(ping, db), 5)
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - health is a yes/no with a reason
            checks["database"] = f"unavailable: {type(exc).__name__}"
        if redis_url:
            try:
                import redis.asyncio as aioredis

                client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2,
                                                 socket_timeout=2)
                try:
                    await client.ping()
                finally:
                    await client.aclose()
                checks["redis"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["redis"] = f"unavailable: {type(exc).__name__}"
        # The database is the shop; Redis only speeds it up (rate limits, locks and tokens
        # fall back to in-process), so a Redis outage is "degraded", still serving: a load
        # balancer must not take a working bot out of service.
        if checks["database"] != "ok":
            status, code = "unavailable", 503
        elif checks.get("redis", "ok") != "ok":
            status, code = "degraded", 200
        else:
            status, code = "ok", 200
        return JSONResponse({"status": status, **checks}, status_code=code)

    routes: list[BaseRoute] = [Route("/healthz", _guarded(healthz), methods=["GET"])]

    if wechat is not None:
        async def wechat_get(request: Request) -> Response:
            # a thread: the check remembers the query's nonce in the database or Redis
            status, body = await asyncio.to_thread(wechat.verify_get,
                                                   dict(request.query_params))
            return PlainTextResponse(body, status_code=status)

        async def wechat_post(request: Request) -> Response:
            body = await read_body(request)
            status, payload, content_type = await wechat.handle_post(
                dict(request.query_params), body)
            return Response(payload, status_code=status, media_type=content_type)

        routes.append(Route("/wechat", _guarded(wechat_get), methods=["GET"]))
        routes.append(Route("/wechat", _guarded(wechat_post), methods=["POST"]))

    if pay is not None:
        def notification(handler: Callable[..., Awaitable[Any]]) -> Endpoint:
            async def endpoint(request: Request) -> Response:
                try:
                    body = await read_body(request)
                except BodyTooLarge:
                    return JSONResponse({"code": "FAIL", "message": "body too large"}, 413)
                answer = await handler(dict(request.headers), body)
                if not answer.body:
                    return Response(status_code=answer.status)
                return Response(answer.body, status_code=answer.status,
                                media_type="application/json")

            return endpoint

        async def checkout_page(request: Request) -> Response:
            status, page = await pay.checkout_page(str(request.path_params["token"]),
                                                   request.headers.get("user-agent", ""))
            return HTMLResponse(page, status_code=status)

        routes.append(Route("/wechat/pay/notify", _guarded(notification(
            pay.payment_notification)), methods=["POST"]))
        routes.append(Route("/wechat/pay/refund-notify", _guarded(notification(
            pay.refund_notification)), methods=["POST"]))
        routes.append(Route("/wechat/pay/checkout/{token}", _guarded(checkout_page),
                            methods=["GET"]))
        if getattr(pay, "transfers", None) is not None:  # withdrawals (bot/wechatpay/transfers.py)
            async def transfer_page(request: Request) -> Response:
                status, page = await pay.transfers.confirm_page(
                    str(request.path_params["token"]))
                return HTMLResponse(page, status_code=status)

            routes.append(Route("/wechat/pay/transfer-notify", _guarded(notification(
                pay.transfers.notification)), methods=["POST"]))
            routes.append(Route("/wechat/pay/transfer/{token}", _guarded(transfer_page),
                                methods=["GET"]))

    if telegram is not None:
        routes.append(Route("/telegram", _guarded(telegram), methods=["POST"]))

    routes.extend(web or [])

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if pay is not None:
                await pay.drain()
            if wechat is not None:
                await wechat.aclose()

    return Starlette(routes=routes, lifespan=lifespan)


class _Server(uvicorn.Server):
    """Signals belong to whoever runs the process (`storefront run` stops us in order)."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


@dataclass
class HttpServer:
    """A running server: `url`, and `stop()` to shut it down gracefully."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int
    wechat: Any = None
    pay: Any = None
    guard: ConnectionGuard | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def chores(self) -> list[Chore]:
        """The periodic jobs the scheduler runs for this server's channels."""
        chores = []
        if self.pay is not None:
            chores.append(Chore("wechat-pay-refund-sweep", REFUND_SWEEP_SECONDS,
                                self.pay.sweep_refunds))
            if getattr(self.pay, "follow_transfers", None) is not None:
                chores.append(Chore("wechat-pay-transfers", TRANSFER_INTERVAL,
                                    self.pay.follow_transfers))
        if self.wechat is not None:
            chores.append(Chore("wechat-seen-prune", SEEN_PRUNE_SECONDS, self.wechat.prune_seen))
        return chores

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 15)
        if self.guard is not None:
            self.guard.report.close()


async def start_http(settings: Settings, app: App, telegram_application: Any = None, *,
                     wechat_client: Any = None, console: str | None = None) -> HttpServer:
    """Build the app from `settings`, listen on STOREFRONT_HTTP_HOST:STOREFRONT_HTTP_PORT
    (port 0: any free port) and serve in this event loop until `stop()`.

    WeChat is served when WECHAT_TOKEN and WECHAT_APP_ID are set; WeChat Pay when all its
    settings are (whether the chat offers it is `app.channels`, fixed at start by bot/app.py); POST /telegram when a Telegram
    application is given. `wechat_client` replaces the wechatpy client (tests). The web pages
    (bot/web) are always served; `console` is the console user they serve on loopback when
    no chat channel runs."""
    from bot.wechat import WeChatAdapter
    from bot.wechatpay import WeChatPayGateway, client_from_settings
    from bot.wechatpay.transfers import attach_transfers

    wechat = pay = None
    if settings.wechat_enabled:
        wechat = WeChatAdapter.from_settings(settings, app, client=wechat_client)
    made = client_from_settings(settings)
    if made is not None and settings.wechat_enabled:
        pay_client, pay_config = made
        pay = WeChatPayGateway(app.db, pay_client, pay_config, operators=app.operators,
                               after_payment=wechat.after_payment if wechat else None)
        attach_transfers(pay, settings, app)
        if wechat is not None:
            wechat.pay = pay
    telegram = None
    if telegram_application is not None:
        from bot.telegram import telegram_webhook_route

        telegram = telegram_webhook_route(telegram_application,
                                          settings.telegram_webhook_secret)
    from bot import web

    web_routes, site = web.routes(app, web.WebConfig.from_settings(settings, console=console),
                                  pay=pay)
    asgi = build_app(db=app.db, redis_url=settings.redis_url, wechat=wechat, pay=pay,
                     telegram=telegram, web=web_routes)
    if console is None:  # the chats' menus open the web page (its public address)
        site.announcing = asyncio.create_task(web.announce(
            site.cfg, settings.public_url, wechat.client if wechat is not None else None))
    # proto=IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted sockets.
    sock = socket.socket(socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.http_host, settings.http_port))
    cap, per_tick = connection_cap(settings.http_max_connections)
    guard = ConnectionGuard(cap, settings.http_header_timeout, settings.http_body_timeout)
    # asyncio's accept-out-of-descriptors and uvicorn's bad-request warnings come once per
    # socket; a flood must not become a flood of log lines
    install_storm_filters("asyncio", "uvicorn.error")
    server = _Server(uvicorn.Config(
        asgi, http=guard.protocol(), log_level="warning", access_log=False, lifespan="on",
        timeout_graceful_shutdown=5, server_header=False, backlog=per_tick,
        timeout_keep_alive=settings.http_keepalive_timeout,
        h11_max_incomplete_event_size=16 * 1024))  # headers: h11's default, pinned
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises why it could not start
            raise RuntimeError("the HTTP server stopped before it started")
        await asyncio.sleep(0.01)
    # asyncio listened with `per_tick`, which is also how many it accepts per loop tick; the
    # kernel may queue more (bot/http_guard.py)
    sock.listen(LISTEN_QUEUE)
    host, port = sock.getsockname()[:2]
    log.info("HTTP server listening on %s:%s (at most %d connections; headers within %gs, "
             "bodies within %gs)", host, port, cap, settings.http_header_timeout,
             settings.http_body_timeout)
    return HttpServer(server, task, host, port, wechat=wechat, pay=pay,
                      guard=guard, extras={"web": site})
