"""codes of digital products; support threads and their messages

Revision ID: 0016
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('codes',
    sa.Column('id', ID, nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('code', sa.String(length=255), nullable=True),
    sa.Column('added_at', sa.DateTime(), nullable=False),
    sa.Column('added_by', sa.String(length=128), nullable=True),
    sa.Column('order_no', sa.BigInteger(), nullable=True),
    sa.Column('line_no', sa.Integer(), nullable=True),
    sa.Column('delivered_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_codes')),
    sa.UniqueConstraint('sku', 'code', name='uq_codes_sku_code')
    )
    with op.batch_alter_table('codes', schema=None) as batch_op:
        batch_op.create_index('ix_codes_unused', ['sku', 'order_no', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_codes_order_no'), ['order_no'], unique=False)
    op.create_table('support_threads',
    sa.Column('id', ID, nullable=False),
    sa.Column('user_id', ID, nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('closed_at', sa.DateTime(), nullable=True),
    sa.Column('closed_by', sa.String(length=128), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'],
                            name=op.f('fk_support_threads_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_support_threads'))
    )
    with op.batch_alter_table('support_threads', schema=None) as batch_op:
        batch_op.create_index('ix_support_threads_status', ['status', 'updated_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_support_threads_user_id'), ['user_id'], unique=False)
    op.create_table('support_messages',
    sa.Column('id', ID, nullable=False),
    sa.Column('thread_id', ID, nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('author', sa.String(length=8), nullable=False),
    sa.Column('identity', sa.String(length=128), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['thread_id'], ['support_threads.id'],
                            name=op.f('fk_support_messages_thread_id_support_threads')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_support_messages')),
    sa.UniqueConstraint('key', name=op.f('uq_support_messages_key'))
    )
    with op.batch_alter_table('support_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_support_messages_thread_id'), ['thread_id'],
                              unique=False)


def downgrade() -> None:
    op.drop_table('support_messages')
    op.drop_table('support_threads')
    op.drop_table('codes')
