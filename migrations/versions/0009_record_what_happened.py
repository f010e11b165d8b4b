"""Record exactly what happened (issue 14): the canonical hash of each idempotent step
request, so a reused key with another payload is refused instead of replayed.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 02:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN keeps the table and its refusal triggers (no batch copy on SQLite)
    op.add_column('step_requests', sa.Column('request_sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    raise RuntimeError("Batch records are records; this migration is never downgraded.")
