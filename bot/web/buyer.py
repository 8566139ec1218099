"""The buyer's page `/app`: one shell page whose script (static/app.js) loads each view as a
server-rendered fragment (`/app/v/<view>`) and posts actions as JSON (`/app/api/<action>`),
every request carrying the Telegram initData or the session cookie (bot/web/site.py).

Every action is the chat's own engine call: the cart is the chat's cart (engine/cart.py, so
a buyer sees one cart in the chat and on the page), its checkout
`cart_checkout.open_checkout`, paid by Telegram (`createInvoiceLink` →
`Telegram.WebApp.openInvoice`, the payment then recorded by the bot as any invoice's), by
WeChat Pay (JSAPI, recorded by the pay notification), from the wallet
(`cart_checkout.pay_from_wallet`), or — the console shop on `make run` — by the console's
simulated payment (`handlers.shop.paid`, as the console chat does).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from bot.web import auth, channels
from bot.web.render import pick_lang, render, t
from bot.web.site import Site, Visitor, error_json, json_body, refusal_json
from engine import (
    cart,
    cart_checkout,
    catalogue,
    delivery,
    delivery_views,
    outlook,
    payouts,
    report,
    service,
    views,
)
from engine import users as engine_users
from engine.errors import Refusal
from handlers import i18n
from handlers import shop as shop_handlers
from handlers.referral import invite_link, qr_png

PER_PAGE = 24
MOST_PER_PAGE = 100
# the texts the page's script shows itself (toasts)
JS_TEXTS = ("added", "error", "pay.telegram", "pay.wechat", "pay.done", "pay.cancelled")


def _qr_data_uri(text: str) -> str:
    return "data:image/png;base64," + base64.b64encode(qr_png(text)).decode()


class Buyer:
    def __init__(self, site: Site) -> None:
        self.site = site

    # -- the shell and who is asking -----------------------------------------------------

    async def shell(self, request: Request) -> Response:
        v = await self.site.visitor(request)
        lang = v.lang if v else "en"
        return render("app.html", lang, self.site.app.currency)

    async def me(self, request: Request) -> Response:
        v = await self.site.visitor(request)
        if v is None:
            login = None
            if self.site.cfg.wechat_app_id and "x-telegram-init-data" not in request.headers:
                login = "/app/oauth/wechat"
            return JSONResponse({"ok": False, "login": login,
                                 "error": t(pick_lang(request.headers.get("accept-language")),
                                            "signin.needed")}, status_code=401)
        user = await self.site.join(v)
        return JSONResponse({"ok": True, "identity": v.identity, "lang": v.lang,
                             "csrf": self.site.csrf(v), "via": v.session.via,
                             "operator": self.site.is_operator(v), "new": user["new"]})

    async def _who(self, request: Request) -> Visitor | Response:
        v = await self.site.visitor(request)
        if v is None:
            return error_json("en", "signin.needed", 401)
        return v

    # -- views (HTML fragments) ----------------------------------------------------------

    async def view(self, request: Request) -> Response:
        v = await self._who(request)
        if isinstance(v, Response):
            return v
        name = request.path_params["view"]
        await self.site.join(v)  # a blocked buyer sees nothing (the guard answers 403)
        try:
            if name == "nav":
                user = await self.site.join(v)
                seen = await self.site.call(cart.view, self.site.db, user=user["handle"])
                return render("nav.html", v.lang, self.site.app.currency,
                              texts={k: t(v.lang, k) for k in JS_TEXTS},
                              count=sum(line["qty"] for line in seen["lines"]))
            if name == "shop":
                return await self._shop(request, v)
            if name == "product":
                return await self._product(request, v)
            if name == "cart":
                return await self._cart(v)
            if name == "rebates":
                return await self._rebates(v)
            if name == "orders":
                return await self._orders(v)
            if name == "invite":
                return await self._invite(v)
        except Refusal as exc:
            return render("message.html", v.lang, self.site.app.currency, status=409,
                          text=t(v.lang, f"refusal.{exc.code}"))
        return render("message.html", v.lang, self.site.app.currency, status=404,
                      text=t(v.lang, "empty"))

    async def _shop(self, request: Request, v: Visitor) -> Response:
        q = request.query_params.get("q", "").strip()[:64]
        category = request.query_params.get("cat", "")[:64] or None
        page = request.query_params.get("page", "0")
        per = request.query_params.get("per", "")
        cat = await self.site.call(catalogue.page, self.site.db, category=category,
                                   query=q or None, page=int(page) if page.isdigit() else 0,
                                   per_page=min(int(per), MOST_PER_PAGE) if per.isdigit()
                                   and int(per) > 0 else PER_PAGE)
        cats = (await self.site.call(catalogue.categories, self.site.db)
                if cat["categorised"] else [])
        return render("shop.html", v.lang, cat["currency"], cat=cat, q=q, cats=cats,
                      category=category)

    async def _product(self, request: Request, v: Visitor) -> Response:
        sku = request.query_params.get("sku", "")[:64]
        user = await self.site.join(v)
        card = await self.site.call(catalogue.card, self.site.db, sku)
        look = await self.site.call(outlook.outlook, self.site.db, user=user["handle"],
                                    sku=card["sku"])
        earns = shop_handlers.outlook_text(v.lang, look, card["currency"]).split("\n")[1:]
        return render("product.html", v.lang, card["currency"], p=card, earns=earns)

    async def photo(self, request: Request) -> Response:
        """A product photo by its sha256 (public, like the catalogue; an <img> in the Mini
        App carries no initData)."""
        digest = str(request.path_params["sha256"])
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            return Response(status_code=404)
        content = await self.site.call(catalogue.media_content, self.site.db, digest)
        if content is None:
            return Response(status_code=404)
        return Response(content, media_type=catalogue.photo_type(content) or "image/jpeg",
                        headers={"Cache-Control": "public, max-age=86400, immutable"})

    async def _cart(self, v: Visitor) -> Response:
        user = await self.site.join(v)
        seen = await self.site.call(cart.view, self.site.db, user=user["handle"])
        address = (await self.site.call(delivery.saved_address, self.site.db,
                                        user=user["handle"]) if seen["goods"] else None)
        return render("cart.html", v.lang, seen["currency"], c=seen, csrf=self.site.csrf(v),
                      online=self._pays_online(v), address=address,
                      telegram=v.session.via == "telegram")

    async def _rebates(self, v: Visitor) -> Response:
        user = await self.site.join(v)
        acct = await self.site.call(views.account, self.site.db, user["handle"])
        entries = await self.site.call(report.queue_view, self.site.db, user["handle"],
                                       datetime.now(UTC))
        return render("rebates.html", v.lang, acct["currency"], a=acct, entries=entries,
                      csrf=self.site.csrf(v))

    async def _orders(self, v: Visitor) -> Response:
        user = await self.site.join(v)
        seen = await self.site.call(delivery_views.buyer_orders, self.site.db,
                                    user=user["handle"], limit=30)
        return render("orders.html", v.lang, self.site.app.currency, orders=seen["orders"],
                      csrf=self.site.csrf(v))

    async def _invite(self, v: Visitor) -> Response:
        user = await self.site.join(v)
        code = await self.site.call(engine_users.invite_code, self.site.db, user["user_id"])
        link = invite_link(self.site.app.channels.bot_username, code)
        return render("invite.html", v.lang, self.site.app.currency, code=code, link=link,
                      qr=_qr_data_uri(link or code))

    # -- actions (JSON) ------------------------------------------------------------------

    def _pays_online(self, v: Visitor) -> bool:
        channel = {"telegram": "telegram", "wechat": "wechat", "console": "console"}.get(
            v.session.via, "")
        if channel == "wechat":
            return self.site.pay is not None and v.identity.startswith("wx:")
        return channel == "console" or (channel == "telegram"
                                        and self.site.app.takes_payments("telegram"))

    async def _action(self, request: Request, *, keyed: bool = False
                      ) -> tuple[Visitor, dict[str, Any], dict[str, Any], str] | Response:
        """The visitor, the JSON body of a POST, the visitor's user (joined) and, when
        `keyed`, the idempotency key `web:<identity>:<nonce>` from the body's `key` (8 to 40
        characters); or the refusal (no sign-in, no CSRF, no key)."""
        v = await self._who(request)
        if isinstance(v, Response):
            return v
        body = await json_body(request)
        if not self.site.csrf_ok(v, body.get("csrf")):
            return error_json(v.lang, "admin.csrf", 403)
        key = ""
        if keyed:
            nonce = body.get("key")
            if not isinstance(nonce, str) or not 8 <= len(nonce) <= 40:
                return error_json(v.lang, "refusal.invalid_event", 400)
            key = f"web:{v.identity}:{nonce}"
        return v, body, await self.site.join(v), key

    async def cart_change(self, request: Request) -> Response:
        """Add to, change or take out of the buyer's cart (engine/cart.py, the chat's own)."""
        asked = await self._action(request)
        if isinstance(asked, Response):
            return asked
        v, body, user, _ = asked
        sku, qty, op = body.get("sku"), body.get("qty", 1), body.get("op")
        try:
            if op == "add":
                seen = await self.site.call(cart.add, self.site.db, user=user["handle"],
                                            sku=sku, qty=qty)
            elif op == "remove":
                seen = await self.site.call(cart.remove, self.site.db, user=user["handle"],
                                            sku=sku)
            else:
                return error_json(v.lang, "refusal.invalid_event", 400)
        except Refusal as exc:
            return refusal_json(v.lang, exc)
        return JSONResponse({"ok": True, "count": sum(line["qty"] for line in seen["lines"]),
                             "message": t(v.lang, "added") if op == "add" else ""})

    async def checkout(self, request: Request) -> Response:
        asked = await self._action(request, keyed=True)
        if isinstance(asked, Response):
            return asked
        v, body, user, key = asked
        wallet = body.get("wallet") is True
        try:
            # goods go somewhere: Telegram's invoice asks for the address, elsewhere the
            # buyer's saved one is where they go (delivery.save_address)
            if (wallet or v.session.via != "telegram") and await self._address_missing(v, user):
                return error_json(v.lang, "address.needed", 409)
            if wallet:
                result = await self.site.call(cart_checkout.pay_from_wallet, self.site.db,
                                              user=user["handle"], key=f"{key}:buy")
                return JSONResponse({"ok": True, "kind": "paid", "order": result["order"],
                                     "message": t(v.lang, "pay.done", order=result["order"])})
            if not self._pays_online(v):
                return error_json(v.lang, "pay.no_channel", 409)
            return await self._open_and_pay(v, user["handle"], key)
        except Refusal as exc:
            return refusal_json(v.lang, exc)

    async def _address_missing(self, v: Visitor, user: dict[str, Any]) -> bool:
        seen = await self.site.call(cart.view, self.site.db, user=user["handle"])
        if not seen["goods"]:
            return False
        saved = await self.site.call(delivery.saved_address, self.site.db, user=user["handle"])
        return saved is None

    async def address(self, request: Request) -> Response:
        """The buyer's delivery address (delivery.save_address, as the chat's address step)."""
        return await self._delivery_step(request, delivery.save_address, "address.saved",
                                         lambda body: {key: body.get(key) for key in
                                                       ("name", "phone", "address")})

    async def _delivery_step(self, request: Request, step: Callable[..., Any], said: str,
                             args: Callable[[dict[str, Any]], dict[str, Any]]) -> Response:
        """`step(db, user=<the buyer>, **args(body))`, answered with `said` or the refusal."""
        asked = await self._action(request)
        if isinstance(asked, Response):
            return asked
        v, body, user, _ = asked
        try:
            await self.site.call(step, self.site.db, user=user["handle"], **args(body))
        except Refusal as exc:
            return refusal_json(v.lang, exc)
        return JSONResponse({"ok": True, "message": t(v.lang, said)})

    async def _open_and_pay(self, v: Visitor, handle: str, key: str) -> Response:
        via = v.session.via
        method = via if via in ("telegram", "wechat") else "cash"
        opened = await self.site.call(cart_checkout.open_checkout, self.site.db, user=handle,
                                      channel=via, method=method, key=f"{key}:checkout")
        order = opened["order"]
        if opened["token"] is None:  # points paid it all
            return JSONResponse({"ok": True, "kind": "paid", "order": order,
                                 "message": t(v.lang, "pay.done", order=order)})
        seen = await self.site.call(cart.view, self.site.db, user=handle)
        cur = opened.get("currency") or seen["currency"]
        title = t(v.lang, "title") + " " + order
        names = ", ".join(f"{line['name']} ×{line['qty']}" for line in seen["lines"])
        if via == "telegram":
            link = await channels.create_invoice_link(
                self.site.cfg, title=title, description=names or order,
                payload=opened["token"], currency=cur, amount=opened["cash"],
                need_shipping=bool(opened.get("goods")))
            return JSONResponse({"ok": True, "kind": "telegram", "link": link, "order": order})
        if via == "wechat":
            params = await self.site.pay.create_jsapi(
                order=order, amount=opened["cash"], currency=cur, description=names,
                openid=v.identity.removeprefix("wx:"), expires_at=opened["expires_at"])
            return JSONResponse({"ok": True, "kind": "wechat", "params": params, "order": order})
        # the console shop: its simulated payment, recorded as the console chat records one
        await shop_handlers.paid(self.site.app, opened["token"], opened["cash"], cur,
                                 f"web-{secrets.token_hex(8)}", "console", v.identity)
        return JSONResponse({"ok": True, "kind": "paid", "order": order,
                             "message": t(v.lang, "pay.simulated")})

    async def withdraw(self, request: Request) -> Response:
        asked = await self._action(request, keyed=True)
        if isinstance(asked, Response):
            return asked
        v, body, user, key = asked
        # where to be paid is chosen in the chat first, as /withdraw asks (issue 17)
        if await self.site.call(payouts.method_of, self.site.db, user["handle"]) is None:
            return error_json(v.lang, "rebates.need_method", 409)
        try:
            result = await self.site.call(service.request_withdrawal, self.site.db,
                                          user=user["handle"], amount=body.get("amount"),
                                          key=f"{key}:withdraw")
        except Refusal as exc:
            return refusal_json(v.lang, exc)
        amount = i18n.money(result["amount"], self.site.app.currency)
        return JSONResponse({"ok": True,
                             "message": t(v.lang, "rebates.withdraw_done", amount=amount)})

    async def receive(self, request: Request) -> Response:
        """The buyer's 确认收货 (delivery.confirm_receipt, as the chat's receipt button)."""
        return await self._delivery_step(request, delivery.confirm_receipt, "orders.received",
                                         lambda body: {"order": str(body.get("order", ""))[:32]})

    # -- WeChat OAuth (snsapi_base) ------------------------------------------------------

    async def oauth_start(self, request: Request) -> Response:
        cfg = self.site.cfg
        if not cfg.wechat_app_id:
            return error_json("en", "signin.needed", 404)
        # back to one of this server's pages only (never `//host` or `/\host`)
        nxt = request.query_params.get("next", "/app")
        if nxt not in ("/app", "/admin"):
            nxt = "/app"
        state = self.site.signer.sign("oauth", {"n": nxt})
        callback = str(request.url_for("wechat_oauth_callback"))
        return RedirectResponse(channels.oauth_url(cfg, callback, state), status_code=302)

    async def oauth_callback(self, request: Request) -> Response:
        state = self.site.signer.unsign("oauth", request.query_params.get("state"), 600)
        code = request.query_params.get("code", "")
        if state is None or not code or len(code) > 128:
            return error_json("en", "signin.needed", 403)
        openid = await channels.oauth_openid(self.site.cfg, code)
        if openid is None:
            return error_json("en", "signin.needed", 403)
        session = auth.new_session(f"wx:{openid}", "wechat")
        response = RedirectResponse(str(state.get("n") or "/app"), status_code=302)
        set_session_cookie(response, self.site, session, request)
        return response


def set_session_cookie(response: Response, site: Site, session: auth.Session,
                       request: Request) -> None:
    response.set_cookie(auth.COOKIE, auth.session_cookie(site.signer, session),
                        max_age=auth.SESSION_MAX_AGE, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https", path="/")
