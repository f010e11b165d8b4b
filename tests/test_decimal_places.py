"""Decimals keep the places they were written with (issues 13 and 14): stored in typed
columns (a value column and a places column), read back as written on SQLite and
PostgreSQL, and shown so in JSON, audit entries, events, the trace and lot stock."""

from __future__ import annotations

import json
from decimal import Decimal

from flask import Flask
from sqlalchemy import select, text

from mes.audit.log import Actor
from mes.audit.models import AuditEntry
from mes.db import db
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.execution.models import Batch, StepRecord, WorkOrder
from mes.materials import operations as ops
from mes.materials.cli import render_tree
from mes.materials.models import Consumption, Container, GenealogyLink
from mes.quantities import to_text, with_places
from tests.execution_helpers import effective_recipe, make_world, run_until, start, stock
from tests.helpers import release_lot_as_qa
from tests.test_corrections import RECIPE

QA = Actor("qa1", "QA One", "qa", "QA-WS-01")
SUP = Actor("supervisor1", "Supervisor One", "supervisor", "QA-WS-01")
OP = Actor("operator1", "Operator One", "operator", "KIOSK-01")


def _exact(value: Decimal) -> tuple[str, int]:
    """The value as written: its text and its exponent (``45.00`` is not ``45``)."""
    return to_text(value), int(value.as_tuple().exponent)


def _after(action: str) -> list[dict]:
    rows = db.session.execute(select(AuditEntry.entry_bytes).where(AuditEntry.action == action)
                              .order_by(AuditEntry.seq)).scalars()
    return [json.loads(bytes(b))["after"] for b in rows]


def test_with_places_pads_to_the_places_written_and_never_rounds() -> None:
    assert _exact(with_places(Decimal("45.000000"), 2)) == ("45.00", -2)
    assert _exact(with_places(Decimal("37.655000"), 2)) == ("37.655", -3)  # exact beats written: never rounded
    assert _exact(with_places(Decimal("50000.000000"), 0)) == ("50000", 0)
    assert _exact(with_places(Decimal("-0.000"), 1)) == ("0.0", -1)


def test_a_decimal_keeps_its_places_as_written_in_storage(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE, "places.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    run_until(world, batch_id, stop_before="note", overrides={"mass_in": {"value": "10.00"},
                                                               "mass_out": {"value": "9.80"}})
    db.session.commit()
    db.session.expire_all()
    batch = db.session.get(Batch, batch_id)
    wo = db.session.get(WorkOrder, batch.work_order_id)
    assert _exact(wo.quantity) == ("10.000", -3) and _exact(batch.batch_size) == ("10.000", -3)
    values = {r.batch_step_id.split(":")[1]: r.value for r in ex.records_of(batch_id) if r.kind == "value"}
    assert {k: _exact(v) for k, v in values.items()} == {
        "mass_in": ("10.00", -2), "mass_out": ("9.80", -2), "yield_pct": ("98.0", -1), "loss_pct": ("2.0", -1)}
    assert {k: _exact(v) for k, v in ex.values_of(batch_id).items()} == {
        "mass_in": ("10.00", -2), "mass_out": ("9.80", -2), "yield_pct": ("98.0", -1), "loss_pct": ("2.0", -1)}
    # the columns are typed: numbers in the value column, the places beside them
    row = db.session.execute(text("SELECT quantity, quantity_places FROM work_orders WHERE id = :id"),
                             {"id": wo.id}).one()
    assert not isinstance(row[0], str) and row[1] == 3
    # what the API and the audit log show is the text as written
    assert ex.work_order_json(wo)["quantity"] == {"value": "10.000", "uom": "kg"}
    assert _after("work_order.created")[-1]["quantity"] == "10.000"
    assert _after("batch.started")[-1]["batch_size"] == "10.000"
    # a step record without a value (a confirmation, a signature) has none, not a zero
    assert any(r.value is None and r.value_places is None for r in ex.records_of(batch_id))


def _receive(lot_id: str, item: str, containers: list[tuple[str, str]]) -> None:
    ops.receive_lot(SUP, item, [ops.ContainerIn(qty, uom, f"{lot_id}-C{i + 1}") for i, (qty, uom) in enumerate(containers)],
                    lot_id=lot_id)
    release_lot_as_qa(lot_id, "CoA reviewed")


def test_material_quantities_keep_their_places_as_written(app: Flask) -> None:
    ops.create_item(SUP, "API-PARA", "Paracetamol", "kg", "api")
    ops.create_item(SUP, "INT-BLEND", "Paracetamol blend", "kg", "intermediate")
    _receive("L-API", "API-PARA", [("50.00", "kg"), ("20.0", "kg")])
    lot = ops.lot_json(ops.get_lot("L-API"), detail=True)
    assert lot["remaining"] == {"value": "70.00", "uom": "kg"}  # 50.00 + 20.0: the places written, not 70
    assert [(c["received"], c["remaining"]) for c in lot["containers"]] == [
        ({"value": "50.00", "uom": "kg"}, {"value": "50.00", "uom": "kg"}),
        ({"value": "20.0", "uom": "kg"}, {"value": "20.0", "uom": "kg"})]
    assert _after("material.lot.received")[-1]["containers"][0]["received"] == {"value": "50.00", "uom": "kg"}

    first = ops.consume(OP, "L-API", "L-API-C1", "45.00", "kg", "B-1", "S-1", "WO-1")
    ops.consume(OP, "L-API", "L-API-C2", "5.0", "kg", "B-1", "S-1", "WO-1")
    db.session.expire_all()
    assert _exact(db.session.get(Consumption, first.id).qty) == ("45.00", -2)
    assert ops.consumption_json(db.session.get(Consumption, first.id))["qty"] == {"value": "45.00", "uom": "kg"}
    assert _after("material.consumed")[0]["remaining"] == {"value": "5.00", "uom": "kg"}
    assert ops.lot_remaining("L-API") == (Decimal("20.00"), "kg") and to_text(ops.lot_remaining("L-API")[0]) == "20.00"
    assert to_text(ops.container_remaining(db.session.get(Container, "L-API-C1"))) == "5.00"

    ops.produce(SUP, "INT-BLEND", "L-BLEND", "49.80", "kg", "B-1", work_order_id="WO-1")
    db.session.expire_all()
    link = db.session.execute(select(GenealogyLink).where(GenealogyLink.child_lot_id == "L-BLEND")).scalar_one()
    assert _exact(link.qty) == ("50.00", -2)  # 45.00 + 5.0, summed as written
    assert _after("material.lot.produced")[-1]["inputs"] == [{"lot": "L-API", "qty": {"value": "50.00", "uom": "kg"}}]
    trace = ops.trace_backward("L-BLEND")
    assert [x["qty"] for x in trace.as_json()["links"]] == [{"value": "50.00", "uom": "kg"}]
    assert trace.tree()["children"][0]["qty"] == {"value": "50.00", "uom": "kg"}
    assert "50.00 kg used in batch B-1" in render_tree(trace)
    assert ops.lot_json(ops.get_lot("L-BLEND"), detail=True)["remaining"] == {"value": "49.80", "uom": "kg"}


def test_a_reversal_gives_back_the_quantity_as_written(app: Flask) -> None:
    ops.create_item(SUP, "API-PARA", "Paracetamol", "kg", "api")
    _receive("L-API", "API-PARA", [("50.00", "kg")])
    used = ops.consume(OP, "L-API", "L-API-C1", "12.50", "kg", "B-1")
    ops.reverse_consumption(SUP, used.id, "wrong vessel")
    after = _after("material.consumption.reversed")[-1]
    assert after["qty"] == {"value": "12.50", "uom": "kg"} and after["remaining"] == {"value": "50.00", "uom": "kg"}


def test_step_record_values_are_kept_as_numbers_in_the_database(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE, "places.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    run_until(world, batch_id, stop_before="mass_out", overrides={"mass_in": {"value": "12.50"}})
    db.session.commit()
    above = db.session.execute(select(StepRecord.id).where(StepRecord.batch_id == batch_id,
                                                           StepRecord.value > Decimal("12.4"))).scalars().all()
    assert len(above) == 1  # compared as a number in SQL, not as text
