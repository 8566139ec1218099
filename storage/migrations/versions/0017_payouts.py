"""payouts: payout methods, WeChat Pay merchant transfers, and where a withdrawal goes

`payout_methods` (one per user: WeChat balance, Alipay or bank card), `transfers` (one per
withdrawal paid by a WeChat Pay merchant transfer, keyed by its `out_bill_no`), and on
`withdrawals` the method it was requested for, the masked payee and the operator's payout
reference (issue 17, docs/wechat.md).

Revision ID: 0017
Revises: 0016
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('payout_methods',
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=True),
    sa.Column('account', sa.String(length=128), nullable=False),
    sa.Column('masked', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                            name=op.f('fk_payout_methods_user_id_users')),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_payout_methods'))
    )
    op.create_table('transfers',
    sa.Column('out_bill_no', sa.String(length=32), nullable=False),
    sa.Column('withdrawal_id', sa.BigInteger(), nullable=False),
    sa.Column('user_id', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('openid', sa.String(length=128), nullable=False),
    sa.Column('user_name', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('transfer_bill_no', sa.String(length=64), nullable=True),
    sa.Column('package_info', sa.Text(), nullable=True),
    sa.Column('fail_reason', sa.String(length=64), nullable=True),
    sa.Column('confirm_token', sa.String(length=32), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_at', sa.DateTime(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('last_error', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('out_bill_no', name=op.f('pk_transfers')),
    sa.UniqueConstraint('withdrawal_id', name=op.f('uq_transfers_withdrawal_id')),
    sa.UniqueConstraint('confirm_token', name=op.f('uq_transfers_confirm_token'))
    )
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.create_index('ix_transfers_state_next', ['state', 'next_at'], unique=False)
    with op.batch_alter_table('withdrawals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('method', sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column('payee', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('reference', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_withdrawals_user_requested', ['user_id', 'requested_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('withdrawals', schema=None) as batch_op:
        batch_op.drop_index('ix_withdrawals_user_requested')
        batch_op.drop_column('reference')
        batch_op.drop_column('payee')
        batch_op.drop_column('method')
    with op.batch_alter_table('transfers', schema=None) as batch_op:
        batch_op.drop_index('ix_transfers_state_next')
    op.drop_table('transfers')
    op.drop_table('payout_methods')
