"""Shared set-up for the execution tests: people, sessions, recipes, materials and a
driver that completes a batch's ready steps the way an operator would."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from mes.audit import log
from mes.db import db, utcnow
from mes.equipment import operations as eqops
from mes.equipment.plant import PlantScale, equip_for_recipe
from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.gateway.store import CapturedReading, MemoryReadingStore
from mes.materials import operations as mat
from mes.quantities import convert, to_text
from mes.recipes import model as rm
from mes.signatures.operations import Credentials
from mes.users import operations as users
from mes.users.models import UserSession
from tests.helpers import PASSWORD, SEED, release_lot_as_qa, seed

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PCM = RECIPES / "paracetamol-500mg-tablets.yaml"
CREAM = RECIPES / "moisturising-cream-ow.yaml"

ITEM_KIND = {"api": "api", "excipient": "excipient", "ingredient": "raw_material", "processing_aid": "raw_material",
             "intermediate": "intermediate", "packaging": "packaging"}

PACK_RECIPE = """\
format: mes.master-recipe/v1
id: MR-PCM500-PACK
version: 1
product: {code: FG-PCM500-PACK, name: "Paracetamol 500 mg tablets, packed"}
batch_size: {quantity: "10.000", unit: kg, minimum: "1.000", maximum: "20.000"}
bill_of_materials:
  - {item: BLK-PCM500-TAB, name: Paracetamol 500 mg tablets bulk, role: intermediate, quantity: "10.000", unit: kg,
     tolerance: {percent: "1.0"}}
procedure:
  - id: packing
    title: Packing
    operations:
      - id: pack
        title: Pack
        steps:
          - {id: id_bulk, kind: identify, title: Identify the bulk, instruction: Scan the bulk container., item: BLK-PCM500-TAB}
          - id: w_bulk
            kind: weigh
            title: Weigh the bulk
            instruction: Weigh the bulk tablets into the hopper.
            item: BLK-PCM500-TAB
            scale: {readability: "0.01", unit: kg}
          - id: packed_out
            kind: produce_output
            title: Packed tablets
            instruction: Weigh the packed tablets.
            item: FG-PCM500-PACK
            quantity: "10.000"
            unit: kg
            yield_low: "95.0"
            yield_high: "101.0"
"""


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    seeded: Any
    sessions: dict[str, UserSession]
    clock: Clock
    lots: dict[str, list[str]] = field(default_factory=dict)  # item -> lot ids (first is the good one)
    keys: Any = field(default_factory=lambda: itertools.count())
    readings: MemoryReadingStore = field(default_factory=MemoryReadingStore)  # what the gateway fills
    scales: dict[tuple[Decimal, str, str | None], PlantScale] = field(default_factory=dict)  # requirement -> scale
    equipment: dict[str, str] = field(default_factory=dict)  # equipment class -> equipment id
    sequence: Any = field(default_factory=lambda: itertools.count(1))

    def actor(self, role: str) -> Any:
        uid = self.seeded.users[role]
        terminal = "KIOSK-01" if role == "operator" else "QA-WS-01"
        return users.actor_for(users.get_user(uid), "qa" if role == "qa2" else role, terminal)

    def creds(self, role: str) -> Credentials:
        return Credentials(PASSWORD, user_id=self.seeded.users[role])

    def key(self) -> str:
        return f"k-{next(self.keys)}"


def session_for(user_id: str, terminal: str) -> UserSession:
    row = UserSession(id=f"s-{user_id}-{utcnow().timestamp()}", user_id=user_id, terminal_id=terminal,
                      method="password", started_at=utcnow())
    db.session.add(row)
    log.record(SEED, "auth.login", ("user", user_id), after={"method": "password"})
    db.session.commit()
    return row


def make_world(monkeypatch: Any) -> World:
    seeded = seed()
    users.create_user(SEED, "operator2", "Operator Two", {"operator"}, password=PASSWORD)
    seeded.users["operator2"] = "operator2"
    sessions = {}
    for role in ("operator", "supervisor", "qa", "operator2"):
        uid = seeded.users[role]
        users.acknowledge_esig_accountability(uid, None)
        sessions[role] = session_for(uid, "KIOSK-01" if role.startswith("operator") else "QA-WS-01")
    clock = Clock()
    monkeypatch.setattr(ex, "clock", clock)
    return World(seeded, sessions, clock)


def effective_recipe(world: World, source: Path | str, name: str = "test.yaml") -> str:
    author = world.actor("supervisor")
    rv = store.import_file(author, source) if isinstance(source, Path) else store.import_recipe(author, source, name)
    store.submit_for_review(author, rv.id)
    store.approve(world.sessions["qa"], world.creds("qa"), rv.id, terminal="QA-WS-01")
    store.make_effective(author, rv.id)
    return rv.id


def stock(world: World, recipe: rm.MasterRecipe, *, extra_lots: int = 0) -> None:
    """Items for the BOM and the outputs, and a released lot per BOM item with two big containers."""
    for line in recipe.bill_of_materials:
        if db.session.get(mat.Item, line.item) is None:
            base = "pcs" if line.unit == "pcs" else "kg"
            mat.create_item(SEED, line.item, line.name, base, ITEM_KIND[line.role], shelf_life_days=720)
        if line.item in world.lots:
            continue
        size = line.quantity * 2 if line.unit == "pcs" else (line.quantity * 2 + 1)
        unit = "pcs" if line.unit == "pcs" else "kg"
        for _ in range(1 + extra_lots):
            lot = mat.receive_lot(SEED, line.item, [mat.ContainerIn(to_text(size), unit), mat.ContainerIn(to_text(size), unit)],
                                  manufactured_date=date.today() - timedelta(days=10))
            release_lot_as_qa(lot.id, "tested and released")
            world.lots.setdefault(line.item, []).append(lot.id)
    plant = equip_for_recipe(SEED, recipe, line="LINE-1")
    for sc in plant.scales:
        world.scales[(eqops.get_equipment(sc.equipment_id).readability.normalize(), sc.unit, sc.accuracy_class)] = sc
        world.equipment[sc.equipment_class] = sc.equipment_id
    for eq_id in plant.equipment:
        world.equipment[eqops.get_equipment(eq_id).equipment_class] = eq_id
    out = recipe.produce_output()
    if db.session.get(mat.Item, out.item) is None:
        kind = "finished_good" if out.unit == "pcs" or out.item.startswith("FG") else "intermediate"
        mat.create_item(SEED, out.item, out.name or out.item, "pcs" if out.unit == "pcs" else "kg", kind,
                        shelf_life_days=720)


def start(world: World, version_id: str, quantity: str, unit: str) -> str:
    sup = world.actor("supervisor")
    master = store.master_of(store.get_version(version_id))
    wo = ex.create_work_order(sup, master.product.code, quantity, unit, version_id, erp_ref=f"ERP-{world.key()}")
    ex.release_work_order(sup, wo.id)
    ex.dispatch_work_order(sup, wo.id, "LINE-1")
    return ex.start_batch(world.actor("operator"), wo.id).id


def _mid(low: Decimal | None, high: Decimal | None, target: Decimal | None, default: Decimal) -> Decimal:
    if target is not None:
        return target
    if low is not None and high is not None:
        return (low + high) / 2
    if high is not None:
        return high / 2
    if low is not None:
        return low + 1
    return default


def _q(value: Decimal, precision: int) -> str:
    return to_text(value.quantize(Decimal(1).scaleb(-precision)))


IDENTITY = {"make": "Mettler-Toledo", "model": "ICS685", "serial": "B812345678", "firmware": "4.20"}


def scale_for(world: World, spec: rm.WeighStep) -> PlantScale:
    """The registered scale that meets the weigh step's requirement."""
    return world.scales[(spec.scale.readability.normalize(), spec.scale.unit, spec.scale.accuracy_class)]


def put_reading(world: World, device_id: str, value: Decimal | str | None, unit: str, *, stable: bool = True,
                status: str | None = None, at: datetime | None = None, raw: bytes | None = None) -> CapturedReading:
    """What the gateway does: store the device's latest reading (MT-SICS-style raw reply)."""
    shown = None if value is None else Decimal(str(value))
    status = status or ("ok" if stable else "dynamic")
    if raw is None:
        raw = (f"S {'S' if stable else 'D'} {shown:>10} {unit}\r\n" if shown is not None else "S I\r\n").encode()
    reading = CapturedReading(device_id=device_id, sequence=next(world.sequence), status=status, value=shown,
                              unit=unit, stable=stable, raw=raw, at=at or utcnow(), identity=dict(IDENTITY))
    world.readings.put(reading)
    return reading


def confirmed(reading: CapturedReading) -> dict[str, Any]:
    """What the confirm dialog sends: the reading it showed (device, sequence, value, unit)."""
    assert reading.value is not None
    return {"device_id": reading.device_id, "sequence": reading.sequence, "value": str(reading.value),
            "unit": reading.unit}


def tare_for(spec: rm.WeighStep, unit: str, decimals: int, net: Decimal) -> dict[str, Any]:
    """A container tare as the scale holds it after Tare (a twentieth of the net, as a lined
    container would weigh), or the container's preset tare for ``tare: preset``."""
    value = max(net / 20, Decimal(1).scaleb(-decimals)).quantize(Decimal(1).scaleb(-decimals))
    return {"source": "preset" if spec.tare == "preset" else "scale_tare", "value": str(value), "unit": unit}


def weigh_payload(world: World, spec: rm.WeighStep, lot: str, container: str, value: Decimal | str,
                  unit: str | None = None, *, more: bool = False) -> dict[str, Any]:
    """Load the step's scale with ``value`` (in ``unit``, default the step's), and the payload naming it."""
    sc = scale_for(world, spec)
    amount = convert(Decimal(str(value)), unit or spec.unit or sc.unit, sc.unit)
    shown = amount.quantize(Decimal(1).scaleb(-sc.decimals))
    tare = tare_for(spec, sc.unit, sc.decimals, shown) if spec.tare != "none" else None
    gross = shown + Decimal(tare["value"]) if tare and tare["source"] == "preset" else shown  # preset: the scale shows gross
    reading = put_reading(world, sc.device_id, gross, sc.unit)
    payload: dict[str, Any] = {"lot_id": lot, "container_id": container, **confirmed(reading)}
    if tare is not None:
        payload["tare"] = tare
    if more:
        payload["more"] = True
    return payload


def weigh(world: World, batch_id: str, step_id: str, lot: str, container: str, value: Decimal | str,
          unit: str | None = None, *, more: bool = False, key: str | None = None) -> dict[str, Any]:
    """Weigh one container on the step's scale and complete (or add to) the step."""
    spec = ex.control_recipe(ex.get_batch(batch_id)).step(step_id)
    payload = weigh_payload(world, spec, lot, container, value, unit, more=more)
    return ex.complete_step(world.actor("operator"), batch_id, step_id, payload, key or world.key(),
                            ex.get_step(batch_id, step_id).version, readings=world.readings)


def payload_for(world: World, batch_id: str, step: ex.BatchStep, spec: rm.Step,
                overrides: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(payload, role) for completing ``step`` as the happy path."""
    if spec.id in overrides:
        over = overrides[spec.id]
        return (over(world) if callable(over) else over), "operator"
    lots = world.lots
    if isinstance(spec, rm.InstructionStep):
        return {"confirm": True}, "operator"
    if isinstance(spec, rm.NumericStep):
        return {"value": _q(_mid(spec.low, spec.high, spec.target, Decimal(1)), spec.precision)}, "operator"
    if isinstance(spec, rm.SampleCheckStep):
        v = _q(_mid(spec.low, spec.high, spec.target, Decimal(1)), spec.precision)
        return {"results": [v] * spec.samples}, "operator"
    if isinstance(spec, rm.EquipmentCheckStep):
        return {"equipment_id": world.equipment[spec.equipment_class],
                "label_states": list(spec.required_states)}, "operator"
    if isinstance(spec, rm.IdentifyStep):
        if spec.scan == "dispensed":
            used = [c.lot_id for c in mat.consumptions(batch_id=batch_id) if c.item_code == spec.item]
            return {"lot_id": used[0]}, "operator"
        return {"lot_id": lots[spec.item][0]}, "operator"
    if isinstance(spec, rm.WeighStep):
        assert spec.target is not None and spec.unit is not None
        lot = lots[spec.item][0]
        container = mat.containers_of(lot)[0].id
        return weigh_payload(world, spec, lot, container, spec.target), "operator"
    if isinstance(spec, (rm.CalculationStep, rm.TimerStep)):
        return {}, "operator"
    if isinstance(spec, rm.SignatureStep):
        role = "supervisor" if spec.second_person and "supervisor" in spec.roles else spec.roles[0]
        return {"password": PASSWORD, "user_id": world.seeded.users[role]}, role
    if isinstance(spec, rm.ProduceOutputStep):
        return {"quantity": to_text(spec.quantity), "unit": spec.unit}, "operator"
    raise AssertionError(spec.kind)


def do_step(world: World, batch_id: str, step_id: str, overrides: dict[str, Any] | None = None,
            payload: dict[str, Any] | None = None, role: str | None = None) -> dict[str, Any]:
    step = ex.get_step(batch_id, step_id)
    spec = ex.control_recipe(ex.get_batch(batch_id)).step(step_id)
    if payload is None:  # (a weigh payload loads the scale: only when it is the one sent)
        payload, auto_role = payload_for(world, batch_id, step, spec, overrides or {})
        role = role or auto_role
    role = role or "operator"
    actor = world.actor(role)
    if isinstance(spec, rm.TimerStep) and not spec.from_step and step.state != "in_progress":
        ex.start_step(actor, batch_id, step_id, world.key(), step.version)
        world.clock.advance((spec.minimum.seconds if spec.minimum else 0) + 1)
        step = ex.get_step(batch_id, step_id)
    return ex.complete_step(actor, batch_id, step_id, payload, world.key(), step.version,
                            session_row=world.sessions.get(role), readings=world.readings)


def ready_steps(batch_id: str) -> list[str]:
    return [s.step_id for s in ex.steps_of(batch_id) if s.state == "ready"]


def run_until(world: World, batch_id: str, stop_before: str | None = None,
              overrides: dict[str, Any] | None = None) -> None:
    """Complete ready steps in order until ``stop_before`` is the next ready step (or all are done)."""
    while True:
        ready = ready_steps(batch_id)
        if not ready or ready[0] == stop_before:
            return
        do_step(world, batch_id, ready[0], overrides)


def second_qa(world: World) -> tuple[UserSession, Credentials]:
    """A QA person who took no part in any batch (segregation of duties: a QA gate's signer
    may not release the batch): ``qa2``, created and signed in on first use."""
    if "qa2" not in world.sessions:
        users.create_user(SEED, "qa2", "QA Two", {"qa"}, password=PASSWORD)
        users.acknowledge_esig_accountability("qa2", None)
        world.seeded.users["qa2"] = "qa2"
        world.sessions["qa2"] = session_for("qa2", "QA-WS-01")
    return world.sessions["qa2"], world.creds("qa2")


def independent_signer(world: World, batch_id: str) -> tuple[UserSession, Credentials]:
    """Session and credentials of :func:`independent_qa`."""
    qa = independent_qa(world, batch_id)
    return world.sessions[qa], world.creds(qa)


def review_exceptions(world: World, batch_id: str, role: str | None = None) -> int:
    """QA (by default one who took no part in the batch) marks every current exception of the
    batch reviewed; how many it marked."""
    role = role or independent_qa(world, batch_id)
    pending = ex.unreviewed_exceptions(batch_id)
    for e in pending:
        ex.mark_exception_reviewed(world.actor(role), batch_id, e["key"], "reviewed")
    return len(pending)


def independent_qa(world: World, batch_id: str) -> str:
    """The QA role that may review and decide the batch (segregation of duties): ``qa``, or
    ``qa2`` when ``qa`` performed or verified a step of it (a QA gate)."""
    if ex.performed_or_verified(batch_id, world.seeded.users["qa"]):
        second_qa(world)
        return "qa2"
    return "qa"


def review_and_release(world: World, batch_id: str) -> None:
    """A QA person who performed and verified no step of the batch reviews every exception and
    the audit trail, signs the review, and releases it."""
    from mes.audit.review import review_trail

    qa = independent_qa(world, batch_id)
    review_exceptions(world, batch_id, qa)
    review_trail(world.sessions[qa], world.creds(qa), batch_id, "trail reviewed", "QA-WS-01")
    ex.review_batch(world.sessions[qa], world.creds(qa), batch_id, terminal="QA-WS-01")
    ex.release_batch(world.sessions[qa], world.creds(qa), batch_id, "released", terminal="QA-WS-01")


#: a dispensing operation: the booth's equipment check, identify, a multi-container weighing
#: (``w_raw`` on a 1 g class II scale), optional steps after it, and the output
DISPENSING_RECIPE = """\
format: mes.master-recipe/v1
id: {recipe_id}
version: 1
product: {{code: {product}, name: {product_name}}}
batch_size: {{quantity: "10.000", unit: kg, minimum: "1.000", maximum: "20.000"}}
bill_of_materials:
  - {{item: {item}, name: Raw material, role: ingredient, quantity: "2.000", unit: kg, tolerance: {{percent: "1.0"}}}}
procedure:
  - id: dispensing
    title: Dispensing
    operations:
      - id: disp
        title: Dispense
        steps:
          - {{id: booth, kind: equipment_check, title: Booth, instruction: Scan the booth label.,
             equipment_class: Dispensing booth, required_states: [clean, not_in_use], claim: true}}
          - {{id: id_raw, kind: identify, title: Identify, instruction: Scan the container., item: {item}}}
          - id: w_raw
            kind: weigh
            title: Weigh the raw material
            instruction: {instruction}
            item: {item}
            scale: {{readability: "1", unit: g, accuracy_class: II}}
            multiple_containers: true
{after_weigh}          - {{id: out, kind: produce_output, title: Output, instruction: Weigh the output., item: {product},
             quantity: "2.000", unit: kg, yield_low: "90.0", yield_high: "101.0"}}
"""


def dispensing_recipe(recipe_id: str, product: str, product_name: str, item: str, *,
                      instruction: str = "Weigh the raw material.", after_weigh: str = "") -> str:
    """The text of :data:`DISPENSING_RECIPE` for these ids (``after_weigh``: YAML lines of the
    weigh step's further keys and of the steps between it and the output)."""
    return DISPENSING_RECIPE.format(recipe_id=recipe_id, product=product, product_name=product_name, item=item,
                                    instruction=instruction, after_weigh=after_weigh)


def ready_to_weigh(monkeypatch: Any, recipe: str, name: str, *, stop_before: str = "w_raw",
                   extra_lots: int = 0) -> tuple[World, str]:
    """A started batch of ``recipe`` with its steps done up to ``stop_before``."""
    world = make_world(monkeypatch)
    rv = effective_recipe(world, recipe, name)
    stock(world, store.master_of(store.get_version(rv)), extra_lots=extra_lots)
    batch_id = start(world, rv, "10.000", "kg")
    run_until(world, batch_id, stop_before=stop_before)
    return world, batch_id


def step_scale(world: World, batch_id: str, step: str = "w_raw") -> str:
    """The device id of the scale the batch's weigh step ``step`` uses."""
    return scale_for(world, ex.control_recipe(ex.get_batch(batch_id)).step(step)).device_id
