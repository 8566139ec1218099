"""delivery: saved addresses per user, and shipments (address, carrier, tracking, receipt)

Revision ID: 0015
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('saved_addresses',
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('phone', sa.String(length=32), nullable=False),
    sa.Column('address', sa.String(length=400), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                            name=op.f('fk_saved_addresses_user_id_users')),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_saved_addresses'))
    )
    op.create_table('shipments',
    sa.Column('order_ref', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=True),
    sa.Column('phone', sa.String(length=32), nullable=True),
    sa.Column('address', sa.String(length=400), nullable=True),
    sa.Column('carrier', sa.String(length=40), nullable=True),
    sa.Column('tracking', sa.String(length=64), nullable=True),
    sa.Column('shipped_at', sa.DateTime(), nullable=True),
    sa.Column('shipped_by', sa.String(length=128), nullable=True),
    sa.Column('held', sa.Boolean(), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=True),
    sa.Column('received_by', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_ref'], ['orders.ref'],
                            name=op.f('fk_shipments_order_ref_orders')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_shipments_user_id_users')),
    sa.PrimaryKeyConstraint('order_ref', name=op.f('pk_shipments'))
    )
    with op.batch_alter_table('shipments', schema=None) as batch_op:
        batch_op.create_index('ix_shipments_due', ['received_at', 'shipped_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_shipments_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('shipments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shipments_user_id'))
        batch_op.drop_index('ix_shipments_due')
    op.drop_table('shipments')
    op.drop_table('saved_addresses')
