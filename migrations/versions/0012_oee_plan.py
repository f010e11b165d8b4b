"""OEE: the downtime reason tree, line calendars (with targets and thresholds), shift closures,
and a rework counter beside scrap on counter samples.

All three tables are append-only like the rest of OEE: the database refuses UPDATE,
DELETE (and on PostgreSQL TRUNCATE) on them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 02:30:00
"""
import sqlalchemy as sa
from alembic import op

import mes.db
import mes.quantities

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

CATEGORIES = "('breakdown', 'setup', 'minor_stop', 'planned_break', 'planned_maintenance', 'no_order')"


def upgrade() -> None:
    # rework beside scrap: plain ADD COLUMN (no table rebuild, so the append-only triggers stay)
    op.add_column('oee_counter_samples', sa.Column('reworked', sa.BigInteger(), nullable=True))
    op.add_column('oee_counter_samples', sa.Column('reworked_delta', sa.BigInteger(), server_default=sa.text('0'),
                                                   nullable=False))
    op.create_table('oee_reasons',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=100), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('plc_codes', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('recorded_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('recorded_by', sa.String(length=100), nullable=False),
    sa.CheckConstraint(f"category IN {CATEGORIES}", name=op.f('ck_oee_reasons_category')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oee_reasons'))
    )
    with op.batch_alter_table('oee_reasons', schema=None) as batch_op:
        batch_op.create_index('ix_oee_reasons_code_recorded', ['code', 'recorded_at'], unique=False)

    op.create_table('oee_line_calendars',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('line_id', sa.String(length=64), nullable=False),
    sa.Column('effective_from', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('shifts', sa.JSON(), nullable=False),
    sa.Column('holidays', sa.JSON(), nullable=False),
    sa.Column('maintenance', sa.JSON(), nullable=False),
    sa.Column('oee_target', mes.quantities.Quantity(), nullable=True),
    sa.Column('minor_stop_s', sa.Integer(), nullable=False),
    sa.Column('startup_s', sa.Integer(), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('recorded_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('recorded_by', sa.String(length=100), nullable=False),
    sa.CheckConstraint('minor_stop_s >= 0 AND startup_s >= 0',
                       name=op.f('ck_oee_line_calendars_thresholds_not_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oee_line_calendars'))
    )
    with op.batch_alter_table('oee_line_calendars', schema=None) as batch_op:
        batch_op.create_index('ix_oee_line_calendars_line_from', ['line_id', 'effective_from'], unique=False)

    op.create_table('oee_shift_closures',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('line_id', sa.String(length=64), nullable=False),
    sa.Column('shift_name', sa.String(length=64), nullable=False),
    sa.Column('shift_start', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('shift_end', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('figures', sa.JSON(), nullable=False),
    sa.Column('closed_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('closed_by', sa.String(length=100), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oee_shift_closures')),
    sa.UniqueConstraint('line_id', 'shift_start', name='uq_oee_shift_closures_line_id_shift_start')
    )
    for table in ('oee_reasons', 'oee_line_calendars', 'oee_shift_closures'):
        mes.db.install_refusal_triggers(op, table, immutable=True)


def downgrade() -> None:
    raise RuntimeError("Reason trees, line calendars and shift closures are records; this migration is never downgraded.")
