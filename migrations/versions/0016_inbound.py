"""Inbound integration: the peers that send commands (with the secret the MES issued) and
the idempotency records of their commands.

No row of these tables is ever deleted (the database refuses it); peers change only with
an audit entry, idempotency records are the inbound endpoint's bookkeeping.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 05:40:00.000000
"""
from alembic import op
import sqlalchemy as sa
import mes.db


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('integration_peers',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('secret', sa.String(length=100), nullable=False),
    sa.Column('previous_secret', sa.String(length=100), nullable=True),
    sa.Column('previous_secret_until', mes.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('event_types', sa.String(length=2000), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.CheckConstraint("state IN ('enabled', 'disabled')", name=op.f('ck_integration_peers_state')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_integration_peers'))
    )
    op.create_table('integration_idempotency',
    sa.Column('peer_id', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('body_sha256', sa.String(length=64), nullable=False),
    sa.Column('event_id', sa.String(length=255), nullable=False),
    sa.Column('event_type', sa.String(length=100), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('running_until', mes.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('content_type', sa.String(length=100), nullable=True),
    sa.Column('response', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('completed_at', mes.db.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('running', 'done')", name=op.f('ck_integration_idempotency_state')),
    sa.ForeignKeyConstraint(['peer_id'], ['integration_peers.id'], name=op.f('fk_integration_idempotency_peer_id_integration_peers')),
    sa.PrimaryKeyConstraint('peer_id', 'key', name=op.f('pk_integration_idempotency'))
    )
    for table in ('integration_peers', 'integration_idempotency'):
        mes.db.install_refusal_triggers(op, table, immutable=False)


def downgrade() -> None:
    op.drop_table('integration_idempotency')
    op.drop_table('integration_peers')
