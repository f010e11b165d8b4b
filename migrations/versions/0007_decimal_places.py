"""Decimals in typed columns with their places as written.

Work-order quantities, batch sizes and step-record values were decimal strings; they become
exact :class:`mes.quantities.Quantity` columns (NUMERIC(18, 6) on PostgreSQL, integer
millionths on SQLite) with a small integer column beside each saying how many decimals were
written, so ``45.00`` reads back as ``45.00``. Every existing string is read, checked to fit
exactly (a value that would not is refused with its record named, never rounded) and
written back with its places: nothing changes value or loses a written zero.

Material quantities (container stock, consumptions, genealogy links) were already typed
but kept no places; they get the places column, backfilled with the fewest decimals that
show the stored value exactly (what was written is not in those tables).

SQLite alters no table by copying it (work orders and batches are referenced by foreign
keys, and the refusal triggers would go with the old table): the new columns are added,
filled, the string column dropped and the new one renamed. A places column that is
required defaults to 0 (a row written without it shows the fewest places that keep its
value exact: :data:`mes.quantities.PLACES_DEFAULT`).
Consumptions and genealogy links refuse UPDATE; their triggers are lifted for the
backfill only, inside this migration's transaction.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 02:20:00
"""
from decimal import Decimal, InvalidOperation

from alembic import op
import sqlalchemy as sa
import mes.quantities as q


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# table, key column, decimal string column (now typed), places column, nullable
_STRINGS = (
    ('work_orders', 'id', 'quantity', 'quantity_places', False),
    ('batches', 'id', 'batch_size', 'batch_size_places', False),
    ('step_records', 'id', 'value', 'value_places', True),
)
# table, key column, typed column, places column
_TYPED = (
    ('material_containers', 'id', 'received_qty', 'received_places'),
    ('material_consumptions', 'id', 'qty', 'qty_places'),
    ('material_genealogy', 'id', 'qty', 'qty_places'),
)
_IMMUTABLE = {'material_consumptions', 'material_genealogy'}


def _parse(table: str, key: object, text: object) -> Decimal:
    """A stored decimal string as the exact Decimal it was written as; refused otherwise."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise RuntimeError(f"{table} {key}: {text!r} is not a decimal number; fix the record before upgrading")
    try:
        q.storable(value, '')
    except q.QuantityError as exc:
        raise RuntimeError(f"{table} {key}: {text!r} cannot be kept exactly ({exc}); nothing was changed") from None
    return value


def _least_places(value: Decimal) -> int:
    return q.decimal_places(q.with_places(value, 0))


def _lift_update_refusal(table: str, sqlite: bool) -> None:
    if sqlite:
        op.execute(f'DROP TRIGGER IF EXISTS {table}_no_update')
    else:
        op.execute(f'ALTER TABLE {table} DISABLE TRIGGER {table}_immutable')


def _restore_update_refusal(table: str, sqlite: bool) -> None:
    if sqlite:
        op.execute(f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} BEGIN "
                   f"SELECT RAISE(ABORT, 'mes: UPDATE on {table} is refused: records are never changed or removed'); END")
    else:
        op.execute(f'ALTER TABLE {table} ENABLE TRIGGER {table}_immutable')


def _fill(table: str, key: str, column: str, places: str, rows: list[tuple[object, Decimal | None]]) -> None:
    """Write each row's exact value and places through the Quantity type (dialect-correct)."""
    if not rows:
        return
    t = sa.table(table, sa.column(key), sa.column(column, q.Quantity()), sa.column(places, sa.SmallInteger()))
    stmt = t.update().where(t.c[key] == sa.bindparam('k')).values(
        {column: sa.bindparam('v', type_=q.Quantity()), places: sa.bindparam('p')})
    op.get_bind().execute(stmt, [
        {'k': k, 'v': v, 'p': None if v is None else q.decimal_places(v)} for k, v in rows])


def _places_only(table: str, key: str, places: str, rows: list[tuple[object, int]]) -> None:
    if not rows:
        return
    t = sa.table(table, sa.column(key), sa.column(places, sa.SmallInteger()))
    op.get_bind().execute(t.update().where(t.c[key] == sa.bindparam('k')).values({places: sa.bindparam('p')}),
                          [{'k': k, 'p': p} for k, p in rows])


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == 'sqlite'

    for table, key, column, places, nullable in _STRINGS:
        raw = bind.execute(sa.text(f'SELECT {key}, {column} FROM {table}')).all()
        rows = [(k, None if v is None else _parse(table, k, v)) for k, v in raw]
        if any(v is None for _, v in rows) and not nullable:
            raise RuntimeError(f"{table} has a row without {column}; fix it before upgrading")
        null = 'NULL' if nullable else 'NOT NULL DEFAULT 0'
        if sqlite:
            op.execute(f'ALTER TABLE {table} ADD COLUMN {column}__new BIGINT {null}')
            op.execute(f'ALTER TABLE {table} ADD COLUMN {places} SMALLINT {null}')
            op.execute(f'ALTER TABLE {table} DROP COLUMN {column}')
            op.execute(f'ALTER TABLE {table} RENAME COLUMN {column}__new TO {column}')
        else:
            # every value was checked above to fit NUMERIC(18, 6) exactly: the cast cannot round
            op.execute(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE NUMERIC(18, 6) USING {column}::numeric(18, 6)')
            op.execute(f'ALTER TABLE {table} ADD COLUMN {places} SMALLINT {null}')
        _fill(table, key, column, places, rows)

    for table, key, column, places in _TYPED:
        value = q.Quantity()
        t = sa.table(table, sa.column(key), sa.column(column, value),
                     *([sa.column('uom'), sa.column('storage_uom')] if table == 'material_containers' else []))
        if table == 'material_containers':
            raw = bind.execute(sa.select(t.c[key], t.c[column], t.c.uom, t.c.storage_uom)).all()
            rows = [(k, _least_places(q.convert(v, storage, uom))) for k, v, uom, storage in raw]
        else:
            raw = bind.execute(sa.select(t.c[key], t.c[column])).all()
            rows = [(k, _least_places(v)) for k, v in raw]
        op.execute(f'ALTER TABLE {table} ADD COLUMN {places} SMALLINT NOT NULL DEFAULT 0')
        if table in _IMMUTABLE:
            _lift_update_refusal(table, sqlite)
        _places_only(table, key, places, rows)
        if table in _IMMUTABLE:
            _restore_update_refusal(table, sqlite)


def downgrade() -> None:
    raise RuntimeError("Batch records and material records are records; this migration is never downgraded.")
