"""Issue 15, kiosk-ux.md rule 8: every screen fits the panel. At 1280×800 and at 1920×1080 an
operator walks every kiosk screen (login and its error, lines, batches, each step kind: an
instruction, equipment checks, a signature with its PIN keypad, an identification, a
weighing, the second-person verification, a timer; the confirm dialog of each, the
deviation dialog, a blocked step, the batch summary) and on each, at the top of the page and
without scrolling, every control the screen offers and the batch header are inside the
viewport (and inside the visible part of any scrolling box, a dialog's own included).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kiosk import checks, flows
from tests.kiosk.driver import Driver
from tests.kiosk.harness import KIOSK_TERMINAL, KioskServer, running_server

pytestmark = pytest.mark.browser


class StopAtTimer(Exception):
    """The simulated operator reached a timer step: the kiosk shows it from here."""


@pytest.fixture
def server(templates: dict[str, str], tmp_path: Path, size: str) -> Iterator[KioskServer]:
    """A server of its own for each size (the scales keep their tare, the lots their stock)."""
    with running_server("sqlite", templates, tmp_path / "home") as srv:
        restock(srv)
        flows.new_work_order(srv, "ERP-FOLD")
        flows.new_work_order(srv, "ERP-FOLD-TIMER")
        # before the kiosk tares a scale (the simulated operator weighs without the scale's tare)
        srv.timer_batch = _timer_step(srv, "ERP-FOLD-TIMER")  # type: ignore[attr-defined]
        flows.blocked_work_order(srv, "ERP-FOLD-BLOCKED")
        yield srv


def restock(server: KioskServer, batches: int = 2) -> None:
    """Released lots of every material of the recipe for ``batches`` more batches (the demo
    seed stocks about one): received and released by QA with an e-signature, as `mes demo`."""
    from datetime import timedelta

    from mes.audit.log import Actor
    from mes.db import db, utcnow
    from mes.demo import DEMO_PASSWORD
    from mes.equipment import operations as eq
    from mes.execution import recipes_store as store
    from mes.materials import operations as mat
    from mes.plant_time import plant_date
    from mes.signatures.operations import Credentials
    from mes.users import operations as ops
    from mes.users.models import Terminal

    with server.db():
        master = store.master_of(store.list_versions(status="effective")[0])
        qa_session, _ = ops.login_with_password("qa1", DEMO_PASSWORD, db.session.get(Terminal, "QA-WS-01"))
        for line in master.bill_of_materials:
            unit = "pcs" if line.unit == "pcs" else "kg"
            size = str(line.quantity * batches)
            # made before the demo's lots: it expires first, so it is the one a simulated operator picks
            lot = mat.receive_lot(Actor.system("kiosk-tests"), line.item, [mat.ContainerIn(size, unit)],
                                  manufactured_date=plant_date(utcnow()) - timedelta(days=20), supplier="Demo Supplier")
            mat.release_lot(qa_session, Credentials(DEMO_PASSWORD, user_id="qa1"), lot.id, "released (tests)",
                            terminal="QA-WS-01")
        ops.end_session(qa_session, "logout")
        # each running batch keeps a dispensing booth claimed: one more for each
        booth = eq.get_equipment("BOOTH-01")
        for n in range(3, 3 + batches):
            eq.register_equipment(Actor.system("kiosk-tests"), f"BOOTH-0{n}", "room", booth.equipment_class,
                                  f"Dispensing booth {n}", location="Dispensary", line="LINE-1",
                                  clean_hold=timedelta(days=3))
            eq.record_cleaning(Actor.system("kiosk-tests"), f"BOOTH-0{n}", "routine")


class Fold:
    """Each screen once (by label and step): a viewport screenshot and rule 8's fold check."""

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = {}

    def __call__(self, label: str, k: Any) -> None:
        step = k.page.evaluate("document.body ? document.body.dataset.step || '' : ''")
        key = f"{label}@{step}" if step else label
        if key in self.found:
            return
        checks.rendered(k.page)
        k.shot(f"fold-{key}", full_page=False)
        self.found[key] = checks.fold(k.page)


def _timer_step(server: KioskServer, wo_ref: str) -> str:
    """The batch of ``wo_ref`` done through the API by the simulated operator up to its first
    timer step (left for the kiosk); returns the batch id."""
    from mes.execution.sim_operator import Login, SimOperator
    from mes.steps import registry as step_kinds

    sim = SimOperator(server.url, ":".join(KIOSK_TERMINAL), Login(badge=flows.OPERATOR[0], pin=flows.OPERATOR[1]),
                      verifier=Login(badge=flows.SUPERVISOR[0], pin=flows.SUPERVISOR[1]), timers="skip", echo=None)
    plain = sim.do_step

    def do_step(batch: dict[str, Any], step: dict[str, Any]) -> Any:
        assert sim.recipe is not None
        if step_kinds.kind_of(sim.recipe.step(step["id"])).sim_wait(sim.recipe.step(step["id"])) is not None:
            raise StopAtTimer(batch["id"])
        return plain(batch, step)

    sim.do_step = do_step  # type: ignore[method-assign]
    wo = flows.work_order_id(server, wo_ref)
    try:
        sim.run(wo, max_steps=200)
    except StopAtTimer as stop:
        return str(stop.args[0])
    batch = flows.batch_of(server, wo)
    raise AssertionError(f"batch {batch} reached no timer step")


def test_rule8_every_control_inside_the_viewport_without_scrolling(open_kiosk, server, size) -> None:
    look = Fold()
    k = open_kiosk(server, size, start="")
    flows.to_login(k)
    look("login", k)

    # a wrong PIN: the login screen with its error
    k.page.wait_for_selector(".keypad:visible")
    checks.until(k.page, "() => window.__kioskReady === true")
    k.scan_until(flows.OPERATOR[0], "b => document.querySelector('input[name=badge]').value === b")
    k.keypad("0000")
    k.page.locator(".primary:visible").first.click()
    checks.until(k.page, "() => document.body && document.body.dataset.screen === 'login' && "
                         "!document.querySelector('#message').hidden")
    look("login-error", k)

    k.login(*flows.OPERATOR)
    if k.wait_screen(("lines", "batches")) == "lines":
        look("lines", k)
        flows.click_text(k, flows.LINE)
        k.wait_screen("batches")
    look("batches", k)

    # a batch, step by step up to the first excipient: instruction, equipment checks, the
    # supervisor's signature, identification, weighing, second-person verification
    assert flows.to_step(k, "ERP-FOLD") == "step"
    batch_id = flows.batch_of(server, flows.work_order_id(server, "ERP-FOLD"))
    assert batch_id
    drv = Driver(k, server, batch_id, on_screen=look)
    try:
        step = drv.run_until(lambda s: s["id"] == "id_mcc101")
    except BaseException:
        k.shot("fold-failure")
        raise
    drv.ensure_on_step(step)
    k.page.locator("[data-action=raise-deviation]").first.click()
    k.page.locator("#deviation-dialog").wait_for(state="visible")
    look("deviation-dialog", k)
    k.page.locator("#deviation-dialog [data-action=close-dialog]").click()
    k.page.locator("#deviation-dialog").wait_for(state="hidden")

    # a blocked step (an open major deviation)
    assert flows.to_step(k, "ERP-FOLD-BLOCKED") == "blocked"
    look("blocked", k)

    # a timer: not started, running, and Stop's confirmation
    timer_batch = server.timer_batch
    tdrv = Driver(k, server, timer_batch, on_screen=look)
    tstep = flows.current_step(server, timer_batch)
    assert tstep and tstep["kind"] == "timer", tstep
    tdrv.ensure_on_step(tstep)
    look("step-timer", k)
    if k.page.locator("[data-start]").count():
        tdrv.commit(tstep)
        k.wait_screen("step")
    look("step-timer-running", k)
    k.page.locator("[data-stop-timer]:visible").click()
    k.page.locator("#confirm-dialog").wait_for(state="visible")
    look("confirm-timer-stop", k)
    k.page.locator("#confirm-dialog [data-action=cancel]").click()

    # the batch summary
    k.goto(f"/kiosk/batches/{batch_id}/summary")
    k.wait_screen(("complete", "summary"))
    look("summary", k)

    bad = {label: found for label, found in look.found.items() if found}
    assert not bad, f"controls outside the viewport at {size} (rule 8):\n" + "\n".join(
        f"{label}: {found}" for label, found in bad.items())
    kinds = {key.split("@")[0] for key in look.found}
    assert {"login", "login-error", "batches", "deviation-dialog", "blocked", "step-timer", "step-timer-running",
            "confirm-timer-stop", "summary", "step-instruction", "step-equipment_check", "step-signature", "step-identify", "step-weigh",
            "confirm-weigh", "confirm-signature"} <= kinds, sorted(kinds)
