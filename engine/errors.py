"""Refusals: a business rule said no. A refused action changes nothing (SPEC §6)."""

from __future__ import annotations

# The refusal codes of SPEC §7, plus the few the chat flows add (documented in docs/engine.md).
CODES = frozenset(
    {
        "invalid_config",
        "invalid_event",
        "invalid_amount",
        "invalid_time",
        "invalid_json",
        "unknown_op",
        "duplicate_user",
        "self_referral",
        "unknown_user",
        "unknown_pool",
        "no_points_holders",
        "duplicate_order",
        "unknown_product",
        "insufficient_points",
        "points_exceed_total",
        "unknown_order",
        "not_refundable",
        "self_transfer",
        "insufficient_balance",
        # SPEC §9
        "out_of_stock",
        "not_receivable",
        # beyond the replay contract
        "sales_paused",
        "product_inactive",
        "unknown_withdrawal",
        "already_decided",
        "payment_mismatch",
        "not_payable",
        "busy",
        # account linking (engine/linking.py)
        "link_code_invalid",
        "already_linked",
        "link_same_channel",
        "link_both_funded",
        # the cart (engine/cart.py, docs/cart.md)
        "cart_empty",
        "cart_full",
        "not_in_cart",
        # delivery (engine/delivery.py)
        "invalid_address",
        "not_shippable",
        "already_shipped",
        "not_shipped",
        # digital goods and support (engine/codes.py, engine/support.py)
        "not_digital",
        "invalid_code",
        "unknown_thread",
        # payouts (engine/payouts.py, engine/transfers.py)
        "invalid_payout",
        "no_wechat_identity",
        "no_payout_method",
        "below_minimum",
        "daily_limit",
        "shop_daily_limit",
        "real_name_required",
        # an operator's /stock (engine/accounts.py set_stock, docs/shop.md)
        "stock_is_codes",
    }
)


class Refusal(Exception):
    """Raised inside a unit of work; the transaction rolls back and the caller gets `code`."""

    def __init__(self, code: str, detail: str = "") -> None:
        assert code in CODES, code
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
