"""WeChat Pay's configuration: the wechatpayv3 client in public-key mode and our own URLs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from wechatpayv3 import WeChatPay, WeChatPayType

from bot.settings import Settings


@dataclass(frozen=True)
class PayConfig:
    appid: str
    mchid: str
    apiv3_key: str
    public_key_id: str
    public_key_pem: str
    notify_url: str

    @property
    def public_base(self) -> str:
        """Where the world reaches this server: the notify URL's scheme and host."""
        u = urlsplit(self.notify_url)
        return f"{u.scheme}://{u.netloc}"

    @property
    def refund_notify_url(self) -> str:
        return self.public_base + "/wechat/pay/refund-notify"

    def checkout_url(self, token: str) -> str:
        return f"{self.public_base}/wechat/pay/checkout/{token}"


def client_from_settings(settings: Settings) -> tuple[WeChatPay, PayConfig] | None:
    """The SDK client and its facts, or None when WeChat Pay is not (fully) configured.

    Public-key mode (`public_key` + `public_key_id`) keeps the client from ever downloading
    platform certificates; WECHAT_PAY_API_BASE_URL replaces the gateway, which wechatpayv3
    only has as an attribute."""
    s = settings
    if not s.wechat_pay_configured:
        return None
    assert s.wechat_pay_apiv3_key is not None and s.wechat_pay_public_key_file is not None
    private_key = Path(s.wechat_pay_private_key_file or "").read_text()
    public_key = Path(s.wechat_pay_public_key_file).read_text()
    config = PayConfig(appid=s.wechat_app_id or "", mchid=s.wechat_pay_mch_id or "",
                       apiv3_key=s.wechat_pay_apiv3_key.get_secret_value(),
                       public_key_id=s.wechat_pay_public_key_id or "",
                       public_key_pem=public_key, notify_url=s.wechat_pay_notify_url or "")
    client = WeChatPay(wechatpay_type=WeChatPayType.JSAPI, mchid=config.mchid,
                       private_key=private_key, cert_serial_no=s.wechat_pay_cert_serial,
                       appid=config.appid, apiv3_key=config.apiv3_key,
                       notify_url=config.notify_url, timeout=(5, 15),
                       public_key=public_key, public_key_id=config.public_key_id)
    if s.wechat_pay_api_base_url:
        client._core._gate_way = s.wechat_pay_api_base_url.rstrip("/")
    return client, config
