"""Corrections recompute what depended on the corrected value: a later calculation gets a
new record (both values stay, the eBR and the exceptions list show the recomputation), a
calculation of a calculation follows, and a result that now misses its limits raises a
deviation. SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import pytest
from flask import Flask
from sqlalchemy import func, select

from mes.audit.models import AuditEntry
from mes.db import db
from mes.errors import ValidationFailed
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.quantities import to_text
from tests.execution_helpers import do_step, effective_recipe, make_world, run_until, start, stock

RECIPE = """\
format: mes.master-recipe/v1
id: MR-CORR
version: 1
product: {code: FG-CORR, name: Correction product}
batch_size: {quantity: "10.000", unit: kg, minimum: "1.000", maximum: "20.000"}
bill_of_materials:
  - {item: RM-CORR, name: Raw, role: ingredient, quantity: "10.000", unit: kg, tolerance: {percent: "1.0"}}
procedure:
  - id: up1
    title: Make
    operations:
      - id: op1
        title: Measure
        steps:
          - {id: x1, kind: identify, title: Identify, instruction: Scan., item: RM-CORR}
          - {id: mass_in, kind: numeric, title: Mass in, instruction: Enter., unit: kg, precision: 2, low: "5", high: "20"}
          - {id: mass_out, kind: numeric, title: Mass out, instruction: Enter., unit: kg, precision: 2, low: "5", high: "20"}
          - {id: yield_pct, kind: calculation, title: Yield, instruction: Computed., formula: mass_out / mass_in * 100,
             unit: "%", precision: 1, low: "95.0", high: "101.0"}
          - {id: loss_pct, kind: calculation, title: Loss, instruction: Computed., formula: 100 - yield_pct,
             unit: "%", precision: 1, low: "0.0", high: "5.0"}
          - {id: note, kind: instruction, title: Note, instruction: Go on.}
          - {id: out, kind: produce_output, title: Out, instruction: Weigh., item: FG-CORR, quantity: "10.000",
             unit: kg, yield_low: "90.0", yield_high: "101.0"}
"""


def _current(batch_id: str, step_id: str) -> ex.StepRecord:
    return next(r for r in ex.records_of(batch_id)
                if r.batch_step_id == f"{batch_id}:{step_id}" and r.kind == "value" and r.superseded_by is None)


def test_correcting_an_input_recomputes_the_calculations_that_used_it(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE, "corr.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    values = {"mass_in": {"value": "10.00"}, "mass_out": {"value": "9.80"}}
    run_until(world, batch_id, stop_before="note", overrides=values)
    assert to_text(_current(batch_id, "yield_pct").value) == "98.0" and to_text(_current(batch_id, "loss_pct").value) == "2.0"
    old_yield, old_loss = _current(batch_id, "yield_pct"), _current(batch_id, "loss_pct")

    mass_out = _current(batch_id, "mass_out")
    world.clock.advance(60)
    ex.correct_value(world.actor("operator"), batch_id, mass_out.id, "9.90", "misread the display")
    new_yield, new_loss = _current(batch_id, "yield_pct"), _current(batch_id, "loss_pct")
    assert (to_text(new_yield.value), to_text(new_loss.value)) == ("99.0", "1.0")
    assert new_yield.corrects == old_yield.id and new_loss.corrects == old_loss.id
    assert "recomputed" in new_yield.flags and "misread the display" in new_yield.reason
    assert {k: Decimal(v) for k, v in new_yield.data["inputs"].items()} == {"mass_out": Decimal("9.9"),
                                                                             "mass_in": Decimal(10)}
    db.session.expire_all()
    assert db.session.get(ex.StepRecord, old_yield.id).superseded_by == new_yield.id  # both stay
    assert ex.get_step(batch_id, "yield_pct").result["value"] == "99.0"
    kinds = [(e["type"], e["step"]) for e in ex.exceptions(batch_id)]
    assert ("correction", "mass_out") in kinds
    assert ("recomputation", "yield_pct") in kinds and ("recomputation", "loss_pct") in kinds
    # the eBR shows both values of the calculation
    step = next(s for s in ex.batch_json(ex.get_batch(batch_id))["steps"] if s["id"] == "yield_pct")
    assert [r["value"] for r in step["records"]] == ["98.0", "99.0"]
    actions = db.session.execute(select(AuditEntry.action).where(AuditEntry.batch_id == batch_id)).scalars().all()
    assert actions.count("batch.value.recomputed") == 2

    # a correction that pushes a calculation out of its limits raises a blocking deviation
    ex.correct_value(world.actor("operator"), batch_id, _current(batch_id, "mass_out").id, "8.00",
                     "wrong container weighed")
    assert to_text(_current(batch_id, "yield_pct").value) == "80.0"
    devs = [d for d in ex.deviations_of(batch_id) if d.category == "limits_missed"]
    assert {d.batch_step_id.split(":")[1] for d in devs} == {"yield_pct", "loss_pct"}
    assert all(d.severity == "major" and d.status == ex.DeviationStatus.OPEN.value for d in devs)
    assert ex.get_step(batch_id, "note").state == "blocked"
    with pytest.raises(ex.StepBlocked):
        do_step(world, batch_id, "note")


def test_a_correction_without_a_reason_is_refused(app: Flask, monkeypatch) -> None:
    """Annex 11 §8.2: a changed value carries its reason; without one nothing changes."""
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE, "corr.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    run_until(world, batch_id, stop_before="note", overrides={"mass_in": {"value": "10.00"}, "mass_out": {"value": "9.80"}})
    old = _current(batch_id, "mass_out")
    entries = db.session.execute(select(func.count()).select_from(AuditEntry)).scalar()
    for reason in ("", "   "):
        with pytest.raises(ValidationFailed, match="reason for the correction is required") as refused:
            ex.correct_value(world.actor("operator"), batch_id, old.id, "9.90", reason)
        assert refused.value.extra.get("field") == "reason"
        db.session.rollback()
    assert _current(batch_id, "mass_out").id == old.id and to_text(old.value) == "9.80"
    assert db.session.execute(select(func.count()).select_from(AuditEntry)).scalar() == entries


def test_a_correction_that_changes_no_result_records_no_recomputation(app: Flask, monkeypatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE, "corr.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    run_until(world, batch_id, stop_before="note",
              overrides={"mass_in": {"value": "20.00"}, "mass_out": {"value": "19.60"}})
    before = _current(batch_id, "yield_pct")
    ex.correct_value(world.actor("operator"), batch_id, _current(batch_id, "mass_out").id, "19.61", "last digit")
    assert _current(batch_id, "yield_pct").id == before.id and to_text(before.value) == "98.0"  # 98.05 rounds half-even
    assert [e["type"] for e in ex.exceptions(batch_id)] == ["correction"]


YIELD_RECIPE = """\
format: mes.master-recipe/v1
id: MR-CORR-YIELD
version: 1
product: {code: FG-CORY, name: Correction yield product}
batch_size: {quantity: "10.000", unit: kg, minimum: "1.000", maximum: "20.000"}
bill_of_materials:
  - {item: RM-CORY, name: Raw, role: ingredient, quantity: "10.000", unit: kg, tolerance: {percent: "1.0"}}
procedure:
  - id: up1
    title: Make
    operations:
      - id: op1
        title: Measure
        steps:
          - {id: x1, kind: identify, title: Identify, instruction: Scan., item: RM-CORY}
          - {id: w1, kind: weigh, title: Weigh, instruction: Weigh., item: RM-CORY, scale: {readability: "0.01", unit: kg}}
          - {id: charged, kind: numeric, title: Mass charged, instruction: Enter., unit: kg, precision: 2,
             low: "5", high: "20"}
          - {id: theo, kind: calculation, title: Theoretical output, instruction: Computed., formula: charged * 0.98,
             unit: kg, precision: 2, low: "5", high: "20"}
          - {id: out, kind: produce_output, title: Out, instruction: Weigh., item: FG-CORY, quantity: "10.000",
             unit: kg, yield_low: "95.0", yield_high: "101.0", theoretical_from: theo}
"""


def test_correcting_the_theoretical_quantity_recomputes_the_yield(app: Flask, monkeypatch) -> None:
    """The produced quantity is what was weighed and stays; the yield against the corrected
    theoretical is recorded again (both records stay), and a yield now out of limits raises
    a deviation."""
    world = make_world(monkeypatch)
    rv = effective_recipe(world, YIELD_RECIPE, "cory.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    run_until(world, batch_id, overrides={"charged": {"value": "10.00"}, "out": {"quantity": "9.700", "unit": "kg"}})
    first = _current(batch_id, "out")
    assert (to_text(first.value), first.data["theoretical"], first.data["yield"]) == ("9.700", "9.80", "99.0")
    charged = _current(batch_id, "charged")
    world.clock.advance(60)
    ex.correct_value(world.actor("operator"), batch_id, charged.id, "10.20", "typed the wrong figure")
    assert to_text(_current(batch_id, "theo").value) == "10.00"
    second = _current(batch_id, "out")
    assert second.corrects == first.id and to_text(second.value) == "9.700" and "recomputed" in second.flags
    assert (second.data["theoretical"], second.data["yield"]) == ("10.00", "97.0")
    assert "typed the wrong figure" in second.reason
    db.session.expire_all()
    assert db.session.get(ex.StepRecord, first.id).superseded_by == second.id
    assert ex.get_step(batch_id, "out").result["yield"] == "97.0"
    assert ("recomputation", "out") in [(e["type"], e["step"]) for e in ex.exceptions(batch_id)]
    assert not [d for d in ex.deviations_of(batch_id) if d.category == "yield_out_of_limits"]

    ex.correct_value(world.actor("operator"), batch_id, _current(batch_id, "charged").id, "11.00", "read it again")
    third = _current(batch_id, "out")
    assert third.data["yield"] == "90.0" and "out_of_limits" in third.flags
    devs = [d for d in ex.deviations_of(batch_id) if d.category == "yield_out_of_limits"]
    assert len(devs) == 1 and devs[0].severity == "major" and devs[0].status == ex.DeviationStatus.OPEN.value
    assert devs[0].batch_step_id == f"{batch_id}:out"
