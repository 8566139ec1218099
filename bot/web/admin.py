"""The operator's dashboard `/admin`: server-rendered pages and plain HTML forms.

Only configured operators see anything (`App.operators`): signed in by the Mini App's
initData (exchanged once for the session cookie), WeChat OAuth, a one-time login link sent in
chat, or — the console shop on loopback — as the console operator. Every form carries the
session's CSRF token; every action is the chat command's own engine call with the operator as
the actor (journaled): `service.decide_withdrawal`, `service.upsert_product`,
`catalogue.add_photo`, `service.change_settings`, `delivery.ship`, `verify`.
After a POST the browser is sent back to the page with a message (post/redirect/get).
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from bot.web import auth
from bot.web.buyer import set_session_cookie
from bot.web.render import render, t
from bot.web.site import Site, Visitor, error_json
from engine import (
    catalogue,
    delivery,
    delivery_views,
    queue_ahead,
    report,
    service,
    users,
    views,
)
from engine.errors import Refusal

MAX_FORM = 8 * 1024 * 1024  # a photo, base64 in a form field


class Admin:
    def __init__(self, site: Site) -> None:
        self.site = site

    async def _operator(self, request: Request) -> Visitor | None:
        v = await self.site.visitor(request)
        return v if self.site.is_operator(v) else None

    def _back(self, message: str, anchor: str = "") -> Response:
        return RedirectResponse(f"/admin?m={quote(message)}{anchor}", status_code=303)

    async def _form(self, request: Request) -> dict[str, str]:
        from bot.http import read_body

        raw = await read_body(request, MAX_FORM)
        return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"),
                                             keep_blank_values=True).items()}

    # -- sign-in ---------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        v = await self.site.visitor(request)
        lang = v.lang if v else "en"
        if v is None or not self.site.is_operator(v):
            status = 200 if v is None else 403
            return render("admin_signin.html", lang, self.site.app.currency, status=status,
                          refused=v is not None, wechat=bool(self.site.cfg.wechat_app_id))
        return await self._dashboard(request, v)

    async def login_link(self, request: Request) -> Response:
        identity = self.site.links.redeem(request.query_params.get("token"))
        if identity is None or identity not in self.site.app.operators:
            return render("admin_signin.html", "en", self.site.app.currency, status=403,
                          refused=False, wechat=False, message=t("en", "admin.link_used"))
        response = RedirectResponse("/admin", status_code=303)
        set_session_cookie(response, self.site, auth.new_session(identity, "link"), request)
        return response

    async def telegram_signin(self, request: Request) -> Response:
        """The Mini App's initData (header) exchanged for the session cookie, operators only."""
        found = self.site.visitor_session(request)
        if found is None or found[0].via != "telegram" \
                or found[0].identity not in self.site.app.operators:
            return error_json("en", "forbidden", 403)
        response = JSONResponse({"ok": True})
        set_session_cookie(response, self.site, auth.new_session(found[0].identity, "telegram"),
                           request)
        return response

    async def signout(self, request: Request) -> Response:
        v = await self._operator(request)
        if v is None:
            return error_json("en", "forbidden", 403)
        form = await self._form(request)
        if not self.site.csrf_ok(v, form.get("csrf")):
            return error_json("en", "forbidden", 403)
        response = RedirectResponse("/admin", status_code=303)
        response.delete_cookie(auth.COOKIE, path="/")
        return response

    def make_login_link(self, identity: str, base_url: str) -> str:
        """`/admin/login?token=…` for an operator: one use, ten minutes."""
        return f"{base_url.rstrip('/')}/admin/login?token={self.site.links.make(identity)}"

    # -- the dashboard ---------------------------------------------------------------------

    async def _dashboard(self, request: Request, v: Visitor) -> Response:
        db = self.site.db
        at = datetime.now(UTC)
        pool = await self.site.call(report.pool_report, db, at)
        pending = await self.site.call(views.withdrawals, db, "pending", 50)
        ahead = await self.site.call(queue_ahead.queue_ahead, db, at, limit=20)
        products = await self.site.call(catalogue.page, db, per_page=200)
        ship = await self.site.call(delivery_views.to_ship, db, limit=50)
        cfg = await self.site.call(db.read, users.store_config)
        message = request.query_params.get("m", "")[:200]
        return render("admin.html", v.lang, pool["currency"], v=v, pool=pool,
                      pending=pending, ahead=ahead, products=products["products"], ship=ship, settings=sorted(cfg.raw.items()),
                      csrf=self.site.csrf(v), message=message,
                      verified=request.query_params.get("verified"))

    async def chart(self, request: Request) -> Response:
        v = await self._operator(request)
        if v is None:
            return Response(status_code=403)
        from handlers import charts

        which = request.path_params["name"]
        draw = {"pool": charts.pool_chart_png, "price": charts.price_chart_png}.get(which)
        if draw is None:
            return Response(status_code=404)
        png = await self.site.call(draw, self.site.db, lang=v.lang)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def journal(self, request: Request) -> Response:
        v = await self._operator(request)
        if v is None:
            return Response(status_code=403)
        from engine.export import stream

        # a spooled file, not memory: a journal of millions of transactions is large
        out = tempfile.TemporaryFile()
        await self.site.call(stream, self.site.db, "journal", "csv", out)
        out.seek(0)

        def chunks() -> Iterator[bytes]:
            with out:
                while block := out.read(64 * 1024):
                    yield block

        return StreamingResponse(chunks(), media_type="text/csv",
                                 headers={"Content-Disposition":
                                          "attachment; filename=journal.csv"})

    # -- actions (forms) -------------------------------------------------------------------

    async def action(self, request: Request) -> Response:
        v = await self._operator(request)
        if v is None:
            return error_json("en", "forbidden", 403)
        form = await self._form(request)
        if not self.site.csrf_ok(v, form.get("csrf")):
            return render("message.html", v.lang, self.site.app.currency, status=403,
                          text=t(v.lang, "admin.csrf"))
        name = request.path_params["action"]
        act = {"withdrawal": self._withdrawal, "product": self._product,
               "photo": self._photo, "settings": self._settings, "ship": self._ship,
               "verify": self._verify}.get(name)
        if act is None:
            return Response(status_code=404)
        try:
            return await act(v, form)
        except Refusal as exc:
            # operators see the engine's detail too (which field, which bound)
            detail = f" ({exc.detail[:120]})" if exc.detail else ""
            return self._back(t(v.lang, f"refusal.{exc.code}") + detail)

    async def _withdrawal(self, v: Visitor, form: dict[str, str]) -> Response:
        wid = form.get("id", "")
        await self.site.call(service.decide_withdrawal, self.site.db,
                             withdrawal_id=int(wid) if wid.isdigit() else wid,
                             approve=form.get("decision") == "approve", actor=v.identity,
                             reference=form.get("reference", "").strip()[:64] or None)
        return self._back(t(v.lang, "admin.done"), "#withdrawals")

    async def _product(self, v: Visitor, form: dict[str, str]) -> Response:
        card = await self.site.call(catalogue.card, self.site.db, form.get("sku", ""))
        typed = form.get("stock", "").strip()
        stock: object = int(typed) if typed.isdigit() else (typed or None)
        await self.site.call(service.upsert_product, self.site.db, sku=card["sku"],
                             price=form.get("price", "").strip() or None,
                             margin=str(card["margin"]), lock_days=card["lock_days"],
                             scheme=card["scheme"], stock=stock,
                             active=form.get("active") == "1", actor=v.identity)
        return self._back(t(v.lang, "admin.done"), "#products")

    async def _photo(self, v: Visitor, form: dict[str, str]) -> Response:
        data = form.get("data", "")
        try:
            content = base64.b64decode(data.partition(",")[2] or data, validate=True)
        except ValueError:
            raise Refusal("invalid_event", "photo") from None
        await self.site.call(catalogue.add_photo, self.site.db, sku=form.get("sku", ""),
                             content=content, actor=v.identity)
        return self._back(t(v.lang, "admin.done"), "#products")

    async def _settings(self, v: Visitor, form: dict[str, str]) -> Response:
        key, value = form.get("key", "").strip(), form.get("value", "").strip()
        section, _, name = key.partition(".")
        if not section or not name:
            raise Refusal("invalid_config", key)
        await self.site.call(service.change_settings, self.site.db, {section: {name: value}},
                             actor=v.identity)
        return self._back(t(v.lang, "admin.done"), "#settings")

    async def _ship(self, v: Visitor, form: dict[str, str]) -> Response:
        await self.site.call(delivery.ship, self.site.db, order=form.get("order", "")[:32],
                             carrier=form.get("carrier", "").strip(),
                             tracking=form.get("number", "").strip(), actor=v.identity)
        return self._back(t(v.lang, "admin.done"), "#ship")

    async def _verify(self, v: Visitor, form: dict[str, str]) -> Response:
        from engine.verify import verify

        result = await self.site.call(verify, self.site.db)
        return RedirectResponse(f"/admin?verified={quote(result.lines()[0][:200])}#journal",
                                status_code=303)
