"""Models and migrations agree, and the database itself refuses to rewrite history."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import Flask
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError

import mes.models  # noqa: F401
from mes.db import Base, db
from mes.users import operations as ops
from tests.conftest import BACKENDS, _pg_admin, _pg_url, _worker, base_config
from tests.helpers import SEED


def test_no_pending_autogenerate_diff(app: Flask) -> None:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_schema_is_at_head(app: Flask) -> None:
    from mes.system.readiness import current_revision, head_revision

    assert current_revision() == head_revision() is not None


@pytest.mark.parametrize("statement", [
    "UPDATE audit_entries SET action = 'forged'",
    "DELETE FROM audit_entries",
    "UPDATE audit_tree_nodes SET hash = hash",
    "DELETE FROM audit_checkpoints",
    "DELETE FROM users",
    "DELETE FROM terminals",
])
def test_triggers_refuse_rewriting_history(app: Flask, statement: str) -> None:
    ops.create_user(SEED, "someone", "Some One", {"qa"}, password="Corr3ct-Horse-Battery")
    ops.register_terminal(SEED, "K-9", "kiosk")
    from mes.audit.log import publish_checkpoint

    publish_checkpoint()
    db.session.commit()
    with pytest.raises(DatabaseError, match="refused|never"):
        with db.engine.begin() as conn:
            conn.execute(text(statement))


def test_truncate_is_refused_on_postgresql(app: Flask, backend: str) -> None:
    if backend != "postgresql":
        return  # SQLite has no TRUNCATE statement
    with pytest.raises(DatabaseError, match="refused"):
        with db.engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_entries"))


# A database at revision 0006 holding decimal strings as the code wrote them (to_text):
# places written, a negative limit, a value with six places, a count.
_WRITTEN = {"WO-1": "45.00", "WO-2": "150000", "WO-3": "0.000100"}
_VALUES = {"R-1": "9.80", "R-2": "-3.50", "R-3": "12.345600", "R-4": None, "R-5": "0.0"}


def _insert_decimal_strings(conn, extra_values: dict[str, str]) -> None:
    import sqlalchemy as sa

    from mes.db import UTCDateTime, utcnow
    from mes.quantities import Quantity

    def table(name: str, *cols: str, **typed) -> sa.TableClause:
        return sa.table(name, *(sa.column(c) for c in cols), *(sa.column(c, t) for c, t in typed.items()))

    now = utcnow()
    at = UTCDateTime(timezone=True)
    conn.execute(sa.insert(table("recipe_versions", "id", "recipe_id", "version", "product_code", "status",
                                 "source_name", "source_text", "hash", "created_by", data=sa.JSON(), created_at=at)),
                 [{"id": "MR@1", "recipe_id": "MR", "version": "1", "product_code": "FG", "status": "effective",
                   "source_name": "mr.yaml", "source_text": "", "data": {}, "hash": "0" * 64, "created_at": now,
                   "created_by": "u"}])
    conn.execute(sa.insert(table("work_orders", "id", "item", "quantity", "unit", "recipe_version_id", "status",
                                 "created_by", created_at=at)),
                 [{"id": k, "item": "FG", "quantity": v, "unit": "kg", "recipe_version_id": "MR@1",
                   "status": "in_progress", "created_at": now, "created_by": "u"} for k, v in _WRITTEN.items()])
    conn.execute(sa.insert(table("batches", "id", "work_order_id", "recipe_version_id", "recipe_hash", "batch_size",
                                 "unit", "status", "version", "created_by", control_recipe=sa.JSON(), created_at=at)),
                 [{"id": "B-1", "work_order_id": "WO-1", "recipe_version_id": "MR@1", "control_recipe": {},
                   "recipe_hash": "0" * 64, "batch_size": "45.00", "unit": "kg", "status": "in_progress",
                   "version": 1, "created_at": now, "created_by": "u"}])
    conn.execute(sa.insert(table("batch_steps", "id", "batch_id", "step_id", "seq", "kind", "title", "up_index",
                                 "stage_index", "op_index", "step_index", "state", "attempt", "version")),
                 [{"id": "B-1:s", "batch_id": "B-1", "step_id": "s", "seq": 0, "kind": "numeric", "title": "S",
                   "up_index": 0, "stage_index": 0, "op_index": 0, "step_index": 0, "state": "completed",
                   "attempt": 1, "version": 1}])
    conn.execute(sa.insert(table("step_records", "id", "batch_id", "batch_step_id", "attempt", "kind", "value",
                                 "recorded_by", data=sa.JSON(), flags=sa.JSON(), recorded_at=at)),
                 [{"id": k, "batch_id": "B-1", "batch_step_id": "B-1:s", "attempt": 1,
                   "kind": "value" if v is not None else "confirmation", "value": v, "data": {}, "flags": [],
                   "recorded_at": now, "recorded_by": "u"} for k, v in {**_VALUES, **extra_values}.items()])
    conn.execute(sa.insert(table("material_items", "code", "name", "kind", "base_uom", "active", "created_by",
                                 created_at=at)),
                 [{"code": "API", "name": "API", "kind": "api", "base_uom": "kg", "active": True, "created_at": now,
                   "created_by": "u"}])
    conn.execute(sa.insert(table("material_lots", "id", "item_code", "status", "created_by", created_at=at)),
                 [{"id": lot, "item_code": "API", "status": "released", "created_at": now, "created_by": "u"}
                  for lot in ("L-1", "L-2")])
    conn.execute(sa.insert(table("material_containers", "id", "lot_id", "uom", "storage_uom", created_at=at,
                                 received_qty=Quantity(), remaining_qty=Quantity())),
                 [{"id": "C-1", "lot_id": "L-1", "uom": "kg", "storage_uom": "g", "received_qty": Decimal("50250"),
                   "remaining_qty": Decimal("5250"), "created_at": now}])
    conn.execute(sa.insert(table("material_consumptions", "id", "lot_id", "container_id", "item_code", "uom",
                                 "storage_uom", "batch_id", "conditional", "consumed_by", consumed_at=at,
                                 qty=Quantity(), deducted_qty=Quantity())),
                 [{"id": "K-1", "lot_id": "L-1", "container_id": "C-1", "item_code": "API", "qty": Decimal("45.00"),
                   "uom": "kg", "deducted_qty": Decimal("45000"), "storage_uom": "g", "batch_id": "B-1",
                   "conditional": False, "consumed_at": now, "consumed_by": "u"}])
    conn.execute(sa.insert(table("material_genealogy", "parent_lot_id", "child_lot_id", "batch_id", "uom",
                                 created_at=at, qty=Quantity())),
                 [{"parent_lot_id": "L-1", "child_lot_id": "L-2", "batch_id": "B-1", "qty": Decimal("45.5"),
                   "uom": "kg", "created_at": now}])


@contextmanager
def _database_at_0006(backend: str, tmp_path: Path, extra_values: dict[str, str] | None = None) -> Iterator[Flask]:
    """A new database migrated to revision 0006 holding the decimal strings above (and
    ``extra_values`` as more step records), in an app context; dropped afterwards."""
    from alembic import command

    from mes.app import create_app
    from mes.system.readiness import alembic_config

    if backend == "sqlite":
        url, name = f"sqlite:///{tmp_path / 'old.sqlite3'}", None
    else:
        name = f"mes_mig_{_worker()}"
        with _pg_admin().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = _pg_url(name)
    try:
        app = create_app(base_config(tmp_path, url))
        with app.app_context():
            cfg = alembic_config()
            with db.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "0006")
                _insert_decimal_strings(conn, extra_values or {})
            try:
                yield app
            finally:
                db.session.remove()
                db.engine.dispose()
    finally:
        if name:
            with _pg_admin().connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _upgrade_to_head() -> None:
    from alembic import command

    from mes.system.readiness import alembic_config

    cfg = alembic_config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrading_keeps_decimal_strings_exactly(backend: str, tmp_path: Path) -> None:
    """Upgrading a database whose work orders, batches and step records hold decimal strings
    keeps every value and every written place; the refusal triggers still refuse."""
    from mes.execution.models import Batch, StepRecord, WorkOrder
    from mes.materials.models import Consumption, Container, GenealogyLink
    from mes.materials.operations import container_received
    from mes.quantities import to_text

    with _database_at_0006(backend, tmp_path):
        _upgrade_to_head()
        assert {k: to_text(db.session.get(WorkOrder, k).quantity) for k in _WRITTEN} == _WRITTEN
        assert to_text(db.session.get(Batch, "B-1").batch_size) == "45.00"
        got = {k: db.session.get(StepRecord, k).value for k in _VALUES}
        assert {k: None if v is None else to_text(v) for k, v in got.items()} == _VALUES
        # material quantities were numbers already: they show the fewest places that keep them exact
        assert to_text(container_received(db.session.get(Container, "C-1"))) == "50.25"
        assert to_text(db.session.get(Consumption, "K-1").qty) == "45"
        assert to_text(db.session.execute(select(GenealogyLink)).scalar_one().qty) == "45.5"
        db.session.remove()
        for statement in ("DELETE FROM step_records", "DELETE FROM work_orders", "DELETE FROM batches",
                          "UPDATE material_consumptions SET qty_places = 2",
                          "UPDATE material_genealogy SET qty_places = 2"):
            with pytest.raises(DatabaseError, match="refused"):
                with db.engine.begin() as conn:
                    conn.execute(text(statement))
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_upgrade_that_cannot_keep_a_decimal_exactly_changes_nothing(backend: str, tmp_path: Path) -> None:
    """A recorded value with a seventh decimal place would be rounded by the typed column: the
    upgrade stops with the record named, and the database stays as it was."""
    with _database_at_0006(backend, tmp_path, {"R-9": "1.2345678"}):
        with pytest.raises(RuntimeError, match=r"step_records R-9: '1\.2345678' cannot be kept exactly"):
            _upgrade_to_head()
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0006"
            assert conn.execute(text("SELECT value FROM step_records WHERE id = 'R-9'")).scalar() == "1.2345678"
            assert conn.execute(text("SELECT quantity FROM work_orders WHERE id = 'WO-1'")).scalar() == "45.00"


def _upgrade_to(revision: str) -> None:
    from alembic import command

    from mes.system.readiness import alembic_config

    cfg = alembic_config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _item_triggers() -> list[tuple[str, str]]:
    with db.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                     "AND tbl_name = 'material_items' ORDER BY name"))
        else:
            rows = conn.execute(text("SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
                                     "WHERE tgrelid = 'material_items'::regclass AND NOT tgisinternal ORDER BY tgname"))
        return [tuple(r) for r in rows]


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrading_lets_an_item_be_counted_in_a_plant_unit(backend: str, tmp_path: Path) -> None:
    """Revision 0013 drops the closed list of base units (SQLite rebuilds the table): items and
    the lots, containers and consumptions that reference them are kept, references still hold,
    and the refusal triggers are exactly what they were."""
    from mes.materials.models import Item

    with _database_at_0006(backend, tmp_path):
        _upgrade_to("0012")
        triggers = _item_triggers()
        assert [name for name, _ in triggers] == (["material_items_no_delete"] if backend == "sqlite" else
                                                  ["material_items_no_delete", "material_items_no_truncate"])
        with pytest.raises(DatabaseError, match="base_uom"):
            with db.engine.begin() as conn:
                conn.execute(text("INSERT INTO material_items (code, name, kind, base_uom, active, created_at, "
                                  "created_by) VALUES ('BOX', 'Boxed', 'packaging', 'box', true, "
                                  "CURRENT_TIMESTAMP, 'u')"))
        _upgrade_to("0013")
        assert _item_triggers() == triggers
        assert db.session.get(Item, "API").base_uom == "kg"
        db.session.remove()
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO material_items (code, name, kind, base_uom, active, created_at, "
                              "created_by) VALUES ('BOX', 'Boxed', 'packaging', 'box', true, CURRENT_TIMESTAMP, 'u')"))
            assert conn.execute(text("SELECT COUNT(*) FROM material_lots WHERE item_code = 'API'")).scalar() == 2
            if backend == "sqlite":
                assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
        for statement in ("DELETE FROM material_items WHERE code = 'API'", "DELETE FROM material_items",
                          "UPDATE material_consumptions SET qty_places = 2",
                          "INSERT INTO material_lots (id, item_code, status, created_at, created_by) "
                          "VALUES ('L-9', 'NO-SUCH-ITEM', 'released', CURRENT_TIMESTAMP, 'u')"):
            with pytest.raises(DatabaseError, match="refused|FOREIGN KEY|foreign key"):
                with db.engine.begin() as conn:
                    conn.execute(text(statement))
        db.session.remove()
        _upgrade_to_head()
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
