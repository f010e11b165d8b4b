"""Issue 21, kiosk side of the thread budget: a web instance with no room for another live
connection refuses it (503, ``mes.realtime.LiveBudget``); the kiosk then reads its scale over
the REST API, so the operator weighs as usual, and the weight the confirm dialog shows is the
weight stored. Its own server, with room for one live connection, which a socket holds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from tests.kiosk import checks, flows
from tests.kiosk.harness import KioskServer, running_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskServer]:
    with running_server("sqlite", templates, Path(tmp_path_factory.mktemp("kiosk-live-refused")),
                        extra_env={"MES_LIVE_CONNECTIONS": "1"}) as srv:
        yield srv


class HeldSocket:
    """An engine.io WebSocket that holds the server's one live connection (answering its
    pings so the server keeps it open) until closed."""

    def __init__(self, base: str) -> None:
        self.ws = websocket.create_connection(base.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket",
                                              timeout=5)
        assert self.ws.recv().startswith("0{"), "engine.io open packet"
        self.ws.settimeout(None)
        self.thread = threading.Thread(target=self._pong, daemon=True)
        self.thread.start()

    def _pong(self) -> None:
        try:
            while True:
                if self.ws.recv() == "2":
                    self.ws.send("3")
        except Exception:  # noqa: BLE001 - closed
            return

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)


@pytest.mark.parametrize("size", ["1280x800"])
def test_a_kiosk_refused_a_live_connection_weighs_by_polling_and_stores_what_it_showed(
        open_kiosk: Any, server: KioskServer, size: str) -> None:
    from tests.kiosk.checks import until as wait

    held = HeldSocket(server.url)
    try:
        refused = requests.get(f"{server.url}/socket.io/?EIO=4&transport=polling", timeout=5)
        assert refused.status_code == 503 and refused.json()["type"].endswith("/live-connections-full")
        order = "ERP-LIVE-REFUSED-1"
        flows.new_work_order(server, order)
        opened: list[str] = []

        def kiosk_watched(*args: Any, **kw: Any) -> Any:
            k = open_kiosk(*args, **kw)
            k.page.on("websocket", lambda ws: opened.append(ws.url))
            return k

        k, drv, batch, step, device, _, container, net, places = flows.drum_on_the_scale(kiosk_watched, server, size,
                                                                                          order)
        # the kiosk asked for a live connection and was refused: what it shows came over REST
        assert opened, "the kiosk never asked for a live connection"
        assert k.page.evaluate("() => !!document.querySelector('#device-banner')?.hidden"), "the scale shows as lost"
        capture = k.page.locator("[data-action=capture]")
        dialog = k.page.locator("#confirm-dialog")
        wait(k.page, "el => !el.disabled", arg=capture.element_handle(), timeout=10_000)
        capture.click()
        dialog.wait_for(state="visible")
        assert checks.fold(k.page) == []
        shown = dialog.locator("#confirm-summary dd").last.inner_text().strip().removesuffix(" (+)")
        assert shown == f"{net:.2f} kg", shown
        stored, confirmed = flows.confirm_weighing(k, server, batch, step)
        assert confirmed == shown and Decimal(stored["value"]) == net
        k.shot("weighed-without-live-connection")
        # the refusals are in view of the administrator: one open alarm, whatever their number
        with server.db() as db:
            from sqlalchemy import select

            from mes.users.models import Alarm

            alarms = db.session.execute(select(Alarm).where(Alarm.kind == "live-connections")).scalars().all()
            assert len(alarms) == 1 and alarms[0].acknowledged_at is None
    finally:
        held.close()

