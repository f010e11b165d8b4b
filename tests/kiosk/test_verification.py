"""Issue 15: a second-person verification shows what it verifies, as recorded, before the
badge and PIN. Its own server: the batch weighs the lot's drums that the weigh tests on the
shared server need full."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kiosk import checks, flows
from tests.kiosk.harness import KioskServer, running_server

pytestmark = pytest.mark.browser
_orders = itertools.count(1)


@pytest.fixture(scope="module")
def server(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskServer]:
    from tests.kiosk.test_fold import restock

    with running_server("sqlite", templates, Path(tmp_path_factory.mktemp("kiosk-verify"))) as srv:
        before = _released_lots(srv)
        restock(srv, batches=2)  # each size dispenses a whole batch's materials, from these lots only
        with srv.db():
            from mes.audit.log import Actor
            from mes.materials import operations as mat

            for lot in before:  # the demo's smaller lots, which the driver (first lot by id) might pick
                mat.place_hold(Actor.system("kiosk-tests"), lot, "consumption", "kept for other tests")
        yield srv


def _released_lots(server: KioskServer) -> list[str]:
    from mes.materials import operations as mat

    with server.db():
        return [lot.id for lot in mat.list_lots(status="released", limit=1000)]


@pytest.fixture
def order(server: KioskServer) -> str:
    """A fresh dispatched work order (its ERP reference)."""
    ref = f"ERP-VERIFY-{next(_orders)}"
    flows.new_work_order(server, ref)
    return ref


def test_second_person_verification_shows_what_it_covers_as_recorded(open_kiosk, server, size, order) -> None:
    """Issue 15: the verification screen first shows, beside its instruction, what the steps it
    covers recorded (the lot identified; each container's net weight, lot and container) and
    who did them, on the screen without scrolling, exactly as stored; "Checked" (or the
    verifier's badge scanned) then brings the badge and PIN."""
    from mes.quantities import to_text
    from tests.kiosk.driver import Driver

    flows.another_booth(server)
    k = open_kiosk(server, size, start="")
    assert flows.to_step(k, order) == "step"
    batch = flows.batch_for(server, order)
    drv = Driver(k, server, batch)
    step = drv.run_until(lambda s: s["kind"] == "signature" and drv.spec(s["id"]).second_person)
    assert step, "the demo recipe has no second-person verification"
    drv.ensure_on_step(step)
    items = k.page.locator(".covered li")
    assert items.count() >= 1, "the verification shows nothing of what it covers"
    k.shot("verification-covers", full_page=False)
    assert k.page.locator(".sign-panel").is_hidden(), "the badge and PIN come before what is verified"
    primary = k.page.locator(".primary:visible")
    assert primary.count() == 1 and primary.get_attribute("data-action") == "reviewed"
    assert checks.not_in_view(k.page, [".covered", "[data-field=instruction]", "[data-action=reviewed]"]) == {}
    assert checks.not_in_view(k.page, [f".covered li[data-step={i}]" for i in items.evaluate_all("l => l.map(e => e.dataset.step)")]) == {}
    records = [r for r in flows.step_records(server, batch) if r["superseded_by"] is None]
    shown = {i: k.page.locator(f".covered li[data-step={i}]").inner_text() for i in
             items.evaluate_all("l => l.map(e => e.dataset.step)")}
    weighed = [r for r in records if r["step"] in shown and r["kind"] == "container" and r["data"].get("tare")]
    assert weighed, f"no weighing among the covered steps {list(shown)}"
    for r in weighed:
        text = shown[r["step"]]
        assert f"{to_text(r['value'])} {r['unit']} net" in text, (r, text)  # places as recorded
        assert str(r["data"]["lot"]) in text and str(r["data"]["container"]) in text, (r, text)
    for r in records:
        if r["step"] in shown and r["kind"] == "identification":
            assert str(r["data"]["lot"]) in shown[r["step"]]
    assert "Olivia Operator" in " ".join(shown.values()), "who did the steps is not named"
    assert checks.text_sizes(k.page) == [] and checks.axe(k.page) == [] and checks.targets(k.page) == []
    k.page.locator("[data-action=reviewed]").click()
    assert checks.not_in_view(k.page, [".sign-panel .fields", ".sign-panel .keypad", ".primary[data-needs-pin]"]) == {}
    assert k.page.locator(".review").is_hidden()
