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


# the shop's tables live in storage/shop_models.py; imported here so that `Base.metadata`
# (Alembic, `create_all`) holds them and `storage.models.X` finds every table
from .shop_models import (  # noqa: E402
    CartItem,
    CartOrder,
    Code,
    Media,
    OrderLine,
    PayoutMethod,
    PendingInput,
    PhotoWait,
    ProductPhoto,
    ProductText,
    SavedAddress,
    Shipment,
    SupportMessage,
    SupportThread,
    Transfer,
)

__all__ = [
    "Base",
    "CartItem",
    "CartOrder",
    "ChannelRefund",
    "Checkout",
    "Code",
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
    "PayoutMethod",
    "PendingInput",
    "PhotoWait",
    "Pool",
    "Posting",
    "Product",
    "ProductPhoto",
    "ProductText",
    "SavedAddress",
    "SeenMessage",
    "Setting",
    "Shipment",
    "SupportMessage",
    "SupportThread",
    "Transfer",
    "User",
    "Withdrawal",
]
