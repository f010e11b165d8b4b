"""Equipment a recipe needs, registered in one call: for demos, simulations and tests.

:func:`equip_for_recipe` registers, for an approved master recipe, one scale per distinct
scale requirement of its weigh steps (readability, unit, accuracy class; capacity sized for
the largest weighing, minimum weight twenty scale divisions) tied to a device id the gateway
reads, and one piece of equipment per class its equipment checks name; each is cleaned and
calibrated (passed, due in a year) so a batch can run. Existing equipment of a class is
reused, so the call is idempotent and recipes share their plant. A real plant registers its
equipment through the API with its own numbers and certificates; this is the shortcut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sqlalchemy import select

from mes.audit.log import Actor
from mes.db import db, utcnow
from mes.equipment import operations as ops
from mes.equipment.models import Equipment, EquipmentKind
from mes.plant_time import plant_date
from mes.quantities import convert, to_text
from mes.recipes import model as rm
from mes.recipes.scaling import scale

CLEAN_FOR = timedelta(days=7)
CALIBRATION_VALID = timedelta(days=365)


@dataclass(frozen=True)
class PlantScale:
    """A registered scale: what a simulator (or the gateway) needs to serve its device."""

    equipment_id: str
    device_id: str
    equipment_class: str
    unit: str
    decimals: int
    capacity: Decimal
    accuracy_class: str | None

    def to_json(self) -> dict[str, Any]:
        return {"equipment_id": self.equipment_id, "device_id": self.device_id, "class": self.equipment_class,
                "unit": self.unit, "decimals": self.decimals, "capacity": to_text(self.capacity),
                "accuracy_class": self.accuracy_class}


@dataclass(frozen=True)
class PlantEquipment:
    scales: list[PlantScale]
    equipment: list[str]


def _places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _slug(text: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", text)
    return "-".join(w[:4].upper() for w in words[:3]) or "EQ"


def _kind(equipment_class: str) -> str:
    low = equipment_class.lower()
    if "scale" in low or "balance" in low:
        return EquipmentKind.SCALE.value
    if "booth" in low or "room" in low:
        return EquipmentKind.ROOM.value
    if "vessel" in low or "tank" in low:
        return EquipmentKind.VESSEL.value
    if "line" in low or "filler" in low or "press" in low:
        return EquipmentKind.LINE.value
    return EquipmentKind.OTHER.value


def _first_free_id(base: str) -> str:
    n = 1
    while db.session.get(Equipment, f"{base}-{n:02d}") is not None:
        n += 1
    return f"{base}-{n:02d}"


def _ready(actor: Actor, eq: Equipment) -> None:
    """Calibrated (passed, due in a year) and cleaned now (valid a week), unless already so."""
    now = utcnow()
    if ops.check_equipment(eq.id, ["calibrated"]).code != "ok":
        ops.record_calibration(actor, eq.id, "pass", f"CAL-{eq.id}-{plant_date(now).isoformat()}",
                               due=plant_date(now + CALIBRATION_VALID), calibrated_by="Demo Metrology Services")
    if eq.status not in ("in_use", "maintenance") and ops.check_equipment(eq.id, ["clean"]).code != "ok":
        ops.record_cleaning(actor, eq.id, "full clean", valid_for=CLEAN_FOR)


def equip_for_recipe(actor: Actor, master: rm.MasterRecipe, *, line: str | None = None,
                     device_prefix: str = "SIM-SCALE") -> PlantEquipment:
    """Register (or reuse) the scales and equipment ``master`` needs, cleaned and calibrated."""
    control = scale(master, master.batch_size.quantity, master.batch_size.unit)
    checks = [ref.step for ref in control.steps() if isinstance(ref.step, rm.EquipmentCheckStep)]
    # scale requirement -> targets (in the scale's unit)
    needs: dict[tuple[Decimal, str, str | None], list[Decimal]] = {}
    for ref in control.steps():
        step = ref.step
        if isinstance(step, rm.WeighStep) and step.target is not None and step.unit is not None:
            req = (step.scale.readability.normalize(), step.scale.unit, step.scale.accuracy_class)
            needs.setdefault(req, []).append(convert(step.target, step.unit, step.scale.unit))
    scales: list[PlantScale] = []
    scale_classes: set[str] = set()
    for (readability, unit, accuracy), targets in sorted(needs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cls = next((c.equipment_class for c in checks if _kind(c.equipment_class) == EquipmentKind.SCALE.value
                    and accuracy and re.search(rf"\bclass {accuracy}\b", c.equipment_class)), None)
        cls = cls or f"Scale d = {to_text(readability)} {unit}" + (f", class {accuracy}" if accuracy else "")
        scale_classes.add(cls)
        capacity = (max(targets) * Decimal("1.5")).quantize(Decimal(1), rounding=ROUND_CEILING)
        eq = next((e for e in ops.list_equipment(kind=EquipmentKind.SCALE.value, equipment_class=cls)
                   if e.device_id and e.readability_uom == unit and e.readability == readability), None)
        if eq is None:
            device_id = _first_free_id(device_prefix)
            while ops.equipment_for_device(device_id) is not None:  # pragma: no cover - ids taken by hand
                device_id = _first_free_id(device_id)
            eq = ops.register_equipment(
                actor, _first_free_id("SC"), EquipmentKind.SCALE.value, cls, cls.split(",")[0], line=line,
                device_id=device_id, driver="virtual", capacity=(to_text(capacity), unit),
                min_weight=(to_text(readability * 20), unit), readability=(to_text(readability), unit),
                accuracy_class=accuracy)
        _ready(actor, eq)
        assert eq.device_id is not None and eq.capacity is not None
        scales.append(PlantScale(eq.id, eq.device_id, cls, unit, _places(readability), eq.capacity, accuracy))
    others: list[str] = []
    for check in checks:
        cls = check.equipment_class
        if cls in scale_classes:
            continue
        existing = db.session.execute(select(Equipment).where(Equipment.equipment_class == cls,
                                                              Equipment.active.is_(True))).scalars().first()
        kind = _kind(cls)
        if existing is None:
            if kind == EquipmentKind.SCALE.value:
                kind = EquipmentKind.OTHER.value  # a scale checked but never weighed on: no device
            existing = ops.register_equipment(actor, _first_free_id(_slug(cls)), kind, cls, cls[:200], line=line,
                                              clean_hold=CLEAN_FOR)
        _ready(actor, existing)
        if existing.id not in others:
            others.append(existing.id)
    return PlantEquipment(scales, others)
