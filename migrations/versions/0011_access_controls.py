"""Access controls that hold under attack (issue 18): a credential reset by an administrator
is temporary (when it was reset), a session remembers its first signature, so the
"both components first" rule of Part 11 §11.200(a)(1) is checked per session, and browser
sessions are kept on the server (the cookie holds an id only).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 02:30:00
"""
from alembic import op
import sqlalchemy as sa
import mes.db


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN keeps the tables as they are (no batch copy on SQLite)
    op.add_column('users', sa.Column('password_reset_at', mes.db.UTCDateTime(timezone=True), nullable=True))
    op.add_column('users', sa.Column('pin_reset_at', mes.db.UTCDateTime(timezone=True), nullable=True))
    op.add_column('user_sessions', sa.Column('first_signed_at', mes.db.UTCDateTime(timezone=True), nullable=True))
    # browser sessions kept on the server: the cookie holds a random id only
    op.create_table('web_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('created_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_web_sessions'))
    )
    op.create_index('ix_web_sessions_expires', 'web_sessions', ['expires_at'], unique=False)


def downgrade() -> None:
    raise RuntimeError("Access records are records; this migration is never downgraded.")
