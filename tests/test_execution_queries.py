"""mes.execution.queries: the read-only lookups the kiosk screens use (lines with work,
dispatched work orders, batches on a line, a container by its label), on SQLite and
PostgreSQL. They return what the records say and write nothing."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from flask import Flask
from sqlalchemy import func, select

from mes.audit.models import AuditEntry
from mes.db import db
from mes.execution import operations as ex
from mes.execution import queries as q
from mes.execution import recipes_store as store
from mes.execution.models import BatchStatus
from tests import execution_helpers as eh


@pytest.fixture
def world(app: Flask, monkeypatch: pytest.MonkeyPatch) -> eh.World:
    return eh.make_world(monkeypatch)


@pytest.fixture
def recipe(world: eh.World) -> str:
    rv = eh.effective_recipe(world, eh.PACK_RECIPE, "pack.yaml")
    eh.stock(world, store.master_of(store.get_version(rv)))
    return rv


def order(world: eh.World, rv: str, *, line: str | None = None, due: date | None = None, release: bool = True) -> str:
    sup = world.actor("supervisor")
    wo = ex.create_work_order(sup, "FG-PCM500-PACK", "10.000", "kg", rv, due_date=due, erp_ref=f"ERP-Q-{world.key()}")
    if release:
        ex.release_work_order(sup, wo.id)
    if line:
        ex.dispatch_work_order(sup, wo.id, line)
    return wo.id


def audit_count() -> int:
    return int(db.session.execute(select(func.count()).select_from(AuditEntry)).scalar_one())


def test_dispatched_orders_of_a_line_only_not_started_by_due_date(world: eh.World, recipe: str) -> None:
    today = date.today()
    late = order(world, recipe, line="LINE-1", due=today + timedelta(days=5))
    soon = order(world, recipe, line="LINE-1", due=today + timedelta(days=1))
    started = order(world, recipe, line="LINE-1", due=today)
    ex.start_batch(world.actor("operator"), started)
    order(world, recipe, line="LINE-2", due=today)     # another line
    order(world, recipe, release=True)                 # released, not dispatched
    order(world, recipe, release=False)                # created only
    assert [wo.id for wo in q.dispatched_orders("LINE-1")] == [soon, late]
    assert q.dispatched_orders("LINE-9") == []


def test_active_lines_have_dispatched_work_or_a_running_batch(world: eh.World, recipe: str) -> None:
    assert q.active_lines() == set()
    order(world, recipe, line="LINE-2")
    running = order(world, recipe, line="LINE-1")
    ex.start_batch(world.actor("operator"), running)  # the order is in progress, its batch running
    cancelled = order(world, recipe, line="LINE-3")
    ex.cancel_work_order(world.actor("supervisor"), cancelled, "no longer needed")
    order(world, recipe)                               # no line
    assert q.active_lines() == {"LINE-1", "LINE-2"}


def test_batches_on_a_line_by_status_oldest_first(world: eh.World, recipe: str) -> None:
    first = ex.start_batch(world.actor("operator"), order(world, recipe, line="LINE-1")).id
    world.clock.advance(60)
    second = ex.start_batch(world.actor("operator"), order(world, recipe, line="LINE-1")).id
    assert [b.id for b in q.batches_on_line("LINE-1")] == [first, second]
    assert all(b.status == BatchStatus.IN_PROGRESS.value for b in q.batches_on_line("LINE-1"))
    assert q.batches_on_line("LINE-1", (BatchStatus.COMPLETED.value,)) == []
    assert [b.id for b in q.batches_on_line("LINE-1", [BatchStatus.IN_PROGRESS.value, BatchStatus.COMPLETED.value])] \
        == [first, second]
    assert q.batches_on_line("LINE-2") == []


def test_container_by_label(world: eh.World, recipe: str) -> None:
    from mes.materials import operations as mat

    lot = next(iter(world.lots.values()))[0]
    containers = [c.id for c in mat.containers_of(lot)]
    found = q.container_by_label(containers[1])
    assert found is not None and found.id == containers[1] and found.lot_id == lot
    assert q.container_by_label(f"  {containers[0]}\n").id == containers[0]  # as a scanner sends it
    assert q.container_by_label(lot) is None  # a lot label is not a container
    assert q.container_by_label("NO-SUCH-LABEL") is None
    assert q.container_by_label("") is None and q.container_by_label("   ") is None


def test_queries_write_nothing(world: eh.World, recipe: str) -> None:
    ex.start_batch(world.actor("operator"), order(world, recipe, line="LINE-1"))
    order(world, recipe, line="LINE-1")
    db.session.commit()
    before = audit_count()
    q.active_lines(), q.dispatched_orders("LINE-1"), q.batches_on_line("LINE-1"), q.container_by_label("X")
    assert not db.session.new and not db.session.dirty and not db.session.deleted
    assert audit_count() == before
