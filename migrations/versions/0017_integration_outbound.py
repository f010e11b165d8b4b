"""Outbox position: events that are not an audit entry's own (signed audit checkpoints) get
a place in commit order.

Each outbox event had the ``seq`` of the audit entry it reports as its place in commit
order (unique). A checkpoint of ``size`` entries is not an entry, and its event must sort
after entry ``size - 1`` and before entry ``size``. So every event gets a ``position``:
``2·seq + 1`` for an entry's event, ``2·size`` for a checkpoint's event. Checkpoint events
keep ``audit_seq`` unique with ``-size`` (no entry has a negative seq). The relay's cursor and
deliveries count in positions from now on (their ``audit_seq`` columns are renamed).

No table is copied (SQLite would lose the refusal triggers and trip the foreign keys): a
column is added, filled and indexed; columns are renamed in place.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 05:30:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('outbox_events', sa.Column('position', sa.BigInteger(), nullable=False, server_default='0'))
    op.execute("UPDATE outbox_events SET position = 2 * audit_seq + 1")
    op.create_index('ix_outbox_events_position', 'outbox_events', ['position'], unique=True)
    op.execute("ALTER TABLE integration_cursors RENAME COLUMN audit_seq TO position")
    op.execute("UPDATE integration_cursors SET position = 2 * position + 1")
    op.execute("ALTER TABLE integration_deliveries RENAME COLUMN audit_seq TO position")
    op.execute("UPDATE integration_deliveries SET position = 2 * position + 1")


def downgrade() -> None:
    op.execute("UPDATE integration_deliveries SET position = (position - 1) / 2")
    op.execute("ALTER TABLE integration_deliveries RENAME COLUMN position TO audit_seq")
    op.execute("UPDATE integration_cursors SET position = (position - 1) / 2")
    op.execute("ALTER TABLE integration_cursors RENAME COLUMN position TO audit_seq")
    op.drop_index('ix_outbox_events_position', table_name='outbox_events')
    op.execute("ALTER TABLE outbox_events DROP COLUMN position")
