"""The frozen, signed eBR of each decided batch (written once at release; never changed).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 05:40:00.000000
"""
from alembic import op
import sqlalchemy as sa
import mes.db


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ebr_documents',
    sa.Column('batch_id', sa.String(length=64), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('pdf', sa.LargeBinary(), nullable=False),
    sa.Column('json_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_ebr_documents_batch_id_batches')),
    sa.PrimaryKeyConstraint('batch_id', name=op.f('pk_ebr_documents'))
    )
    mes.db.install_refusal_triggers(op, 'ebr_documents', immutable=True)


def downgrade() -> None:
    op.drop_table('ebr_documents')
