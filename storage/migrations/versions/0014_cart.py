"""cart: cart_items (a buyer's lines) and cart_orders (orders opened from a cart)

Revision ID: 0014
Revises: 0013 (main's head when cart was merged with it)
"""
import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cart_items',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('qty', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                            name=op.f('fk_cart_items_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cart_items'))
    )
    with op.batch_alter_table('cart_items', schema=None) as batch_op:
        batch_op.create_index('ix_cart_items_user_sku', ['user_id', 'sku'], unique=True)
    op.create_table('cart_orders',
    sa.Column('order_ref', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                            name=op.f('fk_cart_orders_user_id_users')),
    sa.PrimaryKeyConstraint('order_ref', name=op.f('pk_cart_orders'))
    )
    with op.batch_alter_table('cart_orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cart_orders_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('cart_orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cart_orders_user_id'))
    op.drop_table('cart_orders')
    with op.batch_alter_table('cart_items', schema=None) as batch_op:
        batch_op.drop_index('ix_cart_items_user_sku')
    op.drop_table('cart_items')
