"""The plant rule "a major/critical open deviation blocks the next step" has one home,
:func:`mes.execution.batches.blocks`; the engine (refusal and step states), the API's JSON
(``blocking``), the kiosk's ``blocker()`` and the completion path's candidate query agree.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from kiosk import views as kv
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.execution.models import DeviationStatus, StepState
from tests.execution_helpers import PCM, World, do_step, effective_recipe, make_world, run_until, start, stock
from tests.helpers import logged_in

PCM_VALUES = {
    "granule_weight": {"value": "109.30"},
    "blend_weight": {"value": "113.85"},
    "tablets_out": {"quantity": "113.000", "unit": "kg", "lot_id": "LOT-BLK-001"},
}


def _batch(monkeypatch: Any) -> tuple[World, str]:
    world = make_world(monkeypatch)
    rv = effective_recipe(world, PCM)
    stock(world, store.master_of(store.get_version(rv)))
    return world, start(world, rv, "200000", "pcs")


def _api_deviation(client: Any, world: World, batch_id: str, deviation_id: str) -> dict[str, Any]:
    body = logged_in(client, world.seeded, "supervisor").get(f"/api/v1/batches/{batch_id}").get_json()
    return next(d for d in body["deviations"] if d["id"] == deviation_id)


def _engine_blocked(batch_id: str, step_id: str, deviation_id: str) -> bool:
    """The engine's word: the step's stored state, its refusal, and the candidate query + rule."""
    step = ex.get_step(batch_id, step_id)
    by_query = ex.blocker_of(step, ex._blocking_deviations(batch_id))
    by_rows = ex.blocker_of(step, ex.deviations_of(batch_id))
    assert (by_query.id if by_query else None) == (by_rows.id if by_rows else None)
    return by_rows is not None and by_rows.id == deviation_id


def test_a_major_deviation_blocks_only_later_steps(app: Flask, client, monkeypatch) -> None:
    world, batch_id = _batch(monkeypatch)
    first, second = (s.step_id for s in ex.steps_of(batch_id)[:2])
    dev = ex.raise_deviation(world.actor("supervisor"), batch_id, "major", "process",
                             "Line clearance found a foreign tablet.", step_id=first)
    # its own step is not blocked: the engine, the kiosk and the rule agree
    assert not ex.blocks(dev, ex.get_step(batch_id, first))
    assert not _engine_blocked(batch_id, first, dev.id)
    assert kv.blocker(ex.get_batch(batch_id), ex.get_step(batch_id, first)) is None
    assert ex.get_step(batch_id, first).state == StepState.READY.value
    assert _api_deviation(client, world, batch_id, dev.id)["blocking"] is True  # the steps after it
    do_step(world, batch_id, first)
    # the step after it is blocked: stored state, refusal, API, kiosk
    later = ex.get_step(batch_id, second)
    assert later.state == StepState.BLOCKED.value and ex.blocks(dev, later)
    assert _engine_blocked(batch_id, second, dev.id)
    kiosk_says = kv.blocker(ex.get_batch(batch_id), later)
    assert kiosk_says is not None and kiosk_says.id == dev.id
    with pytest.raises(ex.StepBlocked, match=dev.id):
        do_step(world, batch_id, second)
    shown = _api_deviation(client, world, batch_id, dev.id)
    assert shown["blocking"] is True and shown["status"] == DeviationStatus.OPEN.value
    # QA's disposition lifts it everywhere
    ex.disposition_deviation(world.sessions["qa"], world.creds("qa"), dev.id, "use_as_is", "tablet removed",
                             terminal="QA-WS-01")
    later = ex.get_step(batch_id, second)
    assert later.state == StepState.READY.value and not ex.blocks(ex.get_deviation(dev.id), later)
    assert kv.blocker(ex.get_batch(batch_id), later) is None
    assert _api_deviation(client, world, batch_id, dev.id)["blocking"] is False
    do_step(world, batch_id, second)


def test_a_minor_deviation_blocks_no_step_and_a_batch_deviation_blocks_every_step(app: Flask, client,
                                                                                   monkeypatch) -> None:
    world, batch_id = _batch(monkeypatch)
    first = ex.steps_of(batch_id)[0].step_id
    minor = ex.raise_deviation(world.actor("supervisor"), batch_id, "minor", "process", "A label is smudged.")
    assert not any(ex.blocks(minor, s) for s in ex.steps_of(batch_id))
    assert _api_deviation(client, world, batch_id, minor.id)["blocking"] is False
    assert kv.blocker(ex.get_batch(batch_id), ex.get_step(batch_id, first)) is None
    whole = ex.raise_deviation(world.actor("supervisor"), batch_id, "critical", "process", "The room is open.")
    assert all(ex.blocks(whole, s) for s in ex.steps_of(batch_id))
    assert ex.get_step(batch_id, first).state == StepState.BLOCKED.value
    assert _engine_blocked(batch_id, first, whole.id)
    assert kv.blocker(ex.get_batch(batch_id), ex.get_step(batch_id, first)).id == whole.id
    assert _api_deviation(client, world, batch_id, whole.id)["blocking"] is True
    with pytest.raises(ex.StepBlocked, match=whole.id):
        do_step(world, batch_id, first)


def test_a_deviation_on_the_last_step_blocks_no_step_but_blocks_release(app: Flask, client, monkeypatch) -> None:
    world, batch_id = _batch(monkeypatch)
    last = ex.steps_of(batch_id)[-1].step_id
    run_until(world, batch_id, stop_before=last, overrides=PCM_VALUES)
    dev = ex.raise_deviation(world.actor("supervisor"), batch_id, "major", "process",
                             "The output was counted by hand.", step_id=last)
    step = ex.get_step(batch_id, last)
    assert not ex.blocks(dev, step) and not _engine_blocked(batch_id, last, dev.id)
    assert kv.blocker(ex.get_batch(batch_id), step) is None
    assert _api_deviation(client, world, batch_id, dev.id)["blocking"] is False
    do_step(world, batch_id, last, PCM_VALUES)
    assert ex.get_batch(batch_id).status == "completed"
    assert _api_deviation(client, world, batch_id, dev.id)["blocking"] is False
    # nothing is left to block, but the open deviation still stops review and release
    assert any(dev.id in problem for problem in ex.release_blockers(batch_id))
