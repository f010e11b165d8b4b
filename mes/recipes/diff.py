"""A readable comparison of two master recipe versions, for QA review of a change.

Parts are matched by their stable keys: BOM lines by item code, unit procedures,
operations and steps by id (which is why ids must be kept across versions). Reported,
in this order: header (id, version, product, description, batch size), BOM lines
(added, removed, changed, with the relative change of quantities), unit procedures,
operations and steps (added, removed, changed member by member, moved). A move is a
change of parent, or a change of order among the parts both versions share (computed
with a longest common subsequence, so an insertion does not make everything after it
"moved"). Lines start with ``+`` (added), ``-`` (removed), ``~`` (changed) or ``>`` (moved).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from decimal import Decimal
from fractions import Fraction
from typing import Any

from mes.quantities import Duration, UnitError, convert, decimal_places, round_half_even, to_text
from mes.recipes.model import BatchSize, MasterRecipe, Operation, ScaleRequirement, Step, Tolerance, UnitProcedure

__all__ = ["diff"]

_VALUE_FIELDS = frozenset({"target", "low", "high", "mean_low", "mean_high"})
_PERCENT_FIELDS = frozenset({"expected_yield", "yield_low", "yield_high"})


def _show(value: Any, unit: str | None = None) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, Decimal):
        return f"{to_text(value)} {unit}" if unit else to_text(value)
    if isinstance(value, Duration):
        return f"{value.iso} ({value.human})"
    if isinstance(value, (Tolerance, ScaleRequirement)):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _lcs(a: Sequence[str], b: Sequence[str]) -> set[str]:
    """The elements of a longest common subsequence of ``a`` and ``b``."""
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = table[i + 1][j + 1] + 1 if a[i] == b[j] else max(table[i + 1][j], table[i][j + 1])
    keep: set[str] = set()
    i = j = 0
    while i < n and j < m:
        if a[i] == b[j]:
            keep.add(a[i])
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return keep


def _reordered(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """Ids present in both sequences whose relative order changed (minimal set)."""
    common = set(a) & set(b)
    ca = [x for x in a if x in common]
    cb = [x for x in b if x in common]
    keep = _lcs(ca, cb)
    return [x for x in cb if x not in keep]


def _relative(old: Decimal, old_unit: str, new: Decimal, new_unit: str) -> str:
    try:
        new_in_old = convert(new, new_unit, old_unit)
    except UnitError:
        return ""
    if old == 0:
        return ""
    if new_in_old == old:
        return f" (same amount, written with {decimal_places(new)} instead of {decimal_places(old)} decimals)"
    change = round_half_even((Fraction(new_in_old) - Fraction(old)) * 100 / Fraction(old), 2)
    return f" ({'+' if change > 0 else ''}{to_text(change)} %)"


def _batch_size(a: BatchSize, b: BatchSize, out: list[str]) -> None:
    for name in ("quantity", "minimum", "maximum"):
        shown_a, shown_b = _show(getattr(a, name), a.unit), _show(getattr(b, name), b.unit)
        if shown_a != shown_b:
            label = "batch size" if name == "quantity" else f"batch size {name}"
            out.append(f"~ {label}: {shown_a} → {shown_b}")


def _bom(a: MasterRecipe, b: MasterRecipe, out: list[str]) -> None:
    old = {line.item: line for line in a.bill_of_materials}
    new = {line.item: line for line in b.bill_of_materials}
    for line in b.bill_of_materials:
        before = old.get(line.item)
        label = f"BOM {line.item} ({line.name})"
        if before is None:
            tol = f", tolerance {line.tolerance}" if line.tolerance else ""
            out.append(f"+ {label}: {to_text(line.quantity)} {line.unit}, role {line.role}{tol}")
            continue
        if to_text(before.quantity) != to_text(line.quantity) or before.unit != line.unit:
            out.append(f"~ {label}: quantity {to_text(before.quantity)} {before.unit} → {to_text(line.quantity)} {line.unit}"
                       f"{_relative(before.quantity, before.unit, line.quantity, line.unit)}")
        for name in ("name", "role", "tolerance", "note"):
            va, vb = getattr(before, name), getattr(line, name)
            if _show(va) != _show(vb):
                out.append(f"~ {label}: {name} {_show(va)} → {_show(vb)}")
    for line in a.bill_of_materials:
        if line.item not in new:
            out.append(f"- BOM {line.item} ({line.name}): {to_text(line.quantity)} {line.unit}")


def _members(obj: Any, skip: Sequence[str]) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name not in skip}


def _unit_for(step: Step, name: str) -> str | None:
    if name in _PERCENT_FIELDS:
        return "%"
    if name in _VALUE_FIELDS or name == "quantity":
        return getattr(step, "unit", None)
    return None


def _step_changes(sa: Step, sb: Step, out: list[str]) -> None:
    label = f"step {sb.id} ({sb.kind})"
    if sa.kind != sb.kind:
        out.append(f"~ step {sb.id}: kind {sa.kind} → {sb.kind}")
    ma, mb = _members(sa, ("id",)), _members(sb, ("id",))
    for name in list(mb) + [k for k in ma if k not in mb]:
        va, vb = ma.get(name), mb.get(name)
        shown_a, shown_b = _show(va, _unit_for(sa, name)), _show(vb, _unit_for(sb, name))
        if shown_a != shown_b:
            out.append(f"~ {label}: {name} {shown_a} → {shown_b}")


def _where(up: UnitProcedure, op: Operation, index: int) -> str:
    return f"{up.id}/{op.id} #{index + 1}"


def diff(recipe_a: MasterRecipe, recipe_b: MasterRecipe) -> list[str]:
    """What changed from ``recipe_a`` (old) to ``recipe_b`` (new), one line per change;
    empty if they are the same recipe (to the last written decimal)."""
    a, b = recipe_a, recipe_b
    out: list[str] = []
    if a.id != b.id:
        out.append(f"~ recipe id: {a.id} → {b.id}")
    if a.version != b.version:
        out.append(f"~ version: {a.version} → {b.version}")
    if a.product != b.product:
        out.append(f"~ product: {a.product.code} {a.product.name!r} → {b.product.code} {b.product.name!r}")
    if a.description != b.description:
        out.append(f"~ description: {_show(a.description)} → {_show(b.description)}")
    _batch_size(a.batch_size, b.batch_size, out)
    _bom(a, b, out)

    # unit procedures
    ups_a = {u.id: (i, u) for i, u in enumerate(a.procedure)}
    ups_b = {u.id: (i, u) for i, u in enumerate(b.procedure)}
    for i, up in enumerate(b.procedure):
        if up.id not in ups_a:
            out.append(f"+ unit procedure {up.id} ({up.title!r}) at position {i + 1}")
            continue
        old = ups_a[up.id][1]
        for name in ("title", "unit_class"):
            if getattr(old, name) != getattr(up, name):
                out.append(f"~ unit procedure {up.id}: {name} {_show(getattr(old, name))} → {_show(getattr(up, name))}")
    for up in a.procedure:
        if up.id not in ups_b:
            out.append(f"- unit procedure {up.id} ({up.title!r})")
    for moved in _reordered([u.id for u in a.procedure], [u.id for u in b.procedure]):
        out.append(f"> unit procedure {moved} moved: position {ups_a[moved][0] + 1} → {ups_b[moved][0] + 1}")

    # operations
    ops_a = {op.id: (up, i, op) for up in a.procedure for i, op in enumerate(up.operations)}
    ops_b = {op.id: (up, i, op) for up in b.procedure for i, op in enumerate(up.operations)}
    for up_b in b.procedure:
        for i, op in enumerate(up_b.operations):
            if op.id not in ops_a:
                out.append(f"+ operation {op.id} ({op.title!r}) in {up_b.id} at position {i + 1}")
                continue
            up_a, i_a, old_op = ops_a[op.id]
            if up_a.id != up_b.id:
                out.append(f"> operation {op.id} moved: {up_a.id} #{i_a + 1} → {up_b.id} #{i + 1}")
            for name in ("title", "description", "parallel_with"):
                if getattr(old_op, name) != getattr(op, name):
                    out.append(f"~ operation {op.id}: {name} {_show(getattr(old_op, name))} → {_show(getattr(op, name))}")
    for up_a in a.procedure:
        for op in up_a.operations:
            if op.id not in ops_b:
                out.append(f"- operation {op.id} ({op.title!r}) from {up_a.id}")
    for up_b in b.procedure:
        if up_b.id in ups_a:
            seq_a = [o.id for o in ups_a[up_b.id][1].operations]
            for moved in _reordered(seq_a, [o.id for o in up_b.operations]):
                out.append(f"> operation {moved} moved within {up_b.id}: position {ops_a[moved][1] + 1} → {ops_b[moved][1] + 1}")

    # steps
    st_a = {r.step.id: r for r in a.steps()}
    st_b = {r.step.id: r for r in b.steps()}
    for ref in b.steps():
        step = ref.step
        if step.id not in st_a:
            out.append(f"+ step {step.id} ({step.kind}, {step.title!r}) in {_where(ref.unit_procedure, ref.operation, ref.index)}")
            continue
        before = st_a[step.id]
        if before.operation.id != ref.operation.id:
            out.append(f"> step {step.id} moved: {_where(before.unit_procedure, before.operation, before.index)} → "
                       f"{_where(ref.unit_procedure, ref.operation, ref.index)}")
        _step_changes(before.step, step, out)
    for ref in a.steps():
        if ref.step.id not in st_b:
            out.append(f"- step {ref.step.id} ({ref.step.kind}, {ref.step.title!r}) from "
                       f"{_where(ref.unit_procedure, ref.operation, ref.index)}")
    for op_id, (up_b, _, op_b) in ops_b.items():
        if op_id in ops_a:
            seq_a = [s.id for s in ops_a[op_id][2].steps]
            for moved in _reordered(seq_a, [s.id for s in op_b.steps]):
                out.append(f"> step {moved} moved within {up_b.id}/{op_id}: #{st_a[moved].index + 1} → #{st_b[moved].index + 1}")
    return out
