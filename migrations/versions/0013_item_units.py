"""Items may be counted in a plant's own units: the closed list of base units leaves the database.

``material_items.base_uom`` had a CHECK constraint naming the shipped material units (mg, g,
kg, mL, L, pcs), so a unit a plant adds in its units file (``MES_UNITS_FILE``, docs/units.md)
could not be an item's base unit. The units are the registry's business, checked once in the
service layer (:func:`mes.materials.lots.create_item`); the constraint is dropped.

PostgreSQL drops the constraint in place. SQLite cannot drop a CHECK constraint, so the table
is rebuilt inside this migration's transaction: its rows are copied aside, the table is
dropped and created again without the constraint, the rows are copied back and every trigger
and index it had is created again from the SQL text SQLite kept for it (so the refusal
triggers are exactly as they were). ``PRAGMA foreign_keys = OFF`` does nothing inside a
transaction, so foreign keys stay on and are deferred instead (``PRAGMA defer_foreign_keys``):
the lots that reference an item are checked at commit, when every item is back; a row lost on
the way would fail the commit and change nothing. Dropping a table deletes its rows without
firing triggers, so the refusal of DELETE is not in the way.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 03:50:00
"""
import sqlalchemy as sa
from alembic import op

import mes.db

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

_COLUMNS = 'code, name, kind, base_uom, shelf_life_days, retest_days, active, created_at, created_by'


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'sqlite':
        op.drop_constraint(op.f('ck_material_items_base_uom'), 'material_items', type_='check')
        return
    kept = bind.execute(sa.text("SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'material_items' "
                                "AND type IN ('trigger', 'index') AND sql IS NOT NULL ORDER BY type, name")).all()
    before = bind.execute(sa.text('SELECT COUNT(*) FROM material_items')).scalar_one()
    op.execute('PRAGMA defer_foreign_keys = ON')
    op.execute(f'CREATE TABLE material_items__old AS SELECT {_COLUMNS} FROM material_items')
    op.execute('DROP TABLE material_items')
    op.create_table('material_items',
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('base_uom', sa.String(length=8), nullable=False),
    sa.Column('shelf_life_days', sa.Integer(), nullable=True),
    sa.Column('retest_days', sa.Integer(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', mes.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.CheckConstraint("kind IN ('raw_material', 'api', 'excipient', 'packaging', 'intermediate', 'finished_good')",
                       name=op.f('ck_material_items_kind')),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_material_items'))
    )
    op.execute(f'INSERT INTO material_items ({_COLUMNS}) SELECT {_COLUMNS} FROM material_items__old')
    op.execute('DROP TABLE material_items__old')
    for _type, _name, sql in kept:
        op.execute(sql)
    after = bind.execute(sa.text('SELECT COUNT(*) FROM material_items')).scalar_one()
    if after != before:
        raise RuntimeError(f"material_items had {before} rows and would have {after}; nothing was changed")
    broken = bind.execute(sa.text('PRAGMA foreign_key_check')).all()
    if broken:
        raise RuntimeError(f"rebuilding material_items would break references {broken}; nothing was changed")


def downgrade() -> None:
    raise RuntimeError("Material records are records; this migration is never downgraded.")
