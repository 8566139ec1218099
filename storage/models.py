"""The database schema: typed SQLAlchemy 2 models.

Money columns are BigInteger fen, points columns BigInteger micro-points. Times are stored
as naive UTC and read back timezone-aware (``UTCDateTime``), the same on SQLite and PostgreSQL.
Every change to this file needs an Alembic revision under ``storage/migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out; stored naive UTC everywhere."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Setting(Base):
    """Store configuration (SPEC §7 `config`): `section.key` → exact decimal string."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(64))


class Head(Base):
    """The single row every money transaction locks first: the journal's tip and counters.

    Locking it serialises writers in commit order, which is what a hash chain needs.
    """

    __tablename__ = "head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_txn: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    last_entry_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_order_no: Mapped[int] = mapped_column(BigInteger, default=0)
    # A fresh random token whenever settings or products change (engine/accounts.py), so a
    # process may keep its parsed settings and products for as long as the token stays.
    catalog_rev: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Pool(Base):
    """`queue` and `points`. For points, `supply` is Σ holdings; while it is zero the price is
    `zero_price_num / zero_price_den` (fen per micro-point), the price when it last hit zero."""

    __tablename__ = "pools"
    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    supply: Mapped[int] = mapped_column(BigInteger, default=0)
    zero_price_num: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    zero_price_den: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    handle: Mapped[str] = mapped_column(String(96), unique=True)
    referrer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    lang: Mapped[str | None] = mapped_column(String(8), nullable=True)
    display_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    wallet: Mapped[int] = mapped_column(BigInteger, default=0)
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    points: Mapped[int] = mapped_column(BigInteger, default=0)
    basis: Mapped[int] = mapped_column(BigInteger, default=0)
    # floor(basis / points × 10^24) as 20 big-endian bytes: sorts like the exit price
    # (SPEC §4) in both databases; NULL when the holder cannot be forced out.
    exit_key: Mapped[bytes | None] = mapped_column(LargeBinary(20), nullable=True)
    invite_code: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_users_exit", "exit_key", "id"),
        Index("ix_users_referrer", "referrer_id"),
    )


class Identity(Base):
    """A chat identity (`tg:<id>`, `wx:<openid>`) and the account it belongs to."""

    __tablename__ = "identities"
    identity: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Product(Base):
    __tablename__ = "products"
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    price: Mapped[int] = mapped_column(BigInteger)
    margin: Mapped[str] = mapped_column(String(24))
    lock_days: Mapped[int] = mapped_column(Integer)
    scheme: Mapped[str] = mapped_column(String(8))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # SPEC §9: units left to sell (NULL: unlimited), taken when an order is recorded and put
    # back when it is refunded or cancelled unpaid; what delivering one means (`goods` ship,
    # `digital` codes, `service` nothing to deliver).
    stock: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    kind: Mapped[str] = mapped_column(String(10), default="goods", server_default="goods")


class Order(Base):
    """A purchase (SPEC §8). `no` is the recording order; `ref` the external order id.

    The terms an order will settle on are frozen in `terms` when it is recorded."""

    __tablename__ = "orders"
    no: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ref: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    qty: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(BigInteger)
    points_used: Mapped[int] = mapped_column(BigInteger, default=0)
    points_value: Mapped[int] = mapped_column(BigInteger, default=0)
    cash: Mapped[int] = mapped_column(BigInteger)
    method: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    settles_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    matures_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    terms: Mapped[str] = mapped_column(Text)
    payment_ref: Mapped[str | None] = mapped_column(String(128), nullable=True)
    entry_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    minted: Mapped[int] = mapped_column(BigInteger, default=0)
    accelerated: Mapped[int] = mapped_column(BigInteger, default=0)
    # SPEC §9: when the buyer had the goods (with `store.settle_from` = receipt the return
    # window starts then).
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index("ix_orders_due", "status", "settles_at", "no"),)


class Entry(Base):
    """A queue entry (SPEC §3): paid in `seq` order, never more than `amount`."""

    __tablename__ = "entries"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    order_no: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    released: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(10))
    matures_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        Index("ix_entries_status_seq", "status", "seq"),
        Index("ix_entries_user_status_seq", "user_id", "status", "seq"),
        Index("ix_entries_created", "created_at"),  # entries per day (engine/report.py)
    )


class Withdrawal(Base):
    """A wallet withdrawal request: held at once, then approved (paid out) or rejected."""

    __tablename__ = "withdrawals"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(10), index=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Where it goes (issue 17, engine/payouts.py): the payout method's kind (`wechat`,
    # `alipay`, `bank`; None before methods existed), the payee as shown (masked), and the
    # operator's reference for a manual payout.
    method: Mapped[str | None] = mapped_column(String(10), nullable=True)
    payee: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reference: Mapped[str | None] = mapped_column(String(64), nullable=True)

    # a user's withdrawals per day (the daily maximum, engine/payouts.py)
    __table_args__ = (Index("ix_withdrawals_user_requested", "user_id", "requested_at"),)


class JournalTxn(Base):
    """One journal transaction: append-only, hash-chained (SPEC §6).

    `id` is the chain position (no gaps); `key` the idempotency key, unique per source."""

    __tablename__ = "journal"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    key: Mapped[str] = mapped_column(String(160), unique=True)
    kind: Mapped[str] = mapped_column(String(24))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    body: Mapped[str] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    # Reports read the journal by time window (engine/report.py).
    __table_args__ = (Index("ix_journal_at", "at"),)


class Posting(Base):
    __tablename__ = "postings"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    txn_id: Mapped[int] = mapped_column(ForeignKey("journal.id"), index=True)
    account: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)
    ref: Mapped[str | None] = mapped_column(String(64), nullable=True)

    # One account's postings, and over a window of transactions (engine/report.py). An index
    # on `account` alone would only repeat this one's prefix (and cost every write a page).
    __table_args__ = (Index("ix_postings_account_txn", "account", "txn_id"),)


class Outbox(Base):
    """A notification owed to a user, written in the same transaction as its movement."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[str] = mapped_column(Text)
    lang: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (Index("ix_outbox_due", "status", "next_at", "id"),)


class Lease(Base):
    """A named lease (the release lock on SQLite): held until `expires_at`."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Checkout(Base):
    """A payment the shop is waiting for: an unguessable token naming one order."""

    __tablename__ = "checkouts"
    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_ref: Mapped[str] = mapped_column(String(64), unique=True)
    channel: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SeenMessage(Base):
    """Inbound chat messages already handled (WeChat `MsgId`, Telegram update ids)."""

    __tablename__ = "seen_messages"
    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LinkCode(Base):
    """A one-time code joining a Telegram and a WeChat identity into one account."""

    __tablename__ = "link_codes"
    code: Mapped[str] = mapped_column(String(16), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class ChannelRefund(Base):
    """The cash of a refunded order going back through its payment channel (SPEC §8): the
    WeChat Pay refund request (`out_refund_no` = the order ref) and what WeChat Pay said."""

    __tablename__ = "channel_refunds"
    order_ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(8))
    # requested → processing → success | abnormal | closed; failed = retry at next_at
    status: Mapped[str] = mapped_column(String(12))
    refund_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(255), nullable=True)
    next_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_channel_refunds_due", "status", "next_at"),)


class JobRun(Base):
    """The last completed run of a scheduled job (the release): what time it ran `as of`,
    so a scheduler starting after a missed slot knows to catch up (docs/scheduler.md)."""

    __tablename__ = "job_runs"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())
    holder: Mapped[str] = mapped_column(String(128))
    result: Mapped[str] = mapped_column(Text)


class InboxUpdate(Base):
    """A chat update stored before it is acknowledged (Telegram: before the getUpdates offset
    moves past it or the webhook is answered 200), processed from here (docs/telegram.md).

    `status`: pending → done (marked in the same transaction as a payment's effects), or
    spooled (a payment that could not be recorded: in the charge spool, shown to operators),
    or expired (a pre-checkout query older than Telegram waits for an answer)."""

    __tablename__ = "inbox"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    update_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    kind: Mapped[str] = mapped_column(String(24))
    chat_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    user_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (Index("ix_inbox_status_update", "status", "update_id"),)


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


__all__ = [
    "Base",
    "ChannelRefund",
    "Checkout",
    "Entry",
    "Head",
    "Identity",
    "InboxUpdate",
    "JobRun",
    "JournalTxn",
    "Lease",
    "LinkCode",
    "Media",
    "Order",
    "OrderLine",
    "Outbox",
    "PhotoWait",
    "Pool",
    "Posting",
    "Product",
    "ProductPhoto",
    "ProductText",
    "SeenMessage",
    "Setting",
    "User",
    "Withdrawal",
]


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
