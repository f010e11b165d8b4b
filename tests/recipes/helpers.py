"""Shared test material: paths of the example recipes, a minimal valid recipe, and a
hypothesis strategy that builds valid recipe dicts (which always load)."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
PARACETAMOL = RECIPES / "paracetamol-500mg-tablets.yaml"
CREAM = RECIPES / "moisturising-cream-ow.yaml"
EXAMPLES = (PARACETAMOL, CREAM)

SCALE = {"readability": "0.000001", "unit": "mg"}


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    def ignore_aliases(self, data: Any) -> bool:  # recipes refuse anchors/aliases
        return True


def dump(data: Any) -> str:
    """YAML text of a recipe dict (strings that look like numbers come out quoted)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


def step(id: str, kind: str, **params: Any) -> dict[str, Any]:
    """A step dict with a title and instruction."""
    return {"id": id, "kind": kind, "title": f"Title of {id}", "instruction": f"Do {id}.", **params}


MINIMAL: dict[str, Any] = {
    "format": "mes.master-recipe/v1",
    "id": "MR-TEST",
    "version": 1,
    "product": {"code": "FG-1", "name": "Test product"},
    "batch_size": {"quantity": "100.0", "unit": "kg"},
    "bill_of_materials": [
        {"item": "RM-1", "name": "Active", "role": "api", "quantity": "10.000", "unit": "kg", "tolerance": {"percent": "1.0"}},
        {"item": "RM-2", "name": "Filler", "role": "excipient", "quantity": "90.000", "unit": "kg", "tolerance": {"percent": "1.0"}},
    ],
    "procedure": [
        {
            "id": "up1",
            "title": "Make it",
            "operations": [
                {
                    "id": "op1",
                    "title": "Dispense",
                    "steps": [
                        step("id1", "identify", item="RM-1"),
                        step("w1", "weigh", item="RM-1", scale={"readability": "0.01", "unit": "kg"}),
                        step("id2", "identify", item="RM-2"),
                        step("w2", "weigh", item="RM-2", scale={"readability": "0.01", "unit": "kg"}),
                        step("sig1", "signature", meaning="verified", roles=["supervisor"], second_person=True),
                    ],
                },
                {
                    "id": "op2",
                    "title": "Process",
                    "steps": [
                        step("mix", "timer", minimum="PT10M", maximum="PT15M"),
                        step("lod", "numeric", unit="%", precision=1, high="2.0"),
                        step("theo", "calculation", formula="w1 + w2", unit="kg", precision=3),
                        step("out", "produce_output", item="BLK-1", quantity="100.000", unit="kg",
                             theoretical_from="theo", yield_low="95.0", yield_high="101.0"),
                    ],
                },
            ],
        }
    ],
}


def minimal() -> dict[str, Any]:
    """A fresh deep copy of a small valid recipe dict."""
    return copy.deepcopy(MINIMAL)


# ----------------------------------------------------------------------------- strategies


def _decimal_text(units: int, places: int) -> str:
    return str(Decimal(units).scaleb(-places)) if places else str(units)


quantities = st.builds(_decimal_text, st.integers(100, 10_000_000), st.integers(0, 3))
"""Positive decimal strings with 0-3 decimals and at least 100 units of the last decimal."""


@st.composite
def recipe_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid master recipe dict exercising every step kind."""
    n_items = draw(st.integers(1, 4))
    bom = []
    for i in range(n_items):
        line: dict[str, Any] = {
            "item": f"RM-{i}",
            "name": f"Material {i}",
            "role": draw(st.sampled_from(["api", "excipient", "ingredient", "processing_aid"])),
            "quantity": draw(quantities),
            "unit": draw(st.sampled_from(["mg", "g", "kg"])),
            "tolerance": {"percent": draw(st.sampled_from(["0.5", "1.0", "2", "5.00", "10"]))},
        }
        if draw(st.booleans()):  # an absolute tolerance of 1-50 units of the last decimal, maybe in a finer unit
            exponent = int(Decimal(line["quantity"]).as_tuple().exponent)
            amount = Decimal(draw(st.integers(1, 50))).scaleb(exponent)
            finer = {"kg": "g", "g": "mg", "mg": "mg"}[line["unit"]] if draw(st.booleans()) else line["unit"]
            factor = Decimal(1000) if finer != line["unit"] else Decimal(1)
            line["tolerance"] = {"absolute": format(amount * factor, "f"), "unit": finer}
        if draw(st.booleans()):
            line["note"] = draw(st.sampled_from(["Phase A", "removed on drying", "µ-sized, 25 °C"]))
        bom.append(line)
    batch_unit = draw(st.sampled_from(["kg", "g", "L", "pcs"]))
    batch_places = 0 if batch_unit == "pcs" else draw(st.integers(0, 3))
    batch = {"quantity": _decimal_text(draw(st.integers(1, 1_000_000)), batch_places), "unit": batch_unit}

    value_steps: list[str] = []
    steps: list[dict[str, Any]] = [step("start", "instruction")]
    for i, line in enumerate(bom):
        steps.append(step(f"id_{i}", "identify", item=line["item"], scan="lot"))
        places = int(Decimal(line["quantity"]).as_tuple().exponent)
        units = int(Decimal(line["quantity"]).scaleb(-places))
        if units >= 200 and draw(st.booleans()):  # split into two weighings of >= 100 units each
            first = draw(st.integers(100, units - 100))
            for part, u in (("a", first), ("b", units - first)):
                steps.append(step(f"w_{i}{part}", "weigh", item=line["item"], target=_decimal_text(u, -places),
                                  unit=line["unit"], scale=SCALE, multiple_containers=True, max_containers=3))
                value_steps.append(f"w_{i}{part}")
        else:
            steps.append(step(f"w_{i}", "weigh", item=line["item"], scale=SCALE,
                              tare=draw(st.sampled_from(["each_container", "preset"]))))
            value_steps.append(f"w_{i}")
        steps.append(step(f"charge_{i}", "identify", item=line["item"], scan="dispensed"))
    if draw(st.booleans()):
        steps.append(step("eq", "equipment_check", equipment_class="Blender",
                          required_states=draw(st.lists(st.sampled_from(["calibrated", "qualified", "not_in_use"]),
                                                        min_size=0, max_size=3, unique=True)) + ["clean"],
                          max_since_cleaning=draw(st.sampled_from(["P3D", "PT72H", "PT12H30M"]))))
    low = draw(st.integers(-500, 500))
    high = low + draw(st.integers(0, 500))
    precision = draw(st.integers(0, 3))
    steps.append(step("num", "numeric", unit=draw(st.sampled_from(["°C", "%", "pH", "mPa·s", "rpm", "min"])),
                      precision=precision, low=str(low), high=str(high)))
    value_steps.append("num")
    minimum = draw(st.integers(1, 120))
    steps.append(step("mix", "timer", minimum=f"PT{minimum}M", maximum=f"PT{minimum + draw(st.integers(0, 60))}M"))
    steps.append(step("hold", "timer", from_step="start", maximum=draw(st.sampled_from(["P30D", "PT24H", "P1DT12H"]))))
    refs = draw(st.lists(st.sampled_from(value_steps), min_size=1, max_size=4))
    formula = " + ".join(refs) if draw(st.booleans()) else f"({refs[0]} - 1.5) * 2 / 4"
    steps.append(step("calc", "calculation", formula=formula, unit="kg", precision=draw(st.integers(0, 4))))
    steps.append(step("ipc", "sample_check", samples=draw(st.integers(1, 20)), unit="mg", precision=1,
                      target="575.0", low="546.3", high="603.7", mean_low="557.75", mean_high="592.25"))
    meaning = draw(st.sampled_from(["performed", "verified", "reviewed", "approved", "released", "rejected"]))
    # a 'performed' gate is signed by a role that performs the work (QA never does: issue 14)
    signers = ["operator", "supervisor"] if meaning == "performed" else ["operator", "supervisor", "qa"]
    roles = ["qa"] if meaning in ("released", "rejected") else draw(
        st.lists(st.sampled_from(signers), min_size=1, max_size=3, unique=True))
    second = meaning in ("verified", "approved")
    steps.append(step("sig", "signature", meaning=meaning, roles=roles, second_person=second,
                      **({"covers": ["start"]} if second else {})))
    steps.append(step("out", "produce_output", item="BLK-1", quantity=draw(quantities), unit="kg", theoretical_from="calc",
                      yield_low="90.0", expected_yield="98.5", yield_high="102.0"))

    # cut the steps into operations (never before the first step) and maybe unit procedures
    cuts = sorted(draw(st.sets(st.integers(1, len(steps) - 1), max_size=4)))
    chunks = [steps[a:b] for a, b in zip([0, *cuts], [*cuts, len(steps)], strict=True)]
    operations: list[dict[str, Any]] = [{"id": f"op{i}", "title": f"Operation {i}", "steps": chunk} for i, chunk in enumerate(chunks)]
    if draw(st.booleans()):  # an operation of instructions that may run beside the previous one
        operations.append({"id": "side", "title": "Side work", "parallel_with": [operations[-1]["id"]],
                           "steps": [step("side_1", "instruction"), step("side_2", "instruction")]})
    split = draw(st.integers(1, len(operations)))
    procedure: list[dict[str, Any]] = [{"id": "up1", "title": "First", "unit_class": "Granulator", "operations": operations[:split]}]
    if split < len(operations):
        if operations[split].get("parallel_with"):
            procedure[0]["operations"].append(operations[split])
            split += 1
        if split < len(operations):
            procedure.append({"id": "up2", "title": "Second", "operations": operations[split:]})
    recipe: dict[str, Any] = {
        "format": "mes.master-recipe/v1",
        "id": "MR-GEN",
        "version": draw(st.one_of(st.integers(1, 99), st.sampled_from(["1.0", "2.1.3", "3.0.0-rc.1"]))),
        "product": {"code": "FG-GEN", "name": draw(st.sampled_from(["Product", "Crème 50 mL", "Tablets 500 mg"]))},
        "batch_size": batch,
        "bill_of_materials": bom,
        "procedure": procedure,
    }
    if draw(st.booleans()):
        recipe["description"] = "Generated.\nSecond line with \"quotes\" and: colons."
    return recipe
