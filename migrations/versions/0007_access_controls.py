"""Access controls that hold under attack (issue 18): a credential reset by an administrator
is temporary (when it was reset), and a session remembers its first signature, so the
"both components first" rule of Part 11 §11.200(a)(1) is checked per session.

Revision ID: 0007_access
Revises: 0006
Create Date: 2026-12-06 02:30:00
"""
from alembic import op
import sqlalchemy as sa
import mes.db


revision = '0007_access'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN keeps the tables as they are (no batch copy on SQLite)
    op.add_column('users', sa.Column('password_reset_at', mes.db.UTCDateTime(timezone=True), nullable=True))
    op.add_column('users', sa.Column('pin_reset_at', mes.db.UTCDateTime(timezone=True), nullable=True))
    op.add_column('user_sessions', sa.Column('first_signed_at', mes.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    raise RuntimeError("Access records are records; this migration is never downgraded.")
