"""report indexes: journal by time, entries by creation time

Windows over the journal (7/30-day inflow, daily history) and entries created per day read
only the rows inside the window instead of the whole table (docs/reports.md).

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('journal', schema=None) as batch_op:
        batch_op.create_index('ix_journal_at', ['at'], unique=False)
    with op.batch_alter_table('entries', schema=None) as batch_op:
        batch_op.create_index('ix_entries_created', ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('entries', schema=None) as batch_op:
        batch_op.drop_index('ix_entries_created')
    with op.batch_alter_table('journal', schema=None) as batch_op:
        batch_op.drop_index('ix_journal_at')
