"""What the kiosk screens show, built from the service layer's records.

Read-only helpers: they look records up through the service layer (``mes.execution.queries``
and ``mes.<feature>.operations``) and shape them for the templates; no SQL here. Every change
goes through ``mes.<feature>.operations``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from flask import current_app
from flask_babel import gettext as _

from kiosk import html_lang
from mes.execution import operations as ex
from mes.execution import queries as q
from mes.execution.models import Batch, BatchStatus, BatchStep, Deviation, DeviationStatus, Disposition, StepState, WorkOrder
from mes.materials import operations as mat
from mes.quantities import to_text, to_text_or_none
from mes.recipes import model as rm

OPEN_STATES = (StepState.IN_PROGRESS.value, StepState.READY.value, StepState.BLOCKED.value)


# ---------------------------------------------------------------------- panel sizing


def panel_px(mm: int | float, ppi: int, dpr: int) -> int:
    """CSS pixels for ``mm`` millimetres on the configured panel: ceil(mm × ppi / 25.4 / dpr)."""
    return math.ceil(Decimal(str(mm)) * ppi / Decimal("25.4") / dpr)


def panel() -> dict[str, int]:
    """Target size, spacing and text sizes for the configured kiosk panel."""
    ppi, dpr = current_app.config["MES_PANEL_PPI"], current_app.config["MES_PANEL_DPR"]
    return {"ppi": ppi, "dpr": dpr, "target": panel_px(20, ppi, dpr), "gap": panel_px(2, ppi, dpr)}


# ---------------------------------------------------------------------- lines, orders


def lines(terminal_line: str | None) -> list[str]:
    """Lines with dispatched work or running batches; the terminal's own line first."""
    ordered = sorted(q.active_lines() - {terminal_line})
    return ([terminal_line] if terminal_line else []) + ordered


def dispatched_orders(line: str) -> list[WorkOrder]:
    """Work orders dispatched to ``line`` and not started (only these may start a batch)."""
    return q.dispatched_orders(line)


def batches_on(line: str, statuses: tuple[str, ...] = (BatchStatus.IN_PROGRESS.value,)) -> list[Batch]:
    """Batches on ``line`` in one of ``statuses`` (default: running), oldest first."""
    return q.batches_on_line(line, statuses)


def product_name(batch: Batch) -> str:
    product = ex.control_recipe(batch).product
    return f"{product.name} ({product.code})"


def recipe_product(wo: WorkOrder) -> str:
    from mes.execution import recipes_store as store

    try:
        product = store.master_of(store.get_version(wo.recipe_version_id)).product
        return f"{product.name} ({product.code})"
    except Exception:  # noqa: BLE001 - a display label only
        return wo.item


# ---------------------------------------------------------------------------- steps


def current_step(rows: list[BatchStep]) -> BatchStep | None:
    """The step the operator does next: one in progress, else the first ready, else the first blocked."""
    for state in OPEN_STATES:
        step = next((r for r in rows if r.state == state), None)
        if step is not None:
            return step
    return None


def values_of(batch: Batch) -> dict[str, Decimal]:
    """Current values of the batch's value-producing steps: the engine's own (what its
    calculations compute with), never a second reading of the records."""
    return ex.values_of(batch.id)


def blocker(batch: Batch, step: BatchStep) -> Deviation | None:
    """The open major/critical deviation that blocks ``step``, by the engine's one rule
    (:func:`mes.execution.batches.blocks`: raised on an earlier step or the whole batch)."""
    return ex.blocker_of(step, ex.deviations_of(batch.id))


def identified_lot(batch: Batch, item: str) -> str | None:
    """The lot last identified for ``item`` in this batch (to prefill a weigh step)."""
    lot = None
    for r in ex.records_of(batch.id):
        if r.kind == "identification" and r.data.get("item") == item and r.superseded_by is None:
            lot = r.data.get("lot")
    return lot


def containers_weighed(step: BatchStep) -> list[dict[str, Any]]:
    return [{"lot": r.data.get("lot"), "container": r.data.get("container"), "value": to_text_or_none(r.value),
             "unit": r.unit}
            for r in ex.records_of(step.batch_id)
            if r.batch_step_id == step.id and r.kind == "container" and r.attempt == step.attempt
            and r.superseded_by is None]


@dataclass
class LotView:
    """A scanned label resolved to a lot (and container, if a container label was scanned)."""

    scanned: str
    lot_id: str | None
    container_id: str | None
    status: str
    ok: bool
    reason: str
    containers: list[str] = field(default_factory=list)


def resolve_label(label: str, item: str | None) -> LotView:
    """A lot or container label: the lot, its status and whether it may be used as ``item``."""
    label = label.strip()
    container = q.container_by_label(label)
    lot_id = container.lot_id if container is not None else label
    usable = mat.check_usable(lot_id, item)
    containers: list[str] = []
    status = usable.code
    if usable.code != "unknown_lot":
        lot = mat.get_lot(lot_id)
        status = lot.status if usable.ok else usable.code
        containers = [c.id for c in mat.containers_of(lot_id) if mat.container_remaining(c) > 0]
    return LotView(label, lot_id if usable.code != "unknown_lot" else None,
                   container.id if container is not None else (containers[0] if len(containers) == 1 else None),
                   status, usable.ok, usable.reason, containers)


def scales_for(batch: Batch, spec: rm.WeighStep) -> list[dict[str, Any]]:
    """Registered scales (with a device) for the batch's line, each with whether it may weigh this step."""
    from mes.equipment import operations as eqo

    out = []
    for eq in eqo.list_equipment(kind="scale"):
        if not eq.device_id or (eq.line and batch.line and eq.line != batch.line):
            continue
        assert spec.target is not None and spec.unit is not None
        check = eqo.check_scale_for_weighing(eq.device_id, spec.target, spec.unit, spec.scale.readability,
                                             spec.scale.accuracy_class)
        out.append({"device_id": eq.device_id, "equipment_id": eq.id, "label": eq.description or eq.id,
                    "ok": check.code == "ok", "code": check.code, "reason": check.reason,
                    "same_unit": eq.readability_uom == spec.scale.unit,
                    "readability": eq.readability, "readability_uom": eq.readability_uom})
    # the scale the recipe means first: usable, reading in the recipe's scale unit (the floor
    # scale for kilograms, the bench balance for grams), then in registry order
    return sorted(out, key=lambda s: (not s["ok"], not s["same_unit"]))


def dec(value: Decimal | None) -> str:
    return to_text(value) if value is not None else ""


def limits_text(low: Decimal | None, high: Decimal | None, unit: str) -> str:
    return range_text(dec(low), dec(high), unit) or _("no limits")


def range_text(low: str, high: str, unit: str) -> str:
    """Limits given as text (places as written; a duration is its own unit)."""
    if low and high:
        return _("%(low)s to %(high)s %(unit)s", low=low, high=high, unit=unit).strip()
    if high:
        return _("at most %(high)s %(unit)s", high=high, unit=unit).strip()
    if low:
        return _("at least %(low)s %(unit)s", low=low, unit=unit).strip()
    return ""


def user_name(user_id: str | None) -> str:
    """The person's name as the record shows it (their id when the account is unknown)."""
    from mes.db import db
    from mes.users.models import User

    if not user_id:
        return ""
    user = db.session.get(User, user_id)
    return user.full_name if user is not None else user_id


def summary_rows(batch: Batch, only: list[str] | None = None) -> list[dict[str, Any]]:
    """One line per step for the batch summary (``only``: of these steps, e.g. the steps a
    signature covers): what it asks for (target and limits, places as written), what was
    recorded (places as recorded; label states ticked), and by whom (by name)."""
    from mes.steps import registry as step_kinds

    records = ex.records_of(batch.id)
    recipe = ex.control_recipe(batch)
    out = []
    for s in ex.steps_of(batch.id):
        if only is not None and s.step_id not in only:
            continue
        spec = recipe.step(s.step_id)
        expected = step_kinds.kind_of(spec).expectation(spec)
        recs = [r for r in records if r.batch_step_id == s.id and r.attempt == s.attempt and r.superseded_by is None]
        shown = []
        for r in recs:
            if r.kind in ("value", "timer") and r.value is not None:
                shown.append(f"{to_text(r.value)} {r.unit or ''}".strip())
            elif r.kind == "container" and r.data.get("tare"):
                tare = r.data["tare"]
                shown.append(_("%(net)s %(unit)s net (gross %(gross)s %(unit)s, tare %(tare)s %(unit)s %(how)s) from "
                               "lot %(lot)s container %(container)s", net=to_text(r.value), unit=r.unit, gross=r.data.get("gross"),
                               tare=tare.get("value"), how=TARE_SOURCES.get(tare.get("source"), lambda: "")(),
                               lot=r.data.get("lot"), container=r.data.get("container")))
            elif r.kind == "identification":
                shown.append(_("lot %(lot)s", lot=r.data.get("lot")))
            elif r.kind == "equipment":
                states = r.data.get("label_states") or []
                shown.append(str(r.data.get("equipment_id")) + (f" ({', '.join(map(str, states))})" if states else ""))
            elif r.kind == "signature":
                shown.append(_("signed by %(name)s (%(meaning)s)", name=r.data.get("name"), meaning=r.data.get("meaning")))
            elif r.kind == "confirmation":
                shown.append(_("confirmed"))
        out.append({"seq": s.seq + 1, "id": s.step_id, "title": recipe_text(spec, "title"), "state": s.state,
                    "recorded": "; ".join(shown),
                    "target": f"{expected.target} {expected.unit}".strip() if expected.target else "",
                    "limits": range_text(expected.low, expected.high, expected.limits_unit),
                    "by": user_name(s.completed_by), "flags": sorted({f for r in recs for f in (r.flags or [])})})
    return out


TARE_SOURCES = {
    "scale_tare": lambda: _("scale tare"),
    "weighed_container": lambda: _("weighed container"),
    "preset": lambda: _("pre-set"),
    "none": lambda: _("no container"),
}


DISPOSITION_LABELS = {
    Disposition.USE_AS_IS: lambda: _("use as is"),
    Disposition.REPEAT_STEP: lambda: _("repeat the step"),
    Disposition.REWORK: lambda: _("rework"),
    Disposition.SCRAP: lambda: _("scrap"),
    Disposition.REJECT_BATCH: lambda: _("reject the batch"),
}


def dispositions() -> list[tuple[str, str]]:
    """(value, label) of every disposition QA may choose: the engine's ``Disposition`` enum, in
    its order (a new one shows, by its value, until it gets a translated label)."""
    return [(d.value, DISPOSITION_LABELS[d]() if d in DISPOSITION_LABELS else d.value.replace("_", " "))
            for d in Disposition]


def open_deviations(batch_id: str) -> list[Deviation]:
    """The batch's deviations still waiting for QA."""
    return [d for d in ex.deviations_of(batch_id) if d.status == DeviationStatus.OPEN.value]


def running_batches(line: str) -> list[dict[str, Any]]:
    """The batches screen of a line: each running batch, its current step, and the open
    deviations that block it (marked in the list)."""
    out = []
    for batch in batches_on(line):
        rows = ex.steps_of(batch.id)
        step = current_step(rows)
        out.append({"batch": batch, "product": product_name(batch), "step": step, "total": len(rows),
                    "title": step_title(batch, step),
                    "blocking": [d for d in open_deviations(batch.id) if ex.blocks_any(d, rows)]})
    return out


def step_title(batch: Batch, step: BatchStep | None) -> str:
    """A step's title in the operator's language, as the batch's control recipe gives it."""
    if step is None:
        return ""
    return recipe_text(ex.control_recipe(batch).step(step.step_id), "title")


def recipe_text(spec: rm.Step, field: str) -> str:
    """A recipe text of a step in the operator's language when the recipe gives it (rule 13),
    else as written (English)."""
    return spec.text(field, html_lang())


def board(line: str) -> list[dict[str, Any]]:
    """The QA status board of a line: each running batch, its current step, what blocks it, open deviations."""
    out = []
    for batch in batches_on(line, (BatchStatus.IN_PROGRESS.value, BatchStatus.COMPLETED.value)):
        rows = ex.steps_of(batch.id)
        step = current_step(rows)
        devs = open_deviations(batch.id)
        out.append({"batch": batch, "product": product_name(batch), "step": step, "total": len(rows),
                    "title": step_title(batch, step),
                    "done": sum(1 for r in rows if r.state == StepState.COMPLETED.value),
                    "blocked": [r for r in rows if r.state == StepState.BLOCKED.value], "deviations": devs,
                    "blocking": [d for d in devs if ex.blocks_any(d, rows)]})
    return out
