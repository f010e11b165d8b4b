"""What the audit log says each GMP record must be: the fold of its entries.

Every rule reads one entry (``entity``, ``action``, ``after``, ``batch``) and sets the
values the tables must hold, each with the seq that set it (the last entry wins, as in the
database). Only facts the entries state are expected; derived or bookkeeping columns
(timestamps, versions, readiness) are not. :mod:`mes.audit.reconcile` compares the result
with the tables.

Records described (table: key — columns):

* ``material_lots``: id — item, status, supplier, supplier lot, dates (received, produced,
  released, rejected, retest date set);
* ``material_containers``: id — lot, what remains (received, produced, consumed, reversed);
* ``material_holds``: id — lot, scope, reason, NCR, released or not, disposition,
  conditions, conditions met or not;
* ``material_consumptions``: id — lot, item, container, quantity, unit, batch, step, work
  order, conditional; ``material_consumption_reversals``: consumption — exists;
* ``batches``: id — work order, recipe version and hash, size, unit, status;
* ``batch_steps``: id — state (pending, ready and blocked are one class: readiness is
  derived), attempt;
* ``step_records``: id — kind, attempt, value, unit, corrects, superseded by;
* ``deviations``: id — severity, category, description, automatic, status, disposition,
  QMS reference;
* ``work_orders``: id — item, quantity, unit, recipe version, line, status;
* ``equipment``: id — kind, status, active.

Signatures are entries themselves (``esig.*``): their tags are checked by the verifier, and
the records they sign are the records above.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

#: step states that only readiness (derived, unaudited) tells apart
NOT_STARTED = "not started"
_NOT_STARTED_STATES = frozenset({"pending", "ready", "blocked"})


def step_state_class(state: Any) -> Any:
    return NOT_STARTED if state in _NOT_STARTED_STATES else state


def number(value: Any) -> Decimal | None:
    """A decimal string (or Decimal) as a comparable Decimal; None stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("value")
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


@dataclass
class Expected:
    """``records[table][key][column] = (value, seq)``; ``created[(table, key)] = seq``."""

    records: dict[str, dict[str, dict[str, tuple[Any, int]]]] = field(default_factory=dict)
    created: dict[tuple[str, str], int] = field(default_factory=dict)
    size: int = 0
    #: (entity type, id) of every entry folded
    entities: set[tuple[str, str]] = field(default_factory=set)
    #: (seq, table, key) of every record set at ``touched_from`` or later, in seq order: the
    #: records touched since a seq without a scan of them all (see :meth:`touched_since`).
    #: Kept only when asked for (``Expected(touched=[])``, the watch): a full replay needs none.
    touched: list[tuple[int, str, str]] | None = None
    touched_from: int = 0

    def set(self, table: str, key: str, seq: int, **values: Any) -> None:
        row = self.records.setdefault(table, {}).setdefault(str(key), {})
        for column, value in values.items():
            row[column] = (value, seq)
        if self.touched is not None:
            self.touched.append((seq, table, str(key)))

    def touched_since(self, since: int, table: str) -> list[str] | None:
        """The keys of ``table`` set at ``since`` or later, sorted; None when no index is
        kept or it no longer reaches back that far (the caller scans the records)."""
        if self.touched is None or since < self.touched_from:
            return None
        first = bisect.bisect_left(self.touched, (since, "", ""))
        return sorted({key for _, name, key in self.touched[first:] if name == table})

    def forget_touched_before(self, seq: int) -> None:
        """Drop the index before ``seq`` (its records were compared clean): memory stays
        proportional to what is not yet compared."""
        if self.touched is not None and seq > self.touched_from:
            del self.touched[:bisect.bisect_left(self.touched, (seq, "", ""))]
            self.touched_from = seq

    def create(self, table: str, key: str, seq: int, **values: Any) -> None:
        self.created.setdefault((table, str(key)), seq)
        self.set(table, key, seq, **values)

    def merge(self, later: Expected) -> None:
        """Add the fold of the entries after this one's (folded on their own, e.g. in a
        worker process): records, creations and entities, dict order included, are what
        folding every entry here in seq order gives (the later value of a column wins, the
        first creation stays). The ``touched`` index is not merged."""
        for table, rows in later.records.items():
            mine = self.records.setdefault(table, {})
            for key, columns in rows.items():
                row = mine.get(key)
                if row is None:
                    mine[key] = columns
                else:
                    row.update(columns)
        for record, seq in later.created.items():
            self.created.setdefault(record, seq)
        self.entities |= later.entities


Rule = Callable[[Expected, int, dict[str, Any]], None]


def _after(entry: dict[str, Any]) -> dict[str, Any]:
    after = entry.get("after")
    return after if isinstance(after, dict) else {}


def _pick(after: dict[str, Any], **names: str) -> dict[str, Any]:
    """``{column: after[key]}`` for the keys the entry has."""
    return {column: after[key] for column, key in names.items() if key in after}


# ------------------------------------------------------------------------ materials


def _lot(ex: Expected, seq: int, entry: dict[str, Any]) -> None:
    lot = entry["entity"]["id"]
    action, after = entry["action"], _after(entry)
    if action.startswith("material.hold."):
        _hold(ex, seq, lot, action, after)
        return
    if action in ("material.lot.received", "material.lot.produced"):
        ex.create("material_lots", lot, seq, item_code=after.get("item"))
        for c in after.get("containers") or []:
            ex.create("material_containers", c["id"], seq, lot_id=lot, remaining=number(c.get("remaining")))
        if action == "material.lot.produced" and after.get("container"):
            ex.create("material_containers", after["container"], seq, lot_id=lot, remaining=number(after.get("qty")))
    values = _pick(after, status="status", supplier="supplier", supplier_lot="supplier_lot",
                   manufactured_date="manufactured_date", expiry_date="expiry_date", retest_date="retest_date")
    if values:
        ex.set("material_lots", lot, seq, **values)


def _hold(ex: Expected, seq: int, lot: str, action: str, after: dict[str, Any]) -> None:
    hold = after.get("hold_id")
    if not hold:
        return
    if action == "material.hold.placed":
        ex.create("material_holds", hold, seq, lot_id=lot, released=False, conditions_met=False,
                  **_pick(after, scope="scope", reason="reason", ncr_id="ncr_id"))
    elif action == "material.hold.released":
        ex.set("material_holds", hold, seq, released=True,
               **_pick(after, disposition="disposition", conditions="conditions"))
    elif action == "material.hold.conditions_met" and after.get("conditional") is False:
        ex.set("material_holds", hold, seq, conditions_met=True)


def _consumption(ex: Expected, seq: int, entry: dict[str, Any]) -> None:
    cid = entry["entity"]["id"]
    action, after = entry["action"], _after(entry)
    if action == "material.consumed":
        qty = after.get("qty") or {}
        ex.create("material_consumptions", cid, seq, lot_id=after.get("lot"), item_code=after.get("item"),
                  container_id=after.get("container"), qty=number(qty), uom=qty.get("uom"),
                  batch_id=entry.get("batch"),
                  **_pick(after, step_id="step", work_order_id="work_order", conditional="conditional",
                          conditional_hold_id="conditional_hold"))
    elif action == "material.consumption.reversed":
        ex.create("material_consumption_reversals", cid, seq)
    if after.get("container") and "remaining" in after:
        ex.set("material_containers", after["container"], seq, remaining=number(after["remaining"]))


# ------------------------------------------------------------------------ execution


def _batch(ex: Expected, seq: int, entry: dict[str, Any]) -> None:
    bid = entry["entity"]["id"]
    after = _after(entry)
    if entry["action"] == "batch.started":
        ex.create("batches", bid, seq, batch_size=number(after.get("batch_size")),
                  **_pick(after, work_order_id="work_order", recipe_version_id="recipe_version",
                          recipe_hash="recipe_hash", unit="unit"))
    if "status" in after:
        ex.set("batches", bid, seq, status=after["status"])


_STEP_STATE_ACTIONS = ("batch.step.started", "batch.step.recorded", "batch.step.completed", "batch.step.repeated")


def _batch_step(ex: Expected, seq: int, entry: dict[str, Any]) -> None:
    if entry["action"] not in _STEP_STATE_ACTIONS:
        return
    sid = entry["entity"]["id"]
    after = _after(entry)
    values = _pick(after, attempt="attempt")
    if "state" in after:
        values["state"] = step_state_class(after["state"])
    if values:
        ex.set("batch_steps", sid, seq, **values)
    for r in after.get("records") or []:
        if isinstance(r, dict) and r.get("id"):
            ex.create("step_records", r["id"], seq, batch_step_id=sid, value=number(r.get("value")),
                      **_pick(r, kind="kind", attempt="attempt", unit="unit", corrects="corrects",
                              superseded_by="superseded_by"))


def _step_record(ex: Expected, seq: int, entry: dict[str, Any]) -> None:
    """A correction (or a recomputation) supersedes the record with a new one."""
    if entry["action"] not in ("batch.value.corrected", "batch.value.recomputed"):
        return
    old = entry["entity"]["id"]
    after = _after(entry)
    new = after.get("record")
    if not new:
        return
    ex.set("step_records", old, seq, superseded_by=new)
    ex.create("step_records", new, seq, value=number(after.get("value")), corrects=old,
              **_pick(after, unit="unit"))


def _deviation(ex: Expected, seq: int, entry: dict[str, Any]) -> None:
    did = entry["entity"]["id"]
    after = _after(entry)
    if entry["action"] == "deviation.raised":
        ex.create("deviations", did, seq, batch_id=entry.get("batch"), status="open",
                  **_pick(after, severity="severity", category="category", description="description",
                          automatic="automatic"))
    elif entry["action"] == "deviation.closed":
        ex.set("deviations", did, seq, **_pick(after, status="status", disposition="disposition", qms_ref="qms_ref"))


def _work_order(ex: Expected, seq: int, entry: dict[str, Any]) -> None:
    wid = entry["entity"]["id"]
    after = _after(entry)
    if entry["action"] == "work_order.created":
        ex.create("work_orders", wid, seq, quantity=number(after.get("quantity")),
                  **_pick(after, item="item", unit="unit", recipe_version_id="recipe_version"))
    ex.set("work_orders", wid, seq, **_pick(after, status="status", line="line"))


def _equipment(ex: Expected, seq: int, entry: dict[str, Any]) -> None:
    eid = entry["entity"]["id"]
    after = _after(entry)
    if entry["action"] == "equipment.registered":
        ex.create("equipment", eid, seq, active=True, **_pick(after, kind="kind"))
    ex.set("equipment", eid, seq, **_pick(after, status="status", active="active"))


#: entity type → rule; entries of other entity types describe no GMP record reconciled here
RULES: dict[str, Rule] = {
    "lot": _lot,
    "consumption": _consumption,
    "batch": _batch,
    "batch_step": _batch_step,
    "step_record": _step_record,
    "deviation": _deviation,
    "work_order": _work_order,
    "equipment": _equipment,
}


#: per entity type, the ``after`` keys (and record members) a rule reads: an entry whose
#: canonical bytes hold none of them as a key cannot change a record, so the replay skips
#: parsing it (a key name inside a value only costs a parse; a key is never missed)
_MARKERS: dict[str, tuple[bytes, ...]] = {
    etype: tuple(f'"{k}":'.encode() for k in keys) for etype, keys in {
        "lot": ("status", "item", "containers", "container", "supplier", "supplier_lot", "manufactured_date",
                "expiry_date", "retest_date", "hold_id"),
        "consumption": ("container", "qty", "remaining", "lot"),
        "batch": ("status", "batch_size", "work_order"),
        "batch_step": ("state", "attempt", "records"),
        "step_record": ("record",),
        "deviation": ("severity", "status", "disposition", "qms_ref", "category"),
        "work_order": ("status", "line", "quantity", "item"),
        "equipment": ("status", "active", "kind"),
    }.items()
}


def may_change_records(entity_type: str, data: bytes) -> bool:
    """Whether an entry of ``entity_type`` with these bytes can set anything of a record."""
    markers = _MARKERS.get(entity_type)
    return markers is not None and any(m in data for m in markers)


#: per entity type, the actions whose rule writes a record whatever the entry's ``after``
#: holds (None: every action; a rule that sets no column still adds the record)
_WRITE_ALWAYS: dict[str, tuple[str, ...] | None] = {
    "lot": ("material.lot.received", "material.lot.produced"),
    "consumption": ("material.consumed", "material.consumption.reversed"),
    "batch": ("batch.started",),
    "batch_step": (),
    "step_record": (),
    "deviation": ("deviation.raised", "deviation.closed"),
    "work_order": None,
    "equipment": None,
}
#: per entity type, every ``after`` key its rule reads (the replay's markers, unquoted)
_READ_KEYS: dict[str, frozenset[bytes]] = {etype: frozenset(m[1:-2] for m in markers)
                                           for etype, markers in _MARKERS.items()}


def may_set_records(entity_type: str, action: str, after_keys: Iterable[bytes | None]) -> bool:
    """Whether :func:`fold` of an entry with this entity type and action, whose ``after``
    is an object with exactly these keys (UTF-8; None items are no key) or not an object
    (no keys), can set anything in the records. False only when it provably sets nothing:
    the verifier then need not parse the entry."""
    if entity_type not in RULES:
        return False
    always = _WRITE_ALWAYS[entity_type]
    return always is None or action in always or not _READ_KEYS[entity_type].isdisjoint(after_keys)


def fold(ex: Expected, seq: int, entry: dict[str, Any]) -> None:
    """Apply one entry (already verified) to the expected records."""
    rule = RULES.get(entry["entity"]["type"])
    if rule is not None:
        ex.entities.add((entry["entity"]["type"], str(entry["entity"]["id"])))
        rule(ex, seq, entry)


#: the tables whose records only entries of these entity types describe: replaying those
#: entities' whole history gives the whole record (holds are the lot's)
OWNED_TABLES: dict[str, tuple[str, ...]] = {
    "lot": ("material_lots", "material_holds"),
    "consumption": ("material_consumptions",),
    "batch": ("batches",),
    "batch_step": ("batch_steps",),
    "deviation": ("deviations",),
    "work_order": ("work_orders",),
    "equipment": ("equipment",),
}
