"""pending inputs: what a person's next plain message is for (expect_next)

Revision ID: 0019
Revises: 0016
"""
import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pending_inputs',
    sa.Column('identity', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('fields', sa.Text(), nullable=False),
    sa.Column('until', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('identity', name=op.f('pk_pending_inputs'))
    )
    with op.batch_alter_table('pending_inputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pending_inputs_until'), ['until'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('pending_inputs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pending_inputs_until'))
    op.drop_table('pending_inputs')
