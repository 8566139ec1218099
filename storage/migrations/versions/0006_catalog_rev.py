"""head.catalog_rev: settings and products cached for as long as it stays

Every change to the settings or the catalogue writes a fresh random token here in the same
transaction, so an engine process keeps its parsed settings and products and reads them again
only when the token it sees under the head lock differs (engine/book.py).

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('catalog_rev', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('head', schema=None) as batch_op:
        batch_op.drop_column('catalog_rev')
