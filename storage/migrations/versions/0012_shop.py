"""the shop (issues 9, 16, 17): order lines and stock, catalogue, cart, delivery, codes and
support, payouts, pending inputs

One migration for what 0012-0019 added on the day they were written (none of them was ever
released; the last release had head 0011). One section per feature:
- lines: `order_lines` holds each order's lines (an order's `sku`/`qty` stay its first
  line's, for old readers); every existing order becomes one line, with what its settlement
  granted. Products get `stock` (NULL: unlimited) and `kind` (`goods` by default); orders
  get `received_at`.
- catalogue: product texts, photos stored once by sha256 with each channel's cached id,
  operators' pending photo uploads.
- cart: a buyer's lines and the orders opened from a cart.
- delivery: saved addresses per user, shipments (address, carrier, tracking, receipt).
- codes+support: codes of digital products; support threads and their messages.
- payouts: payout methods, WeChat Pay merchant transfers, and on `withdrawals` the method,
  the masked payee and the operator's payout reference (docs/wechat.md).
- pending inputs: what a person's next plain message is for (expect_next).

Revision ID: 0012
Revises: 0011
"""
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

# Every table this migration creates, in the order it creates them (downgrade drops them in
# reverse; their indexes go with them).
TABLES = ('order_lines', 'product_texts', 'media', 'product_photos', 'photo_waits',
          'cart_items', 'cart_orders', 'saved_addresses', 'shipments', 'codes',
          'support_threads', 'support_messages', 'payout_methods', 'transfers',
          'pending_inputs')

BACKFILL = """
INSERT INTO order_lines (order_no, line_no, sku, qty, unit_price, total, cash, matures_at,
                         entry_seq, minted, accelerated)
SELECT no, 1, sku, qty, total / qty, total, cash, matures_at, entry_seq, minted, accelerated
FROM orders
"""


def _col(name: str, type_: Any, null: bool = False, **kw: Any) -> sa.Column:
    return sa.Column(name, type_, nullable=null, **kw)


def _str(name: str, length: int, null: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(length=length), nullable=null)


def _time(name: str, null: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(), nullable=null)


def _timestamps() -> tuple[sa.Column, sa.Column]:
    return _time('created_at'), _time('updated_at')


def _user_id() -> sa.Column:
    return _col('user_id', ID)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    """`column` refers to `target` ("table.column")."""
    ref = target.split('.')[0]
    return sa.ForeignKeyConstraint([column], [target], name=op.f(f'fk_{table}_{column}_{ref}'))


def _unique(table: str, *columns: str, name: str = '') -> sa.UniqueConstraint:
    return sa.UniqueConstraint(*columns, name=op.f(name or f'uq_{table}_{columns[0]}'))


def _table(name: str, *items: Any, pk: tuple[str, ...], after: tuple[Any, ...] = ()) -> None:
    """Create `name` with `items` (columns, then foreign keys), its primary key `pk` and
    then `after` (unique constraints), in the order the models declare them."""
    op.create_table(name, *items, sa.PrimaryKeyConstraint(*pk, name=op.f(f'pk_{name}')),
                    *after)


def _index(table: str, name: str, *columns: str, unique: bool = False) -> None:
    op.create_index(op.f(name), table, list(columns), unique=unique)


def upgrade() -> None:
    _lines()
    _catalogue()
    _cart()
    _delivery()
    _codes_and_support()
    _payouts()
    _pending_inputs()


def _lines() -> None:
    """lines: order lines (each existing order becomes one), product stock and kind."""
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(_col('stock', sa.BigInteger(), null=True))
        batch_op.add_column(_col('kind', sa.String(length=10), server_default='goods'))
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(_time('received_at', null=True))
    _table('order_lines',
           _col('order_no', sa.BigInteger(), autoincrement=False),
           _col('line_no', sa.Integer(), autoincrement=False),
           _str('sku', 64), _col('qty', sa.Integer()),
           _col('unit_price', sa.BigInteger()), _col('total', sa.BigInteger()),
           _col('cash', sa.BigInteger()), _time('matures_at', null=True),
           _col('entry_seq', sa.BigInteger(), null=True),
           _col('minted', sa.BigInteger()), _col('accelerated', sa.BigInteger()),
           _fk('order_lines', 'order_no', 'orders.no'),
           pk=('order_no', 'line_no'))
    op.execute(BACKFILL)


def _catalogue() -> None:
    """catalogue: product texts, media stored once by sha256, photos, pending uploads."""
    _table('product_texts',
           _str('sku', 64), _str('name_en', 128, null=True),
           _col('description', sa.Text(), null=True),
           _col('description_en', sa.Text(), null=True), _str('category', 64, null=True),
           _fk('product_texts', 'sku', 'products.sku'),
           pk=('sku',))
    _index('product_texts', 'ix_product_texts_category', 'category')
    _table('media',
           _str('sha256', 64), _col('content', sa.LargeBinary()), _str('content_type', 32),
           _str('tg_file_id', 255, null=True), _str('wx_media_id', 128, null=True),
           _time('created_at'),
           pk=('sha256',))
    _table('product_photos',
           _str('sku', 64), _col('position', sa.Integer(), autoincrement=False),
           _str('sha256', 64),
           _fk('product_photos', 'sha256', 'media.sha256'),
           _fk('product_photos', 'sku', 'products.sku'),
           pk=('sku', 'position'))
    _table('photo_waits',
           _str('identity', 128), _str('sku', 64), _time('until'),
           pk=('identity',))


def _cart() -> None:
    """cart: a buyer's lines (one per sku) and the orders opened from a cart."""
    _table('cart_items',
           _col('id', ID), _user_id(), _str('sku', 64), _col('qty', sa.Integer()),
           _col('position', sa.Integer()), _time('updated_at'),
           _fk('cart_items', 'user_id', 'users.id'),
           pk=('id',))
    _index('cart_items', 'ix_cart_items_user_sku', 'user_id', 'sku', unique=True)
    _table('cart_orders',
           _str('order_ref', 64), _user_id(), _time('created_at'),
           _fk('cart_orders', 'user_id', 'users.id'),
           pk=('order_ref',))
    _index('cart_orders', 'ix_cart_orders_user_id', 'user_id')


def _delivery() -> None:
    """delivery: one saved address per user; a shipment per order that needs one."""
    _table('saved_addresses',
           _user_id(), _str('name', 64), _str('phone', 32), _str('address', 400),
           _time('updated_at'),
           _fk('saved_addresses', 'user_id', 'users.id'),
           pk=('user_id',))
    _table('shipments',
           _str('order_ref', 64), _user_id(),
           _str('name', 64, null=True), _str('phone', 32, null=True),
           _str('address', 400, null=True),
           _str('carrier', 40, null=True), _str('tracking', 64, null=True),
           _time('shipped_at', null=True), _str('shipped_by', 128, null=True),
           _col('held', sa.Boolean()),
           _time('received_at', null=True), _str('received_by', 128, null=True),
           *_timestamps(),
           _fk('shipments', 'order_ref', 'orders.ref'),
           _fk('shipments', 'user_id', 'users.id'),
           pk=('order_ref',))
    _index('shipments', 'ix_shipments_due', 'received_at', 'shipped_at')
    _index('shipments', 'ix_shipments_user_id', 'user_id')


def _codes_and_support() -> None:
    """codes+support: codes of digital products; support threads and their messages."""
    _table('codes',
           _col('id', ID), _str('sku', 64), _str('code', 255, null=True),
           _time('added_at'), _str('added_by', 128, null=True),
           _col('order_no', sa.BigInteger(), null=True),
           _col('line_no', sa.Integer(), null=True), _time('delivered_at', null=True),
           pk=('id',), after=(_unique('codes', 'sku', 'code', name='uq_codes_sku_code'),))
    _index('codes', 'ix_codes_unused', 'sku', 'order_no', 'id')
    _index('codes', 'ix_codes_order_no', 'order_no')
    _table('support_threads',
           _col('id', ID), _user_id(), _str('status', 8), *_timestamps(),
           _time('closed_at', null=True), _str('closed_by', 128, null=True),
           _fk('support_threads', 'user_id', 'users.id'),
           pk=('id',))
    _index('support_threads', 'ix_support_threads_status', 'status', 'updated_at')
    _index('support_threads', 'ix_support_threads_user_id', 'user_id')
    _table('support_messages',
           _col('id', ID), _col('thread_id', ID), _str('key', 200), _str('author', 8),
           _str('identity', 128), _col('text', sa.Text()), _time('at'),
           _fk('support_messages', 'thread_id', 'support_threads.id'),
           pk=('id',), after=(_unique('support_messages', 'key'),))
    _index('support_messages', 'ix_support_messages_thread_id', 'thread_id')


def _payouts() -> None:
    """payouts: methods, WeChat Pay merchant transfers, where a withdrawal goes."""
    _table('payout_methods',
           _user_id(), _str('kind', 10), _str('name', 64, null=True),
           _str('account', 128), _str('masked', 64), _time('updated_at'),
           _fk('payout_methods', 'user_id', 'users.id'),
           pk=('user_id',))
    _table('transfers',
           _str('out_bill_no', 32), _col('withdrawal_id', sa.BigInteger()),
           _col('user_id', sa.BigInteger()), _col('amount', sa.BigInteger()),
           _str('openid', 128), _str('user_name', 64, null=True), _str('state', 20),
           _str('transfer_bill_no', 64, null=True), _col('package_info', sa.Text(), null=True),
           _str('fail_reason', 64, null=True), _str('confirm_token', 32),
           _col('attempts', sa.Integer()), _time('next_at'), *_timestamps(),
           _str('last_error', 255, null=True),
           pk=('out_bill_no',),
           after=(_unique('transfers', 'withdrawal_id'), _unique('transfers', 'confirm_token')))
    _index('transfers', 'ix_transfers_state_next', 'state', 'next_at')
    with op.batch_alter_table('withdrawals', schema=None) as batch_op:
        batch_op.add_column(_str('method', 10, null=True))
        batch_op.add_column(_str('payee', 64, null=True))
        batch_op.add_column(_str('reference', 64, null=True))
        batch_op.create_index('ix_withdrawals_user_requested', ['user_id', 'requested_at'],
                              unique=False)


def _pending_inputs() -> None:
    """pending inputs: what a person's next plain message is for (one per identity)."""
    _table('pending_inputs',
           _str('identity', 128), _str('kind', 32), _col('fields', sa.Text()), _time('until'),
           pk=('identity',))
    _index('pending_inputs', 'ix_pending_inputs_until', 'until')


def downgrade() -> None:
    with op.batch_alter_table('withdrawals', schema=None) as batch_op:
        batch_op.drop_index('ix_withdrawals_user_requested')
        batch_op.drop_column('reference')
        batch_op.drop_column('payee')
        batch_op.drop_column('method')
    for table in reversed(TABLES):
        op.drop_table(table)
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('received_at')
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('kind')
        batch_op.drop_column('stock')
