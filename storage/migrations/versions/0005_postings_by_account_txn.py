"""postings by account and transaction

Reports sum one account's postings over a journal window (a range of transaction ids);
with (account, txn_id) that read is a range search proportional to the window, not to the
account's whole history (docs/reports.md).

Revision ID: 0005
Revises: 0004
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('postings', schema=None) as batch_op:
        batch_op.create_index('ix_postings_account_txn', ['account', 'txn_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('postings', schema=None) as batch_op:
        batch_op.drop_index('ix_postings_account_txn')
