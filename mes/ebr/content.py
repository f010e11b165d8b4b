"""The JSON electronic batch record (``mes.ebr/v1``), built from the batch's own records.

Everything here reads; nothing writes. The PDF (:mod:`mes.ebr.render`) prints exactly this
document, and the PDF embeds it, so what an auditor reads and what a program checks are
one record. Times are UTC ISO 8601 (``…Z``) with the plant-time rendering beside them where
a person reads them (signatures: §11.50 printed name, date and time with time zone, meaning).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from mes.audit.models import AuditEntry
from mes.db import db
from mes.execution import operations as ex
from mes.execution.common import _at
from mes.execution.records import _record_json
from mes.materials.consumption import consumptions
from mes.plant_time import plant_zone
from mes.quantities import UnitError, convert, to_text
from mes.steps import registry as step_kinds

FORMAT = "mes.ebr/v1"
LIMIT_KEYS = ("target", "low", "high", "minimum", "maximum", "tolerance", "limits", "yield_low", "yield_high",
              "expected_yield", "unit", "quantity")


def _walk_steps(control_recipe: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The control recipe's steps in document order, as written."""
    for up in control_recipe.get("procedure") or []:
        for op in up.get("operations") or []:
            yield from op.get("steps") or []


def plant_time(at: str | None) -> str | None:
    """A stored UTC instant as the plant reads it: ``2026-12-06 06:25:29 CET (UTC+01:00)``."""
    if not at:
        return None
    moment = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(plant_zone())
    offset = moment.strftime("%z")
    return f"{moment:%Y-%m-%d %H:%M:%S} {moment.tzname()} (UTC{offset[:3]}:{offset[3:]})"


def audit_entries(batch_id: str, through: int | None = None) -> list[dict[str, Any]]:
    """The batch's audit trail: every entry carrying the batch, in log order, as written
    (``through``: only those a checkpoint of that size covers)."""
    query = select(AuditEntry.entry_bytes).where(AuditEntry.batch_id == batch_id).order_by(AuditEntry.seq)
    if through is not None:
        query = query.where(AuditEntry.seq < through)
    rows = db.session.execute(query).scalars()
    return [json.loads(bytes(row)) for row in rows]


def _instrument(data: Mapping[str, Any], at: str | None) -> dict[str, Any] | None:
    """The instrument a captured value came from: make, model, serial, calibration status."""
    reading = data.get("reading")
    if not isinstance(reading, Mapping):
        return None
    ident = reading.get("identity") or {}
    cal = reading.get("calibration") or {}
    due = cal.get("due")
    status = None
    if due:
        status = "calibrated" if (at or "")[:10] <= due else "calibration overdue"
    return {"equipment": reading.get("equipment_id"), "device": reading.get("device_id"),
            "make": ident.get("make"), "model": ident.get("model"), "serial": ident.get("serial"),
            "calibration": {"certificate": cal.get("certificate"), "due": due, "status": status or "unknown"},
            "raw": reading.get("raw"), "raw_hex": reading.get("raw_hex")}


def _sum(values: list[tuple[str, str]], unit: str) -> str | None:
    """Sum of (value, unit) pairs expressed in ``unit`` (None if any cannot be converted)."""
    total = Decimal(0)
    try:
        for value, from_unit in values:
            total += convert(Decimal(value), from_unit, unit) if from_unit != unit else Decimal(value)
    except (UnitError, ArithmeticError, ValueError):
        return None
    return to_text(total) if values else None


def build(batch_id: str, *, checkpoint: str | None = None, generated_at: datetime | None = None,
          decision: Mapping[str, Any] | None = None, through: int | None = None,
          witnesses: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    """The eBR of ``batch_id`` as one JSON-able dict (``checkpoint``: the release checkpoint's
    text; ``decision``: QA's decision being recorded, else the last one in the trail;
    ``through``: the checkpoint's size, the audit trail it covers; ``witnesses``: which
    witnesses cosigned the checkpoint and which are missing)."""
    batch = ex.get_batch(batch_id)
    wo = ex.get_work_order(batch.work_order_id)
    cr = batch.control_recipe
    specs = {s["id"]: s for s in _walk_steps(cr)}
    trail = audit_entries(batch_id, through)
    names = {e["actor"]["id"]: e["actor"].get("name") for e in trail if isinstance(e.get("actor"), Mapping)}
    terminal_of: dict[str, str | None] = {}
    for e in trail:  # which terminal each record was written from: the entry that carried it
        after = e.get("after") if isinstance(e.get("after"), Mapping) else {}
        for r in after.get("records") or []:
            if isinstance(r, Mapping) and r.get("id"):
                terminal_of[r["id"]] = e.get("terminal")
        for key in ("id", "record"):  # a record written on its own (a correction names it "record")
            if isinstance(after.get(key), str):
                terminal_of.setdefault(after[key], e.get("terminal"))
    records = ex.records_of(batch_id)
    by_step: dict[str, list[Any]] = {}
    for r in records:
        by_step.setdefault(r.batch_step_id, []).append(r)

    def record_view(r: Any) -> dict[str, Any]:
        out = _record_json(r)
        out["recorded_by_name"] = names.get(r.recorded_by)
        out["recorded_at_plant"] = plant_time(out["recorded_at"])
        out["terminal"] = terminal_of.get(r.id)
        out["instrument"] = _instrument(r.data or {}, out["recorded_at"])
        return out

    steps, containers, actual = [], [], {}
    produced: dict[str, Any] = {}
    control = ex.control_recipe(batch)
    for s in ex.steps_of(batch_id):
        spec = specs.get(s.step_id, {})
        rows = [record_view(r) for r in by_step.get(s.id, [])]
        live = [r for r in rows if r["superseded_by"] is None and r["attempt"] == s.attempt]
        # how the step's kind reads its current records in the batch record (the kind's own hook)
        shown = step_kinds.get(s.kind).ebr_rows(control.step(s.step_id), live) if live else []
        if len(shown) == len(live):
            for r, row in zip(live, shown, strict=True):
                r["shown"] = row.get("value")
        steps.append({"seq": s.seq, "step": s.step_id, "kind": s.kind, "title": s.title,
                      "instruction": spec.get("instruction"), "state": s.state, "attempt": s.attempt,
                      "limits": {k: spec[k] for k in LIMIT_KEYS if k in spec},
                      "completed_by": s.completed_by, "completed_by_name": names.get(s.completed_by),
                      "completed_at": _at(s.completed_at),
                      "records": rows})
        current = [r for r in rows if r["superseded_by"] is None and r["attempt"] == s.attempt]
        item = spec.get("item")
        for r in current:
            if r["kind"] == "container":
                d = r["data"]
                tare = d.get("tare") or {}
                containers.append({"step": s.step_id, "item": item, "lot": d.get("lot"), "container": d.get("container"),
                                   "tare": tare.get("value"), "gross": d.get("gross"), "net": d.get("net"),
                                   "unit": d.get("unit") or r["unit"], "instrument": r["instrument"],
                                   "recorded_by": r["recorded_by"], "recorded_at": r["recorded_at"]})
            if r["kind"] == "value" and step_kinds.kind_of(s.kind).dispenses and r["value"] is not None and item:
                actual.setdefault(item, []).append((r["value"], r["unit"]))
            if isinstance(r["data"], Mapping) and "yield" in r["data"]:
                produced = {"step": s.step_id, "item": r["data"].get("item"), "lot": r["data"].get("lot"),
                            "quantity": r["value"], "unit": r["unit"], "theoretical": r["data"].get("theoretical"),
                            "yield": r["data"].get("yield"), "yield_low": r["data"].get("yield_low"),
                            "yield_high": r["data"].get("yield_high"), "flags": r["flags"]}
    bom = []
    for line in cr.get("bill_of_materials") or []:
        unit = line.get("unit")
        act = _sum(actual.get(line["item"], []), unit)
        in_limits = None
        if act is not None and line.get("low") and line.get("high"):
            in_limits = Decimal(line["low"]) <= Decimal(act) <= Decimal(line["high"])
        bom.append({"item": line["item"], "name": line.get("name"), "role": line.get("role"),
                    "planned": line.get("quantity"), "low": line.get("low"), "high": line.get("high"), "unit": unit,
                    "actual": act, "in_limits": in_limits,
                    "containers": [c for c in containers if c["item"] == line["item"]]})
    signatures = []
    for e in trail:
        sig = e.get("signature")
        if isinstance(sig, Mapping):
            signatures.append({"seq": e["seq"], "record": e["entity"], "signer": sig.get("signer"),
                               "printed_name": sig.get("name"), "meaning": sig.get("meaning"), "signed_at": sig.get("at"),
                               "signed_at_plant": plant_time(sig.get("at")), "terminal": e.get("terminal"),
                               "role": (e.get("actor") or {}).get("role"), "comment": e.get("reason"),
                               "record_hash": sig.get("record_hash")})
    corrections = []
    old = {r.id: r for r in records}
    for r in records:
        if r.corrects and r.corrects in old:
            was = old[r.corrects]
            corrections.append({"record": r.id, "corrects": was.id, "step": r.batch_step_id.split(":", 1)[1],
                                "old_value": _record_json(was)["value"], "new_value": _record_json(r)["value"],
                                "unit": r.unit, "reason": r.reason, "by": r.recorded_by, "by_name": names.get(r.recorded_by),
                                "at": _record_json(r)["recorded_at"], "flags": list(r.flags or [])})
    consumed = [{"lot": c.lot_id, "container": c.container_id, "item": c.item_code, "quantity": to_text(c.qty),
                 "unit": c.uom, "step": c.step_id, "conditional": c.conditional} for c in consumptions(batch_id=batch_id)]
    reviews = [{"seq": e["seq"], "action": e["action"], "by": (e.get("actor") or {}).get("id"),
                "name": (e.get("actor") or {}).get("name"), "at": e["at"], "at_plant": plant_time(e["at"])}
               for e in trail if "review" in e["action"]]
    if decision is None:
        last = next((e for e in reversed(trail) if e["action"] in ("batch.released", "batch.rejected")), None)
        decision = (last or {}).get("after")
    return {
        "format": FORMAT,
        "generated_at": _at(generated_at or ex.clock()),
        "batch": {"id": batch.id, "status": batch.status, "product": cr.get("product"),
                  "work_order": wo.id, "erp_ref": wo.erp_ref, "line": batch.line,
                  "recipe": {"version": batch.recipe_version_id, "hash": batch.recipe_hash,
                             "master": cr.get("master")},
                  "batch_size": {"quantity": to_text(batch.batch_size), "unit": batch.unit},
                  "created_at": _at(batch.created_at), "completed_at": _at(batch.completed_at),
                  "decided_at": _at(batch.decided_at), "decided_by": batch.decided_by,
                  "decided_by_name": names.get(batch.decided_by or ""),
                  "decision": dict(decision) if decision else None,
                  "yield": produced or None},
        "bill_of_materials": bom,
        "steps": steps,
        "signatures": signatures,
        "corrections": corrections,
        "deviations": [ex.deviation_json(d) for d in ex.deviations_of(batch_id)],
        "exceptions": {"items": ex.exceptions(batch_id), "reviews": reviews},
        "genealogy": {"consumed": consumed, "produced": produced or None},
        "audit_trail": trail,
        "release_checkpoint": checkpoint,
        **({"release_witnesses": {k: list(v) for k, v in witnesses.items()}} if witnesses is not None else {}),
    }


def to_bytes(document: Mapping[str, Any]) -> bytes:
    """The JSON eBR as embedded and served: sorted keys, compact, UTF-8, one trailing newline
    (no indent: the C encoder is several times faster on a 300-step batch's audit trail)."""
    return (json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
            + "\n").encode("utf-8")
