"""An operator picks the reason of a line's stop on the kiosk: the line's stops of the last
twelve hours, the reasons of the tree, nothing recorded until confirmed."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask

from mes.db import utcnow
from mes.oee import operations as ops
from tests import execution_helpers as eh
from tests.test_kiosk import Kiosk, screen, world  # noqa: F401  (the kiosk world fixture)
from tests.test_oee import GATEWAY


def test_an_operator_picks_a_stop_reason_on_the_kiosk(app: Flask, world: eh.World) -> None:  # noqa: F811
    now = utcnow().replace(microsecond=0)
    for minutes, state in ((90, "Execute"), (60, "Stopping"), (59, "Stopped"), (40, "Starting"), (38, "Execute")):
        ops.record_line_sample(GATEWAY, "LINE-1", at=now - timedelta(minutes=minutes), state=state, processed=None,
                               defective=None, source="opc.tcp://127.0.0.1:4840/line-1")
    k = Kiosk(app.test_client(), world.seeded.kiosk)
    k.login("B-operator", "2468")
    r = k.get("/kiosk/lines/LINE-1/stops")
    assert r.status_code == 200 and screen(k.page) == "stops"
    assert "Stopping, Stopped, Starting" in k.page and "Pick reason" in k.page
    (stop,) = ops.stops("LINE-1", now - timedelta(hours=2), now)
    r = k.get(f"/kiosk/stops/{stop['id']}")
    assert r.status_code == 200 and "Setup / changeover" in k.page and "data-confirm-lead" in k.page
    # not confirmed: nothing recorded, the operator is told
    r = k.post(f"/kiosk/stops/{stop['id']}/reason", {"reason": "changeover", "confirmed": "0"})
    assert r.status_code == 422 and ops.stops("LINE-1", now - timedelta(hours=2), now)[0]["reason"] is None
    r = k.post(f"/kiosk/stops/{stop['id']}/reason", {"reason": "changeover", "confirmed": "1"})
    assert r.status_code == 200 and "Stop classified: changeover." in k.page
    (after,) = ops.stops("LINE-1", now - timedelta(hours=2), now)
    assert after["classification"]["category"] == "setup" and after["reason"]["assigned_by"] == world.seeded.users["operator"]
