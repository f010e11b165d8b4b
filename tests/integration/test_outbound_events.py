"""The outbound event types beyond a change's own: signed audit checkpoints
(``mes.audit.checkpoint.v1``) and in-process check results (``mes.inspection.recorded.v1``),
and the JSON Schemas every event type is served with (events.md §1). SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from mes.audit import log
from mes.audit.checkpoint import parse_checkpoint
from mes.audit.models import AuditCheckpoint
from mes.db import db
from mes.execution import recipes_store as store
from mes.integration import event_schemas
from mes.integration.models import OutboxEvent
from mes.integration.relay import Relay
from tests.execution_helpers import do_step, effective_recipe, make_world, run_until, start, stock
from tests.helpers import example_data

ACTOR = log.Actor.system("test")

RECIPE = """\
format: mes.master-recipe/v1
id: MR-QC
version: 1
product: {code: FG-QC, name: Checked product}
batch_size: {quantity: "10.000", unit: kg, minimum: "1.000", maximum: "20.000"}
bill_of_materials:
  - {item: RM-QC, name: Raw, role: ingredient, quantity: "10.000", unit: kg, tolerance: {percent: "1.0"}}
procedure:
  - id: up1
    title: Make
    operations:
      - id: op1
        title: Check
        steps:
          - {id: x1, kind: identify, title: Identify, instruction: Scan., item: RM-QC}
          - {id: ph, kind: numeric, title: pH of the solution, instruction: Measure., unit: pH, precision: 1,
             low: "6.5", target: "7.0", high: "7.5"}
          - {id: note, kind: numeric, title: Room number, instruction: Enter., unit: pcs, precision: 0}
          - {id: fill, kind: sample_check, title: Fill weight, instruction: Weigh five., samples: 3, unit: g,
             precision: 1, low: "49.0", target: "50.5", high: "52.0", mean_low: "49.50", mean_high: "51.50"}
          - {id: out, kind: produce_output, title: Out, instruction: Weigh., item: FG-QC, quantity: "10.000",
             unit: kg, yield_low: "90.0", yield_high: "101.0"}
"""


def events(kind: str) -> list[dict[str, Any]]:
    rows = db.session.execute(select(OutboxEvent.body).where(OutboxEvent.type == kind)
                              .order_by(OutboxEvent.position)).scalars()
    return [json.loads(b) for b in rows]


def test_every_schema_is_served_and_its_example_follows_it(client: FlaskClient) -> None:
    types = event_schemas.known_types()
    assert {"mes.audit.checkpoint.v1", "mes.inspection.recorded.v1", "mes.oee.shift_closed.v1"} <= set(types)
    for kind in types:
        r = client.get(f"/integration/v1/schemas/{kind}.json")
        assert r.status_code == 200 and r.mimetype == "application/schema+json"
        schema = json.loads(r.data)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"/integration/v1/schemas/{kind}.json"
        assert event_schemas.data_errors(kind, schema["examples"][0]) == []
    for unknown in ("mes.nothing.v1", "..%2F..%2Fetc%2Fpasswd", "mes.batch.completed.v1.json"):
        r = client.get(f"/integration/v1/schemas/{unknown}.json")
        assert r.status_code == 404 and r.mimetype == "application/problem+json"
    # an event that leaves out a field its schema requires is caught
    assert event_schemas.data_errors("mes.batch.completed.v1", {"batch_id": "B-1"})
    assert event_schemas.data_errors("mes.no_such.v1", {}) == ["no schema for event type mes.no_such.v1"]


def test_every_witnessed_checkpoint_is_an_event_in_its_transaction(app: Flask) -> None:
    for i in range(3):
        log.record(ACTOR, "test.fact", ("batch", "B-1"), after={"i": i},
                   event=log.Event("mes.batch.completed.v1", "batch", "B-1", example_data("mes.batch.completed.v1")))
    log.publish_checkpoint()
    db.session.rollback()  # nothing signed, nothing sent
    assert db.session.execute(select(OutboxEvent)).first() is None
    for i in range(3):
        log.record(ACTOR, "test.fact", ("batch", "B-1"), after={"i": i},
                   event=log.Event("mes.batch.completed.v1", "batch", "B-1", example_data("mes.batch.completed.v1")))
    size = log.tree_size()
    cp = log.publish_checkpoint()
    db.session.commit()
    assert cp is not None and cp.size == size
    origin = log.audit_log().key_name
    (event,) = events("mes.audit.checkpoint.v1")
    data = event["data"]
    assert event["subject"] == f"audit/{origin}" and event["partitionkey"] == origin and event["sequence"] == "1"
    assert event["dataschema"] == "/integration/v1/schemas/mes.audit.checkpoint.v1.json"
    stored = db.session.get(AuditCheckpoint, cp.id)
    assert (data["origin"], data["size"], data["note"]) == (origin, size, stored.note)
    assert base64.b64decode(data["root"]) == stored.root
    parsed = parse_checkpoint(data["note"])  # the note a witness verifies
    assert (parsed.origin, parsed.size, parsed.root) == (origin, size, stored.root)
    # its place: after the last entry it covers, before the next entry's event
    log.record(ACTOR, "test.fact", ("batch", "B-1"), after={"i": 9},
               event=log.Event("mes.batch.completed.v1", "batch", "B-1", example_data("mes.batch.completed.v1")))
    db.session.commit()
    order = [(r.type, r.audit_seq) for r in db.session.execute(
        select(OutboxEvent).order_by(OutboxEvent.position)).scalars()]
    assert order == [("mes.batch.completed.v1", size - 3), ("mes.batch.completed.v1", size - 2),
                     ("mes.batch.completed.v1", size - 1), ("mes.audit.checkpoint.v1", -size),
                     ("mes.batch.completed.v1", size)]


def test_a_checkpoint_signed_later_still_reaches_an_endpoint_that_saw_its_entries(app: Flask) -> None:
    """The scheduler signs a checkpoint after the relay fanned its entries out: its position
    is past the endpoint's cursor, so it is owed too."""
    from mes.integration import endpoints as ops
    from mes.integration.models import Delivery

    ops.add_endpoint(ACTOR, "qms", "http://127.0.0.1:9/in")
    log.record(ACTOR, "test.fact", ("batch", "B-1"), after={},
               event=log.Event("mes.batch.completed.v1", "batch", "B-1", example_data("mes.batch.completed.v1")))
    db.session.commit()
    relay = Relay(app, name="r1")
    assert relay.fan_out() == 1
    log.publish_checkpoint()
    db.session.commit()
    assert relay.fan_out() >= 1
    owed = {json.loads(db.session.get(OutboxEvent, d.event_id).body)["type"]
            for d in db.session.execute(select(Delivery)).scalars()}
    assert "mes.audit.checkpoint.v1" in owed


def test_in_process_checks_are_sent_with_their_limits_and_verdict(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE, "qc.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    run_until(world, batch_id, stop_before="fill", overrides={"ph": {"value": "7.1"}})
    do_step(world, batch_id, "fill", payload={"results": ["50.1", "49.8", "52.6"]})
    sent = events("mes.inspection.recorded.v1")
    assert [e["data"]["step_id"] for e in sent] == ["ph", "fill"]  # the step without limits checks nothing
    ph, fill = (e["data"] for e in sent)
    assert ph["results"] == [{"value": "7.1", "uom": "pH"}] and ph["verdict"] == "pass" and ph["out_of_limits"] == []
    assert ph["limits"] == {"low": "6.5", "high": "7.5", "mean_low": None, "mean_high": None, "target": "7.0"}
    assert ph["characteristic"] == "pH of the solution" and ph["performed_by"] == world.seeded.users["operator"]
    assert [r["value"] for r in fill["results"]] == ["50.1", "49.8", "52.6"] and fill["out_of_limits"] == [2]
    assert fill["verdict"] == "fail" and fill["limits"]["mean_low"] == "49.50" and fill["mean"]["uom"] == "g"
    assert {e["subject"] for e in sent} == {f"batch/{batch_id}"}
    assert {e["correlationid"] for e in sent} == {ex_wo(batch_id)}
    # the verdict is the step's own: the deviation it raised follows in the same batch's sequence
    raised = events("mes.deviation.raised.v1")
    assert int(raised[0]["sequence"]) == int(sent[1]["sequence"]) + 1


def ex_wo(batch_id: str) -> str:
    from mes.execution import operations as ex

    return ex.get_batch(batch_id).work_order_id
