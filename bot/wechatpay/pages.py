"""The pages a WeChat Pay link opens: bilingual, self-contained, everything escaped."""

from __future__ import annotations

import base64
import html
import io
import json

import qrcode
from qrcode.image.pure import PyPNGImage

_STYLE = ("body{font-family:sans-serif;max-width:28em;margin:2em auto;padding:0 1em;"
          "text-align:center}img{width:16em;height:16em}")


def page(title: str, zh: str, en: str, extra: str = "") -> str:
    return ("<!doctype html><html><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(zh)}</p><p>{html.escape(en)}</p>"
            f"{extra}</body></html>")


def native_page(code_url: str, amount: str, order: str) -> str:
    out = io.BytesIO()
    qrcode.make(code_url, image_factory=PyPNGImage, box_size=8, border=2).save(out)
    png = base64.b64encode(out.getvalue()).decode()
    return page(f"微信支付 · WeChat Pay {amount}", f"订单 {order}：请用微信扫一扫支付。",
                f"Order {order}: scan with WeChat to pay.",
                f"<img alt='QR' src='data:image/png;base64,{png}'>"
                f"<p><code>{html.escape(code_url)}</code></p>")


def jsapi_page(params: dict[str, str], amount: str, order: str) -> str:
    # JSON in a <script>: "</" is escaped so no value can close the element.
    data = json.dumps(params).replace("</", "<\\/")
    script = ("<script>var p=" + data + ";function pay(){WeixinJSBridge.invoke("
              "'getBrandWCPayRequest',p,function(r){document.getElementById('s').textContent="
              "r.err_msg=='get_brand_wcpay_request:ok'?'支付成功 Paid':'未完成 Not paid';});}"
              "if(typeof WeixinJSBridge=='undefined'){document.addEventListener("
              "'WeixinJSBridgeReady',pay,false);}else{pay();}</script>")
    return page(f"微信支付 · WeChat Pay {amount}", f"订单 {order}：正在打开微信支付…",
                f"Order {order}: opening WeChat Pay…", "<p id=s></p>" + script)
