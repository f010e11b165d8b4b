"""Exception reviews: QA marks each exception of a batch reviewed (review by exception).

No row is ever changed or removed (the database refuses it).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 05:35:00.000000
"""
import sqlalchemy as sa
from alembic import op

import mes.db

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('exception_reviews',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('batch_id', sa.String(length=64), nullable=False),
    sa.Column('exception_key', sa.String(length=200), nullable=False),
    sa.Column('exception_type', sa.String(length=32), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('reviewed_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reviewed_by', sa.String(length=100), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_exception_reviews_batch_id_batches')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exception_reviews')),
    sa.UniqueConstraint('batch_id', 'exception_key', name='uq_exception_reviews_batch_id_exception_key')
    )
    with op.batch_alter_table('exception_reviews', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exception_reviews_batch_id'), ['batch_id'], unique=False)
    mes.db.install_refusal_triggers(op, 'exception_reviews', immutable=True)


def downgrade() -> None:
    with op.batch_alter_table('exception_reviews', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exception_reviews_batch_id'))
    op.drop_table('exception_reviews')
