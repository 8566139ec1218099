"""catalogue: product texts (English name, descriptions, category), photos stored once by
sha256 with each channel's cached id, and operators' pending photo uploads

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('product_texts',
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('name_en', sa.String(length=128), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('description_en', sa.Text(), nullable=True),
    sa.Column('category', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['sku'], ['products.sku'],
                            name=op.f('fk_product_texts_sku_products')),
    sa.PrimaryKeyConstraint('sku', name=op.f('pk_product_texts'))
    )
    with op.batch_alter_table('product_texts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_product_texts_category'), ['category'],
                              unique=False)
    op.create_table('media',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('content_type', sa.String(length=32), nullable=False),
    sa.Column('tg_file_id', sa.String(length=255), nullable=True),
    sa.Column('wx_media_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_media'))
    )
    op.create_table('product_photos',
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['sha256'], ['media.sha256'],
                            name=op.f('fk_product_photos_sha256_media')),
    sa.ForeignKeyConstraint(['sku'], ['products.sku'],
                            name=op.f('fk_product_photos_sku_products')),
    sa.PrimaryKeyConstraint('sku', 'position', name=op.f('pk_product_photos'))
    )
    op.create_table('photo_waits',
    sa.Column('identity', sa.String(length=128), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('until', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('identity', name=op.f('pk_photo_waits'))
    )


def downgrade() -> None:
    op.drop_table('photo_waits')
    op.drop_table('product_photos')
    op.drop_table('media')
    with op.batch_alter_table('product_texts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_product_texts_category'))
    op.drop_table('product_texts')
