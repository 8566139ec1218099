"""channel refunds: the cash of a refunded order going back through its payment channel

A refund (SPEC §8) is booked by the engine at once; the cash itself goes back through the
channel it came from (WeChat Pay's APIv3 refund call). This table tracks that request and
WeChat Pay's refund notification, so a crash or an API failure is retried and never
requested twice (docs/wechat.md).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'channel_refunds',
        sa.Column('order_ref', sa.String(length=64), nullable=False),
        sa.Column('channel', sa.String(length=8), nullable=False),
        sa.Column('amount', sa.BigInteger(), nullable=False),
        sa.Column('currency', sa.String(length=8), nullable=False),
        sa.Column('status', sa.String(length=12), nullable=False),
        sa.Column('refund_id', sa.String(length=64), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.String(length=255), nullable=True),
        sa.Column('next_at', sa.DateTime(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('order_ref', name=op.f('pk_channel_refunds')),
    )
    with op.batch_alter_table('channel_refunds', schema=None) as batch_op:
        batch_op.create_index('ix_channel_refunds_due', ['status', 'next_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('channel_refunds', schema=None) as batch_op:
        batch_op.drop_index('ix_channel_refunds_due')
    op.drop_table('channel_refunds')
