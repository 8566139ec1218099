"""Loopback stand-ins for what WeChat's web pages use besides the Official Account API:
OAuth (`snsapi_base`: the authorize page and the code → openid exchange). WeChat Pay's
JSAPI orders are `tests/standins/wechat.py: FakeWeChatPayAPI`; the JS bridge a page calls
(`WeixinJSBridge.invoke('getBrandWCPayRequest', …)`) is `tests/web_browser_kit.py:
wechat_bridge`.

`FakeWeChatWeb` is the Official Account API stand-in (`FakeWeChatAPI`, so one base URL
serves both, as WECHAT_API_BASE_URL is one setting) plus:

    GET /connect/oauth2/authorize?appid&redirect_uri&response_type=code&scope&state
        → 302 to redirect_uri?code=…&state=… for the openid in `next_openid`
    GET /sns/oauth2/access_token?appid&secret&code&grant_type=authorization_code
        → {"openid", "access_token", …}; a code works once (40163 after), unknown 40029
    POST /cgi-bin/menu/create   the Official Account's menu (kept in `menus`)
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tests.standins.wechat import FakeWeChatAPI, RecordedCall, _json_response


class FakeWeChatWeb(FakeWeChatAPI):
    def __init__(self, appid: str | None = None, secret: str | None = None, **kw: Any) -> None:
        super().__init__(appid, secret, **kw)
        self.next_openid = "o-web-buyer"
        self.codes: dict[str, str] = {}  # code → openid, until exchanged
        self.exchanged: set[str] = set()
        self.menus: list[dict[str, Any]] = []  # menu/create bodies, in order

    def _routes(self) -> list[tuple[str, list[str], Any]]:
        return [*super()._routes(),
                ("/connect/oauth2/authorize", ["GET"], self._authorize),
                ("/sns/oauth2/access_token", ["GET"], self._oauth_token),
                ("/cgi-bin/menu/create", ["POST"], self._menu_create)]

    async def _menu_create(self, request: Request, call: RecordedCall) -> Response:
        refused = self._precheck(call)
        if refused is not None:
            return refused
        body = call.json
        if not isinstance(body, dict) or not body.get("button"):
            return _json_response({"errcode": 40016, "errmsg": "invalid button size"})
        with self._lock:
            self.menus.append(body)
        return _json_response({"errcode": 0, "errmsg": "ok"})

    async def _authorize(self, request: Request, call: RecordedCall) -> Response:
        q = call.query
        if self.appid is not None and q.get("appid") != self.appid:
            return _json_response({"errcode": 40013, "errmsg": "invalid appid"})
        if q.get("scope") not in ("snsapi_base", "snsapi_userinfo") \
                or q.get("response_type") != "code" or not q.get("redirect_uri"):
            return _json_response({"errcode": 10003, "errmsg": "redirect_uri or scope"})
        code = secrets.token_hex(8)
        with self._lock:
            self.codes[code] = self.next_openid
        target = q["redirect_uri"] + ("&" if "?" in q["redirect_uri"] else "?") + \
            urlencode({"code": code, "state": q.get("state", "")})
        return RedirectResponse(target, status_code=302)

    async def _oauth_token(self, request: Request, call: RecordedCall) -> Response:
        q = call.query
        if q.get("grant_type") != "authorization_code":
            return _json_response({"errcode": 40002, "errmsg": "invalid grant_type"})
        if (self.appid is not None and q.get("appid") != self.appid) or \
                (self.secret is not None and q.get("secret") != self.secret):
            return _json_response({"errcode": 40125, "errmsg": "invalid appsecret"})
        code = q.get("code", "")
        with self._lock:
            if code in self.exchanged:
                return _json_response({"errcode": 40163, "errmsg": "code been used"})
            openid = self.codes.pop(code, None)
            if openid is not None:
                self.exchanged.add(code)
        if openid is None:
            return _json_response({"errcode": 40029, "errmsg": "invalid code"})
        return _json_response({"access_token": secrets.token_hex(16), "expires_in": 7200,
                               "refresh_token": secrets.token_hex(16), "openid": openid,
                               "scope": "snsapi_base"})
