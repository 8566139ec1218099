"""WeChat Pay APIv3 in public-key mode (wechatpayv3): see docs/wechat.md.

- config.py: the SDK client from the settings, and the URLs WeChat Pay and buyers reach us at;
- notifications.py: a notification's headers, signature, timestamp and encrypted resource;
- gateway.py: `WeChatPayGateway` — orders (JSAPI, Native), payment and refund notifications,
  and refunds of pending orders;
- pages.py: the pages a pay link opens; its database work is engine/pay_records.py.
"""

from .config import PayConfig, client_from_settings
from .gateway import PayError, WeChatPayGateway
from .notifications import NOTIFY_WINDOW, Answer, Refused, verify

__all__ = ["NOTIFY_WINDOW", "Answer", "PayConfig", "PayError", "Refused", "WeChatPayGateway",
           "client_from_settings", "verify"]
