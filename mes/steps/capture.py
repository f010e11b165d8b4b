"""A value captured from a device is the reading the operator confirmed (issue 14).

The confirm dialog shows one reading; the completion carries it (``device_id``,
``sequence``, ``value``). The engine records exactly that reading when it is still the
device's latest usable one (stable unless the step allows moving readings, not older than
the age limit, the same value); if the instrument has moved on, nothing is recorded and the
operator is told. Any step kind that captures from a device uses :func:`confirmed_reading`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from mes.quantities import parse_decimal, to_text
from mes.steps.context import StepContext


@dataclass(frozen=True)
class Confirmed:
    """The confirmed reading, checked: the equipment, the stored reading, its value and
    unit, and the reading as the step record keeps it (raw reply, identity, sequences)."""

    equipment: Any
    captured: Any
    value: Decimal
    unit: str
    reading: dict[str, Any]


def confirmed_reading(ctx: StepContext, *, require_stable: bool, prefix: str = "") -> Confirmed:
    """The reading the operator confirmed (payload members ``{prefix}device_id``,
    ``{prefix}sequence``, ``{prefix}value``), checked against the gateway's latest reading
    of that device. Refused, with the reason: an unregistered device, no gateway, no reading,
    a reading the server has not received yet, a reading that moved since it was confirmed,
    an unstable, faulty or stale reading."""
    from mes.db import utcnow
    from mes.equipment import operations as equipment
    from mes.errors import ValidationFailed

    device_id = ctx.text(f"{prefix}device_id", "The scale (device_id)")
    seen = ctx.payload.get(f"{prefix}sequence")
    if not isinstance(seen, int) or isinstance(seen, bool) or seen < 0:
        raise ValidationFailed(f"{prefix}sequence is the number of the reading the confirm dialog showed "
                               "(a whole number).", field=f"{prefix}sequence")
    try:
        shown = parse_decimal(ctx.payload.get(f"{prefix}value"), signed=True)
    except (ValueError, TypeError):
        raise ValidationFailed(f"{prefix}value is the value the confirm dialog showed, written as a string "
                               "(e.g. \"100.04\").", field=f"{prefix}value") from None
    shown_unit = ctx.payload.get(f"{prefix}unit")
    eq = equipment.equipment_for_device(device_id)
    if eq is None:
        ctx.refuse(f"Scale {device_id} is not registered in the MES and must not be used. "
                   "Use a registered scale or tell the supervisor.", code="unknown_device", device_id=device_id)
    if ctx.readings is None:
        ctx.refuse("No device gateway feeds this server, so no weight can be taken from a scale. "
                   "Tell the supervisor.", code="no_gateway", device_id=device_id)
    captured = ctx.readings.latest(device_id)
    if captured is None:
        ctx.refuse(f"{eq.label} has sent no reading. Check that the scale is on and connected, then weigh "
                   "again.", code="no_reading", device_id=device_id, equipment_id=eq.id)
    from mes.gateway.capture import device_link_refusal

    unlinked = device_link_refusal(ctx.readings, captured, eq.label)
    if unlinked is not None:  # a silent device's last reading is never taken, whatever its age
        ctx.refuse(unlinked, code="device_not_connected", device_id=device_id, equipment_id=eq.id)
    if captured.sequence < seen:
        ctx.refuse(f"The server has not received the reading the kiosk showed from {eq.label} yet "
                   f"(it has reading {captured.sequence}, the kiosk showed {seen}). Weigh again.",
                   code="reading_behind", device_id=device_id, equipment_id=eq.id)
    unit = shown_unit if isinstance(shown_unit, str) and shown_unit else captured.unit
    moved = captured.value is None or captured.value != shown or captured.unit != unit
    if not moved and captured.sequence != seen and require_stable and not captured.stable:
        moved = True  # the same figure, but the scale is settling again: it moved
    if moved:
        now = f"{to_text(captured.value)} {captured.unit}" if captured.value is not None else captured.status
        ctx.refuse(f"The scale moved after you confirmed: you confirmed {to_text(shown)} {unit}, {eq.label} now "
                   f"shows {now}. Nothing was recorded. Check the weight and confirm again.",
                   code="scale_moved", device_id=device_id, equipment_id=eq.id, confirmed_sequence=seen,
                   confirmed_value=to_text(shown), latest_sequence=captured.sequence)
    # the age is measured on the real clock: the gateway stamps readings with it
    seen_as = {**captured.to_json(), "timestamp": captured.at.isoformat()}
    checked = equipment.check_reading(seen_as, Decimal(ctx.max_reading_age_ms) / 1000, utcnow(),
                                      require_stable=require_stable)
    if not checked.ok:
        ctx.refuse(checked.reason, code=checked.code, device_id=device_id, equipment_id=eq.id)
    reading = {**checked.details["reading"], "raw_hex": captured.raw.hex(), "seen_sequence": seen,
               "confirmed": {"device_id": device_id, "sequence": seen, "value": to_text(shown), "unit": unit}}
    return Confirmed(eq, captured, Decimal(checked.details["value"]), captured.unit, reading)
