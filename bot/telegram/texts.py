"""The few things the adapter itself says (everything else comes from handlers' catalogue).

These cover failures the conversations never see: the adapter could not reach them, or a
payment arrived but could not be recorded yet. Chinese for `zh*` users, English otherwise.
"""

from __future__ import annotations

_TEXTS: dict[str, dict[str, str]] = {
    "internal_error": {
        "zh": "抱歉，处理您的请求时出了点问题，什么都没有改变。请稍后再试。",
        "en": "Sorry, something went wrong handling that; nothing was changed. "
              "Please try again in a moment.",
    },
    "private_only": {
        "zh": "请在与我的私聊中使用商店命令。",
        "en": "Please use the shop commands in a private chat with me.",
    },
    "payment_pending": {
        "zh": "我们已收到您的付款（{charge}），但暂时无法入账。不会丢失："
              "工作人员已收到通知，会尽快为您处理。",
        "en": "We received your payment ({charge}) but could not record it just now. "
              "It is not lost: staff have been alerted and will credit it shortly.",
    },
    "payments_unavailable": {
        "zh": "此处暂不支持在线付款，请选择其他付款方式。",
        "en": "Online payment is not available here; please choose another way to pay.",
    },
    "precheck_unavailable": {
        "zh": "暂时无法确认此订单，您没有被扣款。请稍后再试。",
        "en": "This order cannot be confirmed right now; you have not been charged. "
              "Please try again shortly.",
    },
}


def lang_of(language_code: str | None) -> str:
    """`zh` for any Chinese locale Telegram reports (`zh-hans`, `zh-CN`…), else `en`."""
    return "zh" if (language_code or "").lower().startswith("zh") else "en"


def text(key: str, language_code: str | None, **params: str) -> str:
    return _TEXTS[key][lang_of(language_code)].format(**params)
