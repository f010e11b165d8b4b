"""Containers are not merged in a trace (issue 14): each link of a lot's genealogy says
which containers of the parent lot went into the batch and how much came from each, as
written; the link's own quantity stays the lot's total."""

from __future__ import annotations

from flask import Flask

from mes.audit.log import Actor
from mes.materials import operations as ops
from tests.helpers import release_lot_as_qa

QA = Actor("qa1", "QA One", "qa", "QA-WS-01")
SUP = Actor("supervisor1", "Supervisor One", "supervisor", "QA-WS-01")
OP = Actor("operator1", "Operator One", "operator", "KIOSK-01")


def test_containers_are_not_merged_in_a_trace(app: Flask) -> None:
    ops.create_item(SUP, "API-PARA", "Paracetamol", "kg", "api")
    ops.create_item(SUP, "INT-BLEND", "Paracetamol blend", "kg", "intermediate")
    ops.receive_lot(SUP, "API-PARA", [ops.ContainerIn("50.00", "kg", "C-1"), ops.ContainerIn("30.0", "kg", "C-2"),
                                      ops.ContainerIn("10", "kg", "C-3")], lot_id="L-API")
    release_lot_as_qa("L-API", "CoA reviewed")
    ops.consume(OP, "L-API", "C-1", "20.00", "kg", "B-1")
    ops.consume(OP, "L-API", "C-2", "12.5", "kg", "B-1")
    ops.consume(OP, "L-API", "C-1", "5000", "g", "B-1")  # the same container again, in grams
    wrong = ops.consume(OP, "L-API", "C-3", "1", "kg", "B-1")
    ops.reverse_consumption(SUP, wrong.id, "wrong container")  # a reversed consumption is not in the trace
    ops.produce(SUP, "INT-BLEND", "L-BLEND", "37.50", "kg", "B-1")

    link = ops.trace_backward("L-BLEND").links[0]
    assert (link.parent_lot_id, link.batch_id) == ("L-API", "B-1")
    assert link.as_json()["qty"] == {"value": "37500", "uom": "g"}  # kg and g mixed: the lot's total in g
    assert link.as_json()["containers"] == [
        {"container_id": "C-1", "qty": {"value": "25.000", "uom": "kg"}},  # 20.00 kg + 5000 g (to 1 g = 0.001 kg)
        {"container_id": "C-2", "qty": {"value": "12.5", "uom": "kg"}},
    ]
    forward = ops.trace_forward("L-API")
    assert forward.tree()["children"][0]["containers"] == link.as_json()["containers"]
    assert forward.as_json()["links"][0]["containers"] == link.as_json()["containers"]
