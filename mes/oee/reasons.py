"""The downtime reason tree: loss categories (the six big losses and the planned stops),
the reasons under them, and the PLC stop codes that map to a reason.

The tree is configurable: :func:`define_reason` adds or changes one reason (append-only,
the latest row per code counts; ``active=False`` retires it). Until a plant defines its
own, :data:`DEFAULT_TREE` applies. Each change is one transaction with its audit entry
and its outbox event ``mes.oee.reason_defined.v1``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from mes.audit.log import Actor, Event, record
from mes.db import db, utcnow
from mes.errors import ValidationFailed
from mes.oee.common import commit, locked
from mes.oee.models import STOP_CATEGORIES, LossCategory, ReasonDefinition
from mes.validation import ID_RE, required_text

REASON_DEFINED = "mes.oee.reason_defined.v1"
TREE_AGGREGATE = ("oee_reason_tree", "plant")


@dataclass(frozen=True)
class Reason:
    """A reason of the tree as it counts now."""

    code: str
    label: str
    category: LossCategory
    plc_codes: tuple[str, ...] = ()

    @property
    def planned(self) -> bool:
        return self.category.planned

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "label": self.label, "category": self.category.value,
                "planned": self.planned, "plc_codes": list(self.plc_codes)}


DEFAULT_TREE: tuple[Reason, ...] = (
    Reason("breakdown", "Breakdown", LossCategory.BREAKDOWN),
    Reason("changeover", "Setup / changeover", LossCategory.SETUP),
    Reason("minor_stop", "Minor stop", LossCategory.MINOR_STOP),
    Reason("break", "Planned break", LossCategory.PLANNED_BREAK),
    Reason("maintenance", "Planned maintenance", LossCategory.PLANNED_MAINTENANCE),
    Reason("no_order", "No order", LossCategory.NO_ORDER),
)


def reason_tree() -> dict[str, Reason]:
    """The active reasons by code: the latest definition of each code, or the default tree."""
    rows = db.session.execute(select(ReasonDefinition).order_by(ReasonDefinition.recorded_at,
                                                                 ReasonDefinition.id)).scalars().all()
    if not rows:
        return {r.code: r for r in DEFAULT_TREE}
    latest: dict[str, ReasonDefinition] = {}
    for row in rows:
        latest[row.code] = row
    return {code: Reason(code, row.label, LossCategory(row.category), tuple(row.plc_codes))
            for code, row in latest.items() if row.active}


def tree_json(tree: dict[str, Reason]) -> list[dict[str, Any]]:
    """The tree as categories with their reasons, in the order of :data:`STOP_CATEGORIES`."""
    return [{"category": c.value, "planned": c.planned,
             "reasons": [r.as_json() for r in sorted(tree.values(), key=lambda r: r.code) if r.category == c]}
            for c in STOP_CATEGORIES]


def plc_map(tree: dict[str, Reason]) -> dict[str, Reason]:
    """The reason each PLC stop code means."""
    return {code: r for r in tree.values() for code in r.plc_codes}


def _codes(values: Iterable[Any]) -> tuple[str, ...]:
    out = []
    for v in values:
        text = str(v).strip() if isinstance(v, (str, int)) and not isinstance(v, bool) else ""
        if not text or len(text) > 64:
            raise ValidationFailed("A PLC stop code is 1 to 64 characters.", field="plc_codes")
        out.append(text)
    return tuple(dict.fromkeys(out))


def define_reason(
    actor: Actor,
    code: str,
    label: str,
    category: str,
    *,
    plc_codes: Iterable[Any] = (),
    active: bool = True,
) -> Reason:
    """Add or change one reason of the tree (``active=False`` retires it). A PLC code means
    one reason: a code already mapped to another active reason is refused."""
    code = code.strip() if isinstance(code, str) else ""
    if not ID_RE.fullmatch(code):
        raise ValidationFailed("A reason code is 1 to 64 letters, digits, dots, dashes or underscores.", field="code")
    label = required_text(label, "The reason's label", "label", 100)
    try:
        cat = LossCategory(category)
    except ValueError:
        cat = None
    if cat not in STOP_CATEGORIES:
        raise ValidationFailed("A stop's category is one of " + ", ".join(c.value for c in STOP_CATEGORIES) + ".",
                               field="category")
    assert cat is not None
    if not isinstance(active, bool):
        raise ValidationFailed("active is true or false.", field="active")
    codes = _codes(plc_codes)
    with locked():
        tree = reason_tree()
        explicit = db.session.execute(select(ReasonDefinition.id).limit(1)).first() is not None
        taken = {c: r.code for r in tree.values() if r.code != code for c in r.plc_codes}
        clash = [c for c in codes if c in taken]
        if clash and active:
            raise ValidationFailed(f"PLC stop code {clash[0]} already means reason {taken[clash[0]]}.",
                                   field="plc_codes")
        now = utcnow()
        rows = []
        if not explicit:  # the first definition: the default tree becomes explicit rows too
            rows = [ReasonDefinition(id=str(uuid.uuid4()), code=r.code, label=r.label, category=r.category.value,
                                     plc_codes=list(r.plc_codes), active=True, recorded_at=now,
                                     recorded_by=actor.id) for r in DEFAULT_TREE if r.code != code]
        before = tree.get(code)
        reason = Reason(code, label, cat, codes)
        rows.append(ReasonDefinition(id=str(uuid.uuid4()), code=code, label=label, category=cat.value,
                                     plc_codes=list(codes), active=active, recorded_at=now, recorded_by=actor.id))
        db.session.add_all(rows)
        after = {**reason.as_json(), "active": active}
        if rows[:-1]:  # the defaults written as rows with the first definition, on the same entry
            after["defaults_recorded"] = [r.code for r in rows[:-1]]
        record(actor, "oee.reason_defined", TREE_AGGREGATE, before=None if before is None else before.as_json(),
               after=after, event=Event(REASON_DEFINED, *TREE_AGGREGATE, data=after))
        commit("The reason tree changed at the same moment; reload and try again.")
    return reason
