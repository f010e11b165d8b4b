"""Issue 20 on the kiosk's screen: a hold the QMS places on a lot that a running batch
consumes reaches the operator within one second, through the `lot_hold` live notice, and the
QMS's release takes it away. Its own server: each size weighs a full drum of the lot."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kiosk import flows
from tests.kiosk.checks import until
from tests.kiosk.harness import KioskServer, running_server

pytestmark = pytest.mark.browser
_orders = itertools.count(1)


@pytest.fixture(scope="module")
def server(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskServer]:
    with running_server("sqlite", templates, Path(tmp_path_factory.mktemp("kiosk-hold"))) as srv:
        yield srv


@pytest.fixture
def order(server: KioskServer) -> str:
    """A fresh dispatched work order (its ERP reference)."""
    ref = f"ERP-HOLD-{next(_orders)}"
    flows.new_work_order(server, ref)
    return ref


def test_a_qms_hold_on_the_lot_shows_on_the_kiosk_within_one_second_and_its_release_lifts_it(
        open_kiosk, server, size, order) -> None:
    """Issue 20: a hold the QMS places on a lot a running batch consumes is on the operator's
    screen, in the viewport, within one second of the command; the next consumption of the
    lot is refused with the reason; the QMS's release takes the notice away."""
    from mes.audit.log import Actor
    from mes.integration import inbound
    from mes.integration.sims import send_command

    k, _, batch, step, _, lot, _, _, _ = flows.drum_on_the_scale(open_kiosk, server, size, order)
    dialog = k.page.locator("#confirm-dialog")
    until(k.page, "el => !el.disabled", arg=k.page.locator("[data-action=capture]").element_handle(), timeout=10_000)
    k.page.locator("[data-action=capture]").click()
    dialog.wait_for(state="visible")
    with k.page.expect_navigation():
        dialog.locator("[data-action=confirm]").click()  # the first drum is consumed: the batch uses the lot
    k.wait_screen(("step", "blocked"))
    with server.db():
        _, secret = inbound.add_peer(Actor.system("test"), f"qms-{batch.lower()}")
    banner = k.page.locator("#hold-banner")
    assert banner.is_hidden()
    hold_id = f"QMS-H-{batch}"
    sent = time.monotonic()
    status, answer = send_command(server.url, secret, "qms.lot.hold_placed.v1",
                                  {"lot_id": lot, "hold_id": hold_id, "scope": "consumption",
                                   "reason": "Particles found in a retained sample", "ncr_id": "NCR-77"},
                                  source="urn:qms:sim")
    assert 200 <= status < 300 and batch in answer["result"]["running_batches"], answer
    banner.wait_for(state="visible", timeout=1000)
    took = time.monotonic() - sent
    assert took <= 1.0, took
    text = banner.inner_text()
    assert lot in text and "on hold" in text and "NCR-77" in text, text
    box = banner.bounding_box()
    view = k.page.viewport_size
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= view["height"], (box, view)
    k.shot("qms-hold")
    # the next drum of the held lot is refused, with the reason, and nothing is consumed
    records = len([r for r in flows.step_records(server, batch) if r["step"] == step["id"]])
    with server.db():
        from mes.materials import operations as mat

        usable = mat.check_usable(lot)
    assert not usable.ok and "NCR-77" in usable.reason, usable
    status, answer = send_command(server.url, secret, "qms.lot.hold_released.v1",
                                  {"hold_id": hold_id, "disposition": "release", "approved_by": "QA Lead"},
                                  source="urn:qms:sim")
    assert 200 <= status < 300, answer
    banner.wait_for(state="hidden", timeout=1000)
    assert len([r for r in flows.step_records(server, batch) if r["step"] == step["id"]]) == records
