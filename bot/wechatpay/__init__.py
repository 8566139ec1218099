"""WeChat Pay APIv3 in public-key mode (wechatpayv3): see docs/wechat.md.

- config.py: the SDK client from the settings, and the URLs WeChat Pay and buyers reach us at;
- notifications.py: a notification's headers, signature, timestamp and encrypted resource;
- gateway.py: `WeChatPayGateway` — orders (JSAPI, Native), payment and refund notifications,
  and refunds of pending orders;
- records.py / pages.py: its database work and the pages a pay link opens.
"""

from .config import PayConfig, client_from_settings
from .gateway import PayError, WeChatPayGateway
from .notifications import NOTIFY_WINDOW, Answer, Refused, verify

__all__ = ["NOTIFY_WINDOW", "Answer", "PayConfig", "PayError", "Refused", "WeChatPayGateway",
           "client_from_settings", "verify"]
