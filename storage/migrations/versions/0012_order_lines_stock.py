"""SPEC §9: order lines, stock and kind of products, when an order was received

`order_lines` holds each order's lines (an order's `sku`/`qty` stay its first line's, for old
readers); every existing order becomes one line, with what its settlement granted. Products
get `stock` (NULL: unlimited, as every product so far) and `kind` (`goods` by default).

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

BACKFILL = """
INSERT INTO order_lines (order_no, line_no, sku, qty, unit_price, total, cash, matures_at,
                         entry_seq, minted, accelerated)
SELECT no, 1, sku, qty, total / qty, total, cash, matures_at, entry_seq, minted, accelerated
FROM orders
"""


def upgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stock', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('kind', sa.String(length=10), server_default='goods',
                                      nullable=False))
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('received_at', sa.DateTime(), nullable=True))
    op.create_table('order_lines',
    sa.Column('order_no', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('line_no', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('qty', sa.Integer(), nullable=False),
    sa.Column('unit_price', sa.BigInteger(), nullable=False),
    sa.Column('total', sa.BigInteger(), nullable=False),
    sa.Column('cash', sa.BigInteger(), nullable=False),
    sa.Column('matures_at', sa.DateTime(), nullable=True),
    sa.Column('entry_seq', sa.BigInteger(), nullable=True),
    sa.Column('minted', sa.BigInteger(), nullable=False),
    sa.Column('accelerated', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['order_no'], ['orders.no'],
                            name=op.f('fk_order_lines_order_no_orders')),
    sa.PrimaryKeyConstraint('order_no', 'line_no', name=op.f('pk_order_lines'))
    )
    op.execute(BACKFILL)


def downgrade() -> None:
    op.drop_table('order_lines')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('received_at')
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('kind')
        batch_op.drop_column('stock')
