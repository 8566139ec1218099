"""The shop's tables (docs/shop.md): order lines and stock (SPEC §9), the catalogue's texts
and photos, carts, delivery, digital codes, support threads, payouts and transfers, and the
inputs a conversation waits for. Split from `storage/models.py`, which re-exports them; the
same rules hold: money in fen, times as `UTCDateTime`, every change an Alembic revision.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, UTCDateTime


class OrderLine(Base):
    """One line of an order (SPEC §9): a sku and quantity, its share of the order's cash, its
    maturity (set when the order is paid) and what its settlement granted. An order's `sku`,
    `qty` (and, for one line, `entry_seq`, `minted`, `accelerated`) are its first line's."""

    __tablename__ = "order_lines"
    order_no: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.no"), primary_key=True,
                                          autoincrement=False)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sku: Mapped[str] = mapped_column(String(64))
    qty: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    cash: Mapped[int] = mapped_column(BigInteger)
    matures_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    entry_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    minted: Mapped[int] = mapped_column(BigInteger, default=0)
    accelerated: Mapped[int] = mapped_column(BigInteger, default=0)


class ProductText(Base):
    """A product's shop texts (docs/catalogue.md): the English name, the description in
    both languages and the category `/shop` groups it under. Kept beside `products` so the
    engine's purchase path never reads them."""

    __tablename__ = "product_texts"
    sku: Mapped[str] = mapped_column(ForeignKey("products.sku"), primary_key=True)
    name_en: Mapped[str | None] = mapped_column(String(128), nullable=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    description_en: Mapped[str | None] = mapped_column(Text, nullable=True)
    category: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class Media(Base):
    """A photo, stored once by the sha256 of its bytes, with each channel's cached id for
    it: Telegram's `file_id` (re-sent instead of the bytes) and WeChat's permanent media id
    (`material/add_material`). A photo uploaded on one channel shows on the other."""

    __tablename__ = "media"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String(32))
    tg_file_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    wx_media_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ProductPhoto(Base):
    """A product's photos in the order they were added (`position` 1, 2, …)."""

    __tablename__ = "product_photos"
    sku: Mapped[str] = mapped_column(ForeignKey("products.sku"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(ForeignKey("media.sha256"))


class PhotoWait(Base):
    """An operator who said `图片 SKU` (or listed a product) on a channel that sends photos
    as separate messages (WeChat): their next image, before `until`, goes to `sku`."""

    __tablename__ = "photo_waits"
    identity: Mapped[str] = mapped_column(String(128), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    until: Mapped[datetime] = mapped_column(UTCDateTime())




class CartItem(Base):
    """One line of a buyer's cart (docs/cart.md): a product and how many, in the order the
    lines were first added (`position`). One line per product: adding it again adds to it."""

    __tablename__ = "cart_items"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    sku: Mapped[str] = mapped_column(String(64))
    qty: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_cart_items_user_sku", "user_id", "sku", unique=True),)


class CartOrder(Base):
    """An order opened from a buyer's cart: once it is recorded as paid its lines leave the
    cart; once it is cancelled unpaid it is forgotten and the cart stays (engine/cart.py)."""

    __tablename__ = "cart_orders"
    order_ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SavedAddress(Base):
    """Where a buyer wants goods sent, kept for next time (docs/delivery.md): one per user,
    the last one they confirmed in chat or gave Telegram at a payment."""

    __tablename__ = "saved_addresses"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    phone: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(400))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Shipment(Base):
    """The delivery of one paid goods order (SPEC §9, docs/delivery.md): where it goes, when
    and how it was shipped, whether an operator holds its automatic receipt, and when and by
    whom it was received (`buyer`, `auto`, or an operator's identity)."""

    __tablename__ = "shipments"
    order_ref: Mapped[str] = mapped_column(ForeignKey("orders.ref"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    phone: Mapped[str | None] = mapped_column(String(32), nullable=True)
    address: Mapped[str | None] = mapped_column(String(400), nullable=True)
    carrier: Mapped[str | None] = mapped_column(String(40), nullable=True)
    tracking: Mapped[str | None] = mapped_column(String(64), nullable=True)
    shipped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    shipped_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    held: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    received_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    # the auto-receive job's scan: shipped, not received yet, oldest first
    __table_args__ = (Index("ix_shipments_due", "received_at", "shipped_at"),)

class Code(Base):
    """A digital product's code (docs/digital.md): unused while `order_no` is NULL; given to
    one unit of one order line, in the transaction that records the payment, and never
    again. A code is unique within its sku (an upload repeating one skips it). A unit paid
    when no code was left is owed: a row with its order and no `code` yet, which the next
    upload fills first."""

    __tablename__ = "codes"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    code: Mapped[str | None] = mapped_column(String(255), nullable=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())
    added_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    order_no: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    line_no: Mapped[int | None] = mapped_column(Integer, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (UniqueConstraint("sku", "code", name="uq_codes_sku_code"),
                      Index("ix_codes_unused", "sku", "order_no", "id"))


class SupportThread(Base):
    """A buyer's conversation with the shop's people (`/support`, docs/support.md)."""

    __tablename__ = "support_threads"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(8))  # open | closed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (Index("ix_support_threads_status", "status", "updated_at"),)


class SupportMessage(Base):
    """One message of a thread: the buyer's (`author` buyer) or an operator's (`operator`,
    with the operator's identity). `key` makes a redelivered chat message one message."""

    __tablename__ = "support_messages"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("support_threads.id"), index=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    author: Mapped[str] = mapped_column(String(8))
    identity: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
class PayoutMethod(Base):
    """Where a user's withdrawals are paid (issue 17): their WeChat balance (`account` is the
    openid of their WeChat identity) or, paid by hand, an Alipay account or bank card.
    `account` is never shown or logged; `masked` is what chat shows."""

    __tablename__ = "payout_methods"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    account: Mapped[str] = mapped_column(String(128))
    masked: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Transfer(Base):
    """A WeChat Pay merchant transfer paying one withdrawal (engine/transfers.py).

    `out_bill_no` is WeChat Pay's idempotency key, derived from the withdrawal; `state` is
    WeChat's (`NEW` until it answered once); the hold stays until SUCCESS (paid out) or
    FAIL/CANCELLED (back to the wallet)."""

    __tablename__ = "transfers"
    out_bill_no: Mapped[str] = mapped_column(String(32), primary_key=True)
    withdrawal_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    openid: Mapped[str] = mapped_column(String(128))
    user_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(20))
    transfer_bill_no: Mapped[str | None] = mapped_column(String(64), nullable=True)
    package_info: Mapped[str | None] = mapped_column(Text, nullable=True)
    fail_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    confirm_token: Mapped[str] = mapped_column(String(32), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (Index("ix_transfers_state_next", "state", "next_at"),)



class PendingInput(Base):
    """What a person's next plain message is for (`handlers.registry.expect_next`): the
    button `kind` and its `fields` (a JSON list) it goes to, until `until`. Kept in the
    database so a restart remembers it and every `storefront run` process sees it."""

    __tablename__ = "pending_inputs"
    identity: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    fields: Mapped[str] = mapped_column(Text)
    until: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
