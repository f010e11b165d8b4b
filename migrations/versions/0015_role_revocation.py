"""Access rights are removed on the record (Annex 11 §12.3): a role granted to a user is
revoked, never deleted; the row keeps when and by whom, and a revoked role grants nothing.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 05:45:00
"""
import sqlalchemy as sa
from alembic import op

import mes.db

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN keeps the table as it is (no batch copy on SQLite)
    op.add_column('user_roles', sa.Column('revoked_at', mes.db.UTCDateTime(timezone=True), nullable=True))
    op.add_column('user_roles', sa.Column('revoked_by', sa.String(length=64), nullable=True))


def downgrade() -> None:
    raise RuntimeError("Access records are records; this migration is never downgraded.")
