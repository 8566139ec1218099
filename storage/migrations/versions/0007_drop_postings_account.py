"""drop ix_postings_account: ix_postings_account_txn already starts with `account`

Every posting written updated both indexes; reads by account alone use the composite index's
prefix just as well (docs/perf.md).

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('postings', schema=None) as batch_op:
        batch_op.drop_index('ix_postings_account')


def downgrade() -> None:
    with op.batch_alter_table('postings', schema=None) as batch_op:
        batch_op.create_index('ix_postings_account', ['account'], unique=False)
