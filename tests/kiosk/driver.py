"""A person at the kiosk doing a batch's steps through the screens, one step kind at a time.

Everything happens through the page (taps on the keypad, scans typed by a keyboard-wedge
scanner, the confirm dialog); the database is only read, to choose plausible entries (the
lot to scan, the value to type) and to check what was stored. Entries are chosen as the
simulated operator (mes.execution.sim_operator) chooses them, so the values are in limits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

from sqlalchemy import select

from tests.kiosk import flows
from tests.kiosk.checks import until

TARE = Decimal("0.80")  # an empty lined container on the floor scale, kg
SMALL_TARE = Decimal("0.25")  # a smaller one on a bench balance, kg


@dataclass
class Shown:
    """What a screen said after a commit (the notice), for comparing with the database."""

    step: str
    kind: str
    notice: str
    message: str = ""


@dataclass
class Driver:
    k: Any
    server: Any
    batch_id: str
    verifier: tuple[str, str] = flows.SUPERVISOR
    on_screen: Callable[[str, Any], None] | None = None  # (label, kiosk) after each new screen
    shown: list[Shown] = field(default_factory=list)
    captured: list[dict[str, str]] = field(default_factory=list)  # the live weight at each capture
    tares: dict[str, Decimal] = field(default_factory=dict)  # device -> the tare set on it
    _sim: Any = None

    # -- where are we
    def step(self) -> dict[str, Any] | None:
        return flows.current_step(self.server, self.batch_id)

    def spec(self, step_id: str) -> Any:
        from mes.execution import operations as ex

        with self.server.db():
            return ex.control_recipe(ex.get_batch(self.batch_id)).step(step_id)

    def run_until(self, stop: Callable[[dict[str, Any]], bool], limit: int = 200) -> dict[str, Any]:
        for _ in range(limit):
            step = self.step()
            if step is None or stop(step):
                return step or {}
            self.do(step)
        raise AssertionError(f"gave up after {limit} steps")

    def finish(self, limit: int = 200) -> None:
        self.run_until(lambda s: False if s else True, limit)

    def _screen(self, label: str) -> None:
        if self.on_screen is not None:
            self.on_screen(label, self.k)

    # -- one step
    def do(self, step: dict[str, Any]) -> None:
        k = self.k
        self.ensure_on_step(step)
        spec = self.spec(step["id"])
        kind = step["kind"]
        self._screen(f"step-{kind}")
        if kind == "instruction" or kind == "calculation":
            self.commit(step)
        elif kind == "equipment_check":
            self.equipment(step, spec)
        elif kind == "identify":
            self.identify(step, spec, self.lot_for(spec))
        elif kind == "weigh":
            self.weigh(step, spec)
        elif kind == "signature":
            self.sign(step, spec)
        elif kind == "timer":
            self.timer(step, spec)
        elif kind in ("numeric", "produce_output"):
            self.numeric(step, spec)
        elif kind == "sample_check":
            self.samples(step, spec)
        else:
            raise AssertionError(f"the test does not know step kind {kind}")
        after = self.step()
        assert after is None or after["id"] != step["id"] or after["state"] == "in_progress", \
            f"step {step['id']} was not recorded: {flows.message(k)!r}\n{self.server.log_tail(1500)}"

    def ensure_on_step(self, step: dict[str, Any]) -> None:
        k = self.k
        if k.screen() != "step" or k.page.evaluate("document.body.dataset.step") != step["id"]:
            k.goto(f"/kiosk/batches/{self.batch_id}/steps/{step['id']}")
            k.wait_screen(("step", "blocked"))
        assert k.screen() == "step", f"step {step['id']} shows {k.screen()}: {flows.message(k)}"
        pos = flows.step_position(k)
        assert pos == f"Step {step['k']} of {step['n']}" or not pos.startswith("Step"), (pos, step)

    # -- the commit: primary control, the confirm dialog, the page that follows
    def commit(self, step: dict[str, Any], control: str = ".primary[data-commit]:visible") -> str:
        k = self.k
        button = k.page.locator(control).first
        until(k.page, "el => !el.disabled", arg=button.element_handle(), timeout=10_000)
        button.click()
        dialog = k.page.locator("#confirm-dialog")
        dialog.wait_for(state="visible")
        self._screen(f"confirm-{step['kind']}")
        with k.page.expect_navigation():
            dialog.locator("[data-action=confirm]").click()
        k.wait_screen(("step", "blocked", "complete", "batches", "error"))
        notice = k.page.locator("#notice")
        text = notice.inner_text().strip() if notice.count() else ""
        self.shown.append(Shown(step["id"], step["kind"], text, flows.message(k)))
        return text

    # -- scanning
    def scan(self, code: str, shown: str) -> None:
        """Scan ``code`` with nothing focused until the page shows it (``shown``: JS with the code as arg)."""
        self.k.page.mouse.click(3, self.k.page.viewport_size["height"] - 3)
        self.k.scan_until(code, shown)

    def equipment(self, step: dict[str, Any], spec: Any) -> None:
        from mes.equipment.models import Equipment

        with self.server.db() as db:
            eq = db.session.execute(select(Equipment.id).where(Equipment.equipment_class == spec.equipment_class,
                                                               Equipment.active.is_(True),
                                                               Equipment.status.in_(("available", "clean")))
                                    .order_by(Equipment.id)).scalars().first()
        assert eq, f"no free, clean equipment of class {spec.equipment_class!r} is registered"
        self.scan(eq, "code => document.querySelector('[data-field=scanned]').innerText.includes(code)")
        for state in spec.required_states:
            box = self.k.page.locator(f"input[name=states][value='{state}']")
            if not box.is_checked():
                self.k.page.locator("label.choice", has=box).click()
        self.commit(step)

    def lot_for(self, spec: Any) -> str:
        """The lot to scan: a dispensed lot of this batch, or the first usable released lot."""
        from mes.materials import operations as mat

        with self.server.db():
            if getattr(spec, "scan", "lot") == "dispensed":
                used = [c.lot_id for c in mat.consumptions(batch_id=self.batch_id) if c.item_code == spec.item]
                assert used, f"nothing of {spec.item} was dispensed into {self.batch_id}"
                return used[0]
            for lot in mat.list_lots(item_code=spec.item, status="released", limit=1000):
                if mat.check_usable(lot.id, spec.item).ok:
                    return lot.id
        raise AssertionError(f"no usable lot of {spec.item}")

    def identify(self, step: dict[str, Any], spec: Any, lot: str) -> None:
        self.scan_lot(lot)
        self.commit(step)

    def scan_lot(self, label: str) -> dict[str, str]:
        """Scan a lot or container label; wait for the kiosk to show it and its status."""
        k = self.k
        self.scan(label, "code => { const s = document.querySelector('[data-field=scanned]'); return s && "
                         "s.innerText.trim() === code && document.querySelector('[data-field=lot-status][data-status]'); }")
        status = k.page.locator("[data-field=lot-status]")
        return {"status": status.get_attribute("data-status") or "", "text": status.inner_text().strip()}

    # -- weighing on the simulated scale
    def weigh(self, step: dict[str, Any], spec: Any, amounts: list[Decimal] | None = None,
              out_of_tolerance: Decimal | None = None) -> None:
        """Tare, then dispense ``amounts`` (default: the target, in one container) from the lot's
        containers; with ``out_of_tolerance`` report that weight instead (deviation)."""
        from mes.materials import operations as mat
        from mes.quantities import convert

        k = self.k
        device = self.choose_scale(spec)
        from mes.equipment import operations as eqo

        lot = self.lot_for(spec)
        with self.server.db():
            scale = eqo.equipment_for_device(device)  # the kiosk's choice of scale: its unit and digits
            assert scale is not None and scale.readability is not None and scale.readability_uom
            scale_unit = scale.readability_uom
            places = max(0, -scale.readability.normalize().as_tuple().exponent)
            held = [(c.id, convert(mat.container_remaining(c), c.uom, spec.unit)) for c in mat.containers_of(lot)
                    if mat.container_remaining(c) > 0]
            containers = [c for c, _ in held]
        assert containers, f"lot {lot} has nothing left"
        if out_of_tolerance is not None:
            amounts = [out_of_tolerance]
        if not amounts:  # the target, container by container as the lot's containers hold it
            amounts, left = [], Decimal(spec.target)
            for _, have in held:
                if left <= 0:
                    break
                amounts.append(min(have.quantize(Decimal(1).scaleb(-places), ROUND_DOWN), left))
                left -= amounts[-1]
        tare = TARE if scale_unit == "kg" else convert(SMALL_TARE, "kg", scale_unit)
        http = self.server.api()
        for i, amount in enumerate(amounts):
            # an empty container on the pan (the display shows it less any tare still set), then Tare
            flows.set_load(http, self.server.url, device, tare, scale_unit)
            # less the tare this driver set, or one an earlier test on the same server left set
            self.wait_reading((tare - self.tares.get(device, Decimal(0)), Decimal(0)), places)
            with k.page.expect_response(lambda r: r.url.endswith(f"/devices/{device}/tare")) as answer:
                k.page.locator("[data-action=tare]").click()
            assert answer.value.ok, f"Tare refused: {answer.value.status} {answer.value.text()[:200]}"
            self.tares[device] = tare
            self.wait_reading(Decimal(0), places)
            net = convert(Decimal(amount), spec.unit, scale_unit).quantize(Decimal(1).scaleb(-places), ROUND_DOWN)
            flows.set_load(http, self.server.url, device, tare + net, scale_unit)
            self.wait_reading(net, places, stable=True)
            self._screen("weigh-live")
            container = containers[min(i, len(containers) - 1)]
            self.scan_lot(container)
            if out_of_tolerance is not None:
                report = k.page.locator("[data-action=out-of-tolerance]")
                report.wait_for(state="visible")
                assert k.page.locator("[data-action=capture]").is_disabled(), "capture enabled out of tolerance"
                self._screen("weigh-out-of-tolerance")
                self.commit(step, "[data-action=out-of-tolerance]")
                return
            live = k.page.locator("#live-weight")
            self.captured.append({"step": step["id"], "value": live.locator("[data-field=value]").inner_text().strip(),
                                  "unit": live.locator("[data-field=unit]").inner_text().strip()})
            self.commit(step, "[data-action=capture]")

    def choose_scale(self, spec: Any) -> str:
        """The scale the recipe asks for (readability, unit, class); picked on the screen if the
        kiosk offered another one first. Returns its device id."""
        from mes.equipment import operations as eqo

        k = self.k
        with self.server.db():
            wanted = [e.device_id for e in eqo.list_equipment(kind="scale") if e.device_id
                      and e.readability_uom == spec.scale.unit and e.readability == spec.scale.readability
                      and (not spec.scale.accuracy_class or e.accuracy_class == spec.scale.accuracy_class)]
        device = k.page.locator("#weigh").get_attribute("data-device")
        assert device, "the weigh screen names no scale"
        if wanted and device not in wanted:
            link = k.page.locator(f"nav.scales a[href*='device={wanted[0]}']")
            assert link.count(), f"the weigh screen does not offer {wanted[0]}"
            with k.page.expect_navigation():
                link.click()
            k.wait_screen("step")
            device = k.page.locator("#weigh").get_attribute("data-device")
            self._screen("weigh-scale-chosen")
        return str(device)

    def wait_reading(self, value: Decimal | tuple[Decimal, ...], places: int, stable: bool = False,
                     timeout: float = 10_000) -> None:
        """Until the live weight shows ``value`` (or one of several) with the scale's places."""
        shown = [f"{v:.{places}f}" for v in (value if isinstance(value, tuple) else (value,))]
        until(self.k.page,
            """([vs, stable]) => { const el = document.querySelector('#live-weight [data-field=value]');
               const st = document.querySelector('#live-weight [data-field=stability]');
               return el && vs.includes(el.innerText.trim()) && (!stable || st.innerText.includes('Stable')); }""",
            arg=[shown, stable], timeout=timeout)

    # -- signatures
    def sign(self, step: dict[str, Any], spec: Any) -> None:
        k = self.k
        who = self.verifier if spec.second_person else flows.OPERATOR
        current = k.page.evaluate("document.body.dataset.user")
        if not spec.second_person and "operator" not in spec.roles:
            who = self.verifier  # e.g. a supervisor's own signature: they log in at the kiosk
            self.relogin(who)
            self.ensure_on_step(step)
        self.scan(who[0], "b => document.querySelector('input[name=badge]').value === b")
        k.page.locator("[data-entry-target=pin]").click()
        k.keypad(who[1])
        ack = k.page.locator("input[name=esig_ack]")
        if ack.count() and not ack.is_checked():
            k.page.locator("label.choice", has=ack).click()
        self._screen("step-signature-filled")
        self.commit(step)
        if k.page.evaluate("document.body.dataset.user") != current and current:
            self.relogin(flows.OPERATOR)

    def relogin(self, who: tuple[str, str]) -> None:
        k = self.k
        k.page.locator("#logout-form button").click()
        k.wait_screen("login")
        k.login(*who)

    # -- timers: start, let the server's clock pass the minimum, stop
    def timer(self, step: dict[str, Any], spec: Any) -> None:
        k = self.k
        if k.page.locator("[data-start]").count():
            self.commit(step)
            self._screen("step-timer-running")
        low = spec.minimum.seconds if spec.minimum else 0
        high = spec.maximum.seconds if spec.maximum else low + 600
        if not spec.from_step:
            self.server.advance_clock(low + min((high - low) / 2, 300))
        k.page.reload()
        k.wait_screen("step")
        self.commit(step)

    # -- numbers on the keypad
    def value_for(self, step: dict[str, Any], spec: Any) -> str:
        sim = self.sim()
        batch = self.server.api().get(f"{self.server.url}/api/v1/batches/{self.batch_id}").json()
        if step["kind"] == "produce_output":
            payload, _, _ = sim.payload(batch, {"id": step["id"]}, spec)
            return str(payload["quantity"])
        from mes.steps.numeric import sim_value

        return str(sim_value(sim, batch, spec))

    def sim(self) -> Any:
        if self._sim is None:
            from mes.execution import operations as ex
            from mes.execution.sim_operator import Client, Login, SimOperator

            self._sim = SimOperator(self.server.url, "KIOSK-01:x", Login(badge="-"), echo=None)
            self._sim.operator = Client(self.server.url, None)  # never called: only its entry rules are used
            with self.server.db():
                self._sim.recipe = ex.control_recipe(ex.get_batch(self.batch_id))
        return self._sim

    def enter(self, text: str) -> None:
        """Type ``text`` on the keypad; it must appear in [data-field=entry]."""
        k = self.k
        k.keypad(text)
        try:
            until(k.page, "t => document.querySelector('[data-field=entry]').innerText.replace(/\\s/g, '').includes(t)",
                  arg=text)
        except TimeoutError:
            shown = k.page.locator("[data-field=entry]").inner_text().strip()
            raise AssertionError(
                f"the keypad does not write into [data-field=entry] on step {k.page.evaluate('document.body.dataset.step')}"
                f" ({k.page.evaluate('document.body.dataset.kind')}): typed {text!r}, shown {shown!r}") from None

    def numeric(self, step: dict[str, Any], spec: Any, value: str | None = None) -> None:
        self.enter(value or self.value_for(step, spec))
        self._screen(f"step-{step['kind']}-entered")
        self.commit(step)

    def samples(self, step: dict[str, Any], spec: Any) -> None:
        from mes.steps.sample_check import sim_results

        results = [str(r) for r in sim_results(self.sim(), spec)]
        for r in results:
            self.enter(r)
            self.k.page.locator("[data-action=add-result]").click()
        self._screen("step-sample_check-entered")
        self.commit(step)
