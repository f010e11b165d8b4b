"""A kiosk terminal starts and executes batches only on its own line (issue 18; Part 11 §11.10(h))."""

from __future__ import annotations

import pytest

from mes.errors import Forbidden
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from tests import execution_helpers as eh
from tests.execution_helpers import make_world


@pytest.fixture
def world(app, monkeypatch) -> eh.World:
    return make_world(monkeypatch)


def test_a_kiosk_starts_and_executes_batches_only_on_its_own_line(world: eh.World) -> None:
    rv = eh.effective_recipe(world, eh.PACK_RECIPE, "pack.yaml")
    eh.stock(world, store.master_of(store.get_version(rv)))
    sup = world.actor("supervisor")
    wo = ex.create_work_order(sup, "FG-PCM500-PACK", "10.000", "kg", rv, erp_ref="ERP-L2")
    ex.release_work_order(sup, wo.id)
    ex.dispatch_work_order(sup, wo.id, "LINE-2")
    with pytest.raises(Forbidden, match="serves line LINE-1"):
        ex.start_batch(world.actor("operator"), wo.id)  # KIOSK-01 serves LINE-1
    batch = ex.start_batch(sup, wo.id)  # from the QA workstation: not bound to a line
    step = eh.ready_steps(batch.id)[0]
    with pytest.raises(Forbidden, match="serves line LINE-1"):
        ex.start_step(world.actor("operator"), batch.id, step, world.key(), 1)
    with pytest.raises(Forbidden, match="serves line LINE-1"):
        ex.complete_step(world.actor("operator"), batch.id, step, {}, world.key(), 1)
