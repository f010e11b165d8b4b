"""Models and migrations agree, and the database itself refuses to rewrite history."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import Flask
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

import mes.models  # noqa: F401
from mes.db import Base, db
from mes.users import operations as ops
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
