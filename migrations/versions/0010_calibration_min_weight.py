"""Scale minimum weight registered with a calibration (USP <41> / Ph. Eur. 2.1.7; issue 14).

Two nullable columns on the immutable calibration records: added in place (ALTER TABLE
ADD COLUMN keeps the refusal triggers; a batch copy on SQLite would drop them).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 02:40:00.000000
"""
from alembic import op
import sqlalchemy as sa
import mes.quantities


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('equipment_calibrations', sa.Column('min_weight', mes.quantities.Quantity(), nullable=True))
    op.add_column('equipment_calibrations', sa.Column('min_weight_uom', sa.String(length=8), nullable=True))


def downgrade() -> None:
    raise RuntimeError("Calibration records are records; this migration is never downgraded.")
