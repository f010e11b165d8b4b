"""How a person moves through the kiosk, written once for the rule tests, the end-to-end run
and the benchmark: the DOM contract of kiosk-ux.md / the kiosk brief, nothing else."""

from __future__ import annotations

import itertools
import re
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from tests.kiosk.checks import until

OPERATOR = ("1001", "2468")       # op1, Olivia Operator, en
OPERATOR_ZH = ("1002", "3579")    # op2, Wang Fang, zh_Hans
SUPERVISOR = ("2001", "8642")     # sup1
QA_USER = ("qa1", "Demo-Passw0rd!")
LINE = "LINE-1"
DEMO_WO = "ERP-DEMO-1"


# ----------------------------------------------------------------------------- database


def work_order_id(server: Any, erp_ref: str = DEMO_WO) -> str:
    from mes.execution.models import WorkOrder

    with server.db() as db:
        return str(db.session.execute(select(WorkOrder.id).where(WorkOrder.erp_ref == erp_ref)).scalar_one())


def new_work_order(server: Any, erp_ref: str) -> str:
    """Another dispatched work order for the demo recipe on LINE-1 (each test its own batch)."""
    from mes.execution import operations as ex
    from mes.execution import recipes_store as store
    from mes.users import operations as ops

    with server.db():
        author = ops.actor_for(ops.get_user("sup1"), "supervisor", "QA-WS-01")
        rv = store.list_versions(status="effective")[0]
        master = store.master_of(rv)
        wo = ex.create_work_order(author, master.product.code, str(master.batch_size.quantity), master.batch_size.unit,
                                  rv.id, line=LINE, erp_ref=erp_ref)
        ex.release_work_order(author, wo.id)
        ex.dispatch_work_order(author, wo.id, LINE)
        wid = str(wo.id)
        return wid


def blocked_work_order(server: Any, erp_ref: str) -> tuple[str, str, str]:
    """A work order whose batch is started and blocked by a major deviation on the batch:
    (work order id, batch id, deviation id)."""
    from mes.execution import operations as ex
    from mes.users import operations as ops

    wo = new_work_order(server, erp_ref)
    with server.db():
        op = ops.actor_for(ops.get_user("op1"), "operator", "KIOSK-01")
        batch = ex.start_batch(op, wo)
        dev = ex.raise_deviation(op, batch.id, "major", "equipment", "Downflow unit alarm before line clearance.")
        return wo, str(batch.id), str(dev.id)


def batch_of(server: Any, wo_id: str) -> str | None:
    from mes.execution.models import Batch

    with server.db() as db:
        row = db.session.execute(select(Batch.id).where(Batch.work_order_id == wo_id)).scalar()
        return None if row is None else str(row)


def current_step(server: Any, batch_id: str) -> dict[str, Any] | None:
    """The step the kiosk should show: first ready / in progress, else the first blocked one."""
    from mes.execution import operations as ex

    with server.db():
        steps = ex.steps_of(batch_id)
        n = len(steps)
        for want in (("ready", "in_progress"), ("blocked",)):
            for i, s in enumerate(steps):
                if s.state in want:
                    return {"id": s.step_id, "kind": s.kind, "state": s.state, "k": i + 1, "n": n,
                            "version": s.version, "attempt": s.attempt}
    return None


def step_records(server: Any, batch_id: str) -> list[dict[str, Any]]:
    """Every step record of the batch, oldest first (what the database holds)."""
    from mes.execution.models import StepRecord

    with server.db() as db:
        rows = db.session.execute(select(StepRecord).where(StepRecord.batch_id == batch_id)
                                  .order_by(StepRecord.recorded_at, StepRecord.id)).scalars().all()
        return [{"id": r.id, "step": r.batch_step_id.split(":", 1)[1], "kind": r.kind, "value": r.value,
                 "unit": r.unit, "by": r.recorded_by, "flags": list(r.flags or []),
                 "data": dict(r.data or {}), "superseded_by": r.superseded_by} for r in rows]


def count_records(server: Any) -> int:
    from sqlalchemy import func

    from mes.execution.models import StepRecord

    with server.db() as db:
        return int(db.session.execute(select(func.count()).select_from(StepRecord)).scalar_one())


# ------------------------------------------------------------------------------ screens


def click_text(k: Any, pattern: str) -> None:
    """Tap the visible control whose text matches ``pattern`` (a line, a work order...)."""
    rx = re.compile(pattern)
    for role in ("button", "link"):
        loc = k.page.get_by_role(role, name=rx)
        if loc.count():
            loc.first.click()
            return
    k.page.locator("[role=button], [tabindex]").filter(has_text=rx).first.click()


def to_login(k: Any) -> None:
    k.goto("/kiosk/")
    k.wait_screen("login")


def to_lines(k: Any, who: tuple[str, str] = OPERATOR) -> str:
    to_login(k)
    k.login(*who)
    return k.wait_screen(("lines", "batches"))


def logged_in(k: Any) -> bool:
    return k.page.url.startswith(k.server.url) and k.page.evaluate("document.body.dataset.loggedIn") == "true"


def to_batches(k: Any, who: tuple[str, str] = OPERATOR) -> None:
    """The batches screen of LINE-1 (logging in first when nobody is)."""
    if logged_in(k):
        k.goto("/kiosk/lines")
        screen = k.wait_screen(("lines", "batches"))
    else:
        screen = to_lines(k, who)
    if screen == "lines":
        click_text(k, LINE)
    k.wait_screen("batches")


def to_step(k: Any, wo_ref: str = DEMO_WO, who: tuple[str, str] = OPERATOR) -> str:
    """Log in, choose LINE-1 and the work order (by its ERP reference): start its batch (with
    the confirm dialog) or continue it; returns the screen reached (step, blocked...)."""
    wo = work_order_id(k.server, wo_ref)
    to_batches(k, who)
    batch = batch_of(k.server, wo)
    if batch is None:
        card = k.page.locator("li", has_text=wo)
        card.locator("button[data-commit]").click()
        confirm(k)
    else:
        k.page.locator("li", has_text=batch).get_by_role("link").first.click()
    return k.wait_screen(("step", "blocked", "complete"))


def confirm(k: Any) -> None:
    dialog = k.page.locator("#confirm-dialog")
    dialog.wait_for(state="visible")
    dialog.locator("[data-action=confirm]").click()
    dialog.wait_for(state="hidden")


def commit(k: Any) -> None:
    """Tap the (enabled) primary commit control, then Confirm in the dialog."""
    k.page.locator(".primary[data-commit]:visible:enabled").first.click()
    confirm(k)


def message(k: Any) -> str:
    loc = k.page.locator("#message")
    return loc.inner_text().strip() if loc.count() and loc.is_visible() else ""


def wait_step_changed(k: Any, before: str, timeout: float = 10_000) -> None:
    """Wait until the header no longer shows ``before`` as the step position (or the screen changed)."""
    until(k.page, 
        """before => { if (!document.body) return false;  // between two pages
           const s = document.body.dataset.screen; if (s !== 'step') return true;
           const el = document.querySelector('#batch-header [data-field=step-position]');
           return el && el.innerText.trim() !== before; }""", arg=before, timeout=timeout)


def step_position(k: Any) -> str:
    loc = k.page.locator("#batch-header [data-field=step-position]")
    return loc.inner_text().strip() if loc.count() else ""


# ------------------------------------------------------------------------- simulated scale


def devices(http: Any, base: str) -> list[dict[str, Any]]:
    r = http.get(f"{base}/api/v1/devices")
    r.raise_for_status()
    body = r.json()
    return body.get("devices", body) if isinstance(body, dict) else body


def set_load(http: Any, base: str, device_id: str, load: Decimal | str, unit: str = "kg",
             unstable: bool = False, **extra: Any) -> dict[str, Any]:
    r = http.post(f"{base}/api/v1/simulation/devices/{device_id}",
                  json={"load": str(load), "unit": unit, "unstable": unstable, **extra})
    assert r.status_code < 400, r.text
    return r.json() if r.content else {}


def to_board(k: Any, server: Any) -> None:
    """QA logs in on the QA workstation with user id and password, then opens the board of LINE-1."""
    k.goto("/qa/login")
    k.page.locator("input[name=user_id]").fill(QA_USER[0])
    k.page.locator("input[name=password]").fill(QA_USER[1])
    k.page.locator("button[type=submit]").click()
    k.page.wait_for_load_state()
    k.goto(f"/kiosk/board/{LINE}")
    k.wait_screen("board")


def batch_for(server: Any, erp_ref: str) -> str:
    """The batch started for the work order with this ERP reference."""
    batch = batch_of(server, work_order_id(server, erp_ref))
    assert batch, f"no batch was started for {erp_ref}"
    return batch


_booths = itertools.count(1)


def another_booth(server: Any) -> str:
    """One more clean dispensing booth: each batch a test drives past its equipment check
    keeps a booth claimed (the batch is left unfinished on the shared server)."""
    from datetime import timedelta

    from mes.audit.log import Actor
    from mes.equipment import operations as eq

    booth_id = f"BOOTH-T{next(_booths):02d}"
    with server.db():
        booth = eq.get_equipment("BOOTH-01")
        eq.register_equipment(Actor.system("kiosk-tests"), booth_id, "room", booth.equipment_class,
                              f"Dispensing booth {booth_id}", location="Dispensary", line="LINE-1",
                              clean_hold=timedelta(days=3))
        eq.record_cleaning(Actor.system("kiosk-tests"), booth_id, "routine")
    return booth_id


def confirm_weighing(k: Any, server: Any, batch: str, step: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Confirm the open weighing dialog; the one container record the step stored and the
    weight it records as confirmed ("value unit")."""
    dialog = k.page.locator("#confirm-dialog")
    with k.page.expect_navigation():
        dialog.locator("[data-action=confirm]").click()
    k.wait_screen(("step", "blocked", "complete", "batches"))
    stored = [r for r in step_records(server, batch) if r["step"] == step["id"] and r["kind"] == "container"]
    assert len(stored) == 1, (message(k), stored)
    confirmed = stored[0]["data"]["reading"]["confirmed"]
    return stored[0], f"{confirmed['value']} {confirmed['unit']}"


def drum_on_the_scale(open_kiosk: Any, server: Any, size: str, order: str) -> tuple[Any, ...]:
    """Through the UI: a fresh batch at its first weigh step, an empty container tared, then
    the first 60 kg drum of the lot on the scale (net, stable) and its label scanned.
    Returns the kiosk, its driver, batch, step, scale, lot, container, net weight and the
    scale's places."""
    from decimal import Decimal

    from tests.kiosk.checks import until as wait
    from tests.kiosk.driver import TARE, Driver

    another_booth(server)  # the batches before this one keep theirs claimed
    k = open_kiosk(server, size, start="")
    assert to_step(k, order) == "step"
    batch = batch_for(server, order)
    drv = Driver(k, server, batch)
    step = drv.run_until(lambda s: s["kind"] == "weigh")
    drv.ensure_on_step(step)
    spec = drv.spec(step["id"])
    device = drv.choose_scale(spec)
    places = 2  # the floor scale reads to 0.01 kg
    http = server.api()
    # an empty container on the scale (it shows 0.80 kg, or 0.00 kg under a tare set before), tared;
    # then container and material: the first drum of the lot, net
    set_load(http, server.url, device, TARE, "kg")
    wait(k.page, """() => { const v = document.querySelector('#live-weight [data-field=value]').innerText.trim();
        const st = document.querySelector('#live-weight [data-field=stability]').innerText;
        return (v === '0.80' || v === '0.00') && st.includes('Stable'); }""", timeout=10_000)
    with k.page.expect_response(lambda r: r.url.endswith(f"/devices/{device}/tare")) as answer:
        k.page.locator("[data-action=tare]").click()
    assert answer.value.ok
    drv.tares[device] = TARE
    drv.wait_reading(Decimal(0), places)
    net = Decimal("60.00")  # the first of the lot's two 60 kg drums: more to come, shown with "(+)"
    set_load(http, server.url, device, TARE + net, "kg")
    drv.wait_reading(net, places, stable=True)
    lot = drv.lot_for(spec)
    with server.db():
        from mes.materials import operations as mat

        full = [c.id for c in mat.containers_of(lot) if mat.container_remaining(c) >= net]
    assert full, f"no full drum is left in lot {lot}: the tests before this one on the same server used them"
    drv.scan_lot(full[0])
    return k, drv, batch, step, device, lot, full[0], net, places
