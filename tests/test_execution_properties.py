"""Property tests of the step state machine: whatever operators and QA do, in whatever
order, no step completes before its predecessors or twice, a blocked step never
completes, and no batch is released with open steps or unresolved deviations."""

from __future__ import annotations

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mes.db import db
from mes.errors import MESError
from mes.execution import operations as ex
from tests.execution_helpers import effective_recipe, make_world, start

SMALL = """\
format: mes.master-recipe/v1
id: MR-PROP
version: 1
product: {code: FG-PROP, name: Property test product}
batch_size: {quantity: "10.000", unit: kg, minimum: "1.000", maximum: "20.000"}
bill_of_materials:
  - {item: RM-PROP, name: Raw, role: ingredient, quantity: "10.000", unit: kg, tolerance: {percent: "1.0"}}
procedure:
  - id: up1
    title: First
    operations:
      - id: op_a
        title: A
        steps:
          - {id: a1, kind: instruction, title: A1, instruction: Do A1.}
          - {id: a2, kind: numeric, title: A2, instruction: Enter A2., unit: kg, precision: 1, low: "1.0", high: "2.0"}
      - id: op_b
        title: B
        parallel_with: [op_a]
        steps:
          - {id: b1, kind: instruction, title: B1, instruction: Do B1.}
          - {id: b2, kind: instruction, title: B2, instruction: Do B2.}
      - id: op_c
        title: C
        steps:
          - {id: c1, kind: numeric, title: C1, instruction: Enter C1., unit: kg, precision: 1, low: "1.0", high: "2.0"}
  - id: up2
    title: Second
    operations:
      - id: op_d
        title: D
        steps:
          - {id: d1, kind: instruction, title: D1, instruction: Do D1.}
          - {id: x1, kind: identify, title: X1, instruction: Scan., item: RM-PROP}
          - {id: out, kind: produce_output, title: Out, instruction: Weigh., item: FG-PROP, quantity: "10.000", unit: kg,
             yield_low: "90.0", yield_high: "101.0"}
"""
STEPS = ["a1", "a2", "b1", "b2", "c1", "d1"]
ACTIONS = st.one_of(
    st.tuples(st.just("complete"), st.sampled_from(STEPS), st.booleans()),
    st.tuples(st.just("deviation"), st.sampled_from(["minor", "major", "critical"]), st.sampled_from(STEPS + [None])),
    st.tuples(st.just("dispose"), st.integers(0, 3), st.sampled_from(["use_as_is", "rework"])),
    st.tuples(st.just("release"), st.just(None), st.just(None)),
)


@pytest.fixture
def world(app: Flask, monkeypatch: pytest.MonkeyPatch):
    w = make_world(monkeypatch)
    w.recipe = effective_recipe(w, SMALL, "prop.yaml")
    return w


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(actions=st.lists(ACTIONS, min_size=1, max_size=14))
def test_no_sequence_breaks_the_order(world, actions) -> None:
    batch_id = start(world, world.recipe, "10.000", "kg")
    op = world.actor("operator")
    for kind, a, b in actions:
        rows = {s.step_id: s for s in ex.steps_of(batch_id)}
        if kind == "complete":
            step = rows[a]
            before_open = ex.open_predecessors(step, list(rows.values()))
            was_done = step.state == "completed"
            blocker = ex._blocker_for(step, ex._blocking_deviations(batch_id))
            payload = {"confirm": True} if step.kind == "instruction" else {"value": "1.5" if b else "9.0"}
            try:
                ex.complete_step(op, batch_id, a, payload, world.key(), step.version)
                ok = True
            except MESError:
                db.session.rollback()
                ok = False
            if ok:
                assert not before_open, f"{a} completed before {[s.step_id for s in before_open]}"
                assert not was_done, f"{a} completed twice"
                assert blocker is None, f"{a} completed while blocked by {blocker.id}"
            elif ex.get_batch(batch_id).status == "in_progress":
                assert before_open or was_done or blocker is not None, f"{a} refused without a reason"
        elif kind == "deviation":
            try:
                ex.raise_deviation(op, batch_id, a, "test", f"{a} deviation", step_id=b)
            except MESError:
                db.session.rollback()
        elif kind == "dispose":
            open_devs = [d for d in ex.deviations_of(batch_id) if d.status == ex.DeviationStatus.OPEN.value]
            if open_devs:
                dev = open_devs[a % len(open_devs)]
                ex.disposition_deviation(world.sessions["qa"], world.creds("qa"), dev.id, b, "assessed",
                                         terminal="QA-WS-01")
        else:
            open_steps = [s for s in ex.steps_of(batch_id) if s.state != "completed"]
            open_devs = [d for d in ex.deviations_of(batch_id) if d.status == ex.DeviationStatus.OPEN.value]
            try:
                ex.release_batch(world.sessions["qa"], world.creds("qa"), batch_id, "released", terminal="QA-WS-01")
                released = True
            except MESError:
                db.session.rollback()
                released = False
            assert not (released and (open_steps or open_devs))
        # the stored states agree with the order rules after every operation
        rows_now = ex.steps_of(batch_id)
        for s in rows_now:
            if s.state == "ready":
                assert not ex.open_predecessors(s, rows_now)
            if s.state == "completed":
                assert not [p for p in ex.open_predecessors(s, rows_now) if p.attempt == 1 and p.state != "completed"]
