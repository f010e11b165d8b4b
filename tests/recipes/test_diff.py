"""Version comparison for QA review."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings

from mes.recipes.diff import diff
from mes.recipes.loader import from_dict, load_recipe
from mes.recipes.model import MasterRecipe
from tests.recipes.helpers import CREAM, PARACETAMOL, minimal, recipe_dicts, step


def changed(edit: Callable[[dict[str, Any]], None], base: dict[str, Any] | None = None) -> list[str]:
    a = base if base is not None else minimal()
    b = copy.deepcopy(a)
    edit(b)
    return diff(from_dict(a), from_dict(b))


def ops(d: dict[str, Any]) -> list[dict[str, Any]]:
    return d["procedure"][0]["operations"]


def test_identical_recipes_have_no_differences() -> None:
    for path in (PARACETAMOL, CREAM):
        assert diff(load_recipe(path), load_recipe(path)) == []
    assert diff(load_recipe(PARACETAMOL), load_recipe(CREAM))  # and different ones do


def test_header_changes() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["version"] = 2
        d["product"]["name"] = "Test product, new name"
        d["batch_size"].update(quantity="120.0", maximum="150.0")
        d["description"] = "Now described."

    assert changed(edit) == [
        "~ version: 1 → 2",
        "~ product: FG-1 'Test product' → FG-1 'Test product, new name'",
        "~ description: (none) → 'Now described.'",
        "~ batch size: 100.0 kg → 120.0 kg",
        "~ batch size maximum: (none) → 150.0 kg",
    ]


def test_bom_changes() -> None:
    def edit(d: dict[str, Any]) -> None:
        bom = d["bill_of_materials"]
        bom[0].update(quantity="10.500", tolerance={"percent": "0.5"})
        bom[1].update(quantity="89500", unit="g")
        bom.append({"item": "RM-3", "name": "Glidant", "role": "excipient", "quantity": "0.500", "unit": "kg",
                    "tolerance": {"percent": "2"}})
        ops(d)[0]["steps"].append(step("id3", "identify", item="RM-3"))

    assert changed(edit) == [
        "~ BOM RM-1 (Active): quantity 10.000 kg → 10.500 kg (+5.00 %)",
        "~ BOM RM-1 (Active): tolerance ±1.0 % → ±0.5 %",
        "~ BOM RM-2 (Filler): quantity 90.000 kg → 89500 g (-0.56 %)",
        "+ BOM RM-3 (Glidant): 0.500 kg, role excipient, tolerance ±2 %",
        "+ step id3 (identify, 'Title of id3') in up1/op1 #6",
    ]


def test_removed_bom_line_and_its_steps() -> None:
    def edit(d: dict[str, Any]) -> None:
        del d["bill_of_materials"][1]
        del ops(d)[0]["steps"][2:4]
        ops(d)[1]["steps"][2]["formula"] = "w1"

    assert changed(edit) == [
        "- BOM RM-2 (Filler): 90.000 kg",
        "~ step theo (calculation): formula 'w1 + w2' → 'w1'",
        "- step id2 (identify, 'Title of id2') from up1/op1 #3",
        "- step w2 (weigh, 'Title of w2') from up1/op1 #4",
    ]


def test_precision_changes_are_changes() -> None:
    lines = changed(lambda d: d["bill_of_materials"][0].update(quantity="10.0000"))
    assert lines == ["~ BOM RM-1 (Active): quantity 10.000 kg → 10.0000 kg (same amount, written with 4 instead of 3 decimals)"]


def test_step_parameter_changes() -> None:
    def edit(d: dict[str, Any]) -> None:
        s = ops(d)[1]["steps"]
        s[0]["maximum"] = "PT20M"
        s[1].update(high="2.5", title="Loss on drying")
        s[3]["yield_low"] = "97.0"
        ops(d)[0]["steps"][1]["scale"] = {"readability": "0.005", "unit": "kg", "accuracy_class": "III"}

    assert changed(edit) == [
        "~ step w1 (weigh): scale d ≤ 0.01 kg → class III, d ≤ 0.005 kg",
        "~ step mix (timer): maximum PT15M (15 min) → PT20M (20 min)",
        "~ step lod (numeric): title 'Title of lod' → 'Loss on drying'",
        "~ step lod (numeric): high 2.0 % → 2.5 %",
        "~ step out (produce_output): yield_low 95.0 % → 97.0 %",
    ]


def test_kind_change() -> None:
    def edit(d: dict[str, Any]) -> None:
        ops(d)[1]["steps"][0] = step("mix", "instruction")

    assert changed(edit) == [
        "~ step mix: kind timer → instruction",
        "~ step mix (instruction): minimum PT10M (10 min) → (none)",
        "~ step mix (instruction): maximum PT15M (15 min) → (none)",
    ]


def test_moves() -> None:
    def within(d: dict[str, Any]) -> None:
        s = ops(d)[1]["steps"]
        s.insert(0, s.pop(1))  # lod before mix

    assert changed(within) in (["> step lod moved within up1/op2: #2 → #1"], ["> step mix moved within up1/op2: #1 → #2"])

    def across(d: dict[str, Any]) -> None:
        ops(d)[1]["steps"].insert(1, ops(d)[0]["steps"].pop(4))  # the signature gate into op2

    assert changed(across) == ["> step sig1 moved: up1/op1 #5 → up1/op2 #2"]

    def insertion_is_not_a_move(d: dict[str, Any]) -> None:
        ops(d)[1]["steps"].insert(0, step("new", "instruction"))

    assert changed(insertion_is_not_a_move) == ["+ step new (instruction, 'Title of new') in up1/op2 #1"]


def test_operation_and_unit_procedure_changes() -> None:
    def edit(d: dict[str, Any]) -> None:
        ops(d).insert(0, {"id": "prep", "title": "Prepare", "steps": [step("clean", "instruction")]})
        ops(d)[2]["title"] = "Process the blend"
        d["procedure"].append({"id": "up2", "title": "Pack", "operations": [
            {"id": "op3", "title": "Pack", "steps": [step("pack", "instruction")]}]})

    assert changed(edit) == [
        "+ unit procedure up2 ('Pack') at position 2",
        "+ operation prep ('Prepare') in up1 at position 1",
        "~ operation op2: title 'Process' → 'Process the blend'",
        "+ operation op3 ('Pack') in up2 at position 1",
        "+ step clean (instruction, 'Title of clean') in up1/prep #1",
        "+ step pack (instruction, 'Title of pack') in up2/op3 #1",
    ]

    base = minimal()
    ops(base).insert(0, {"id": "prep", "title": "Prepare", "steps": [step("clean", "instruction")]})

    def reorder(d: dict[str, Any]) -> None:
        ops(d).append(ops(d).pop(0))

    assert changed(reorder, base) == ["> operation prep moved within up1: position 1 → 3"]


def test_paracetamol_change_review() -> None:
    a = load_recipe(PARACETAMOL)
    text = PARACETAMOL.read_text(encoding="utf-8")
    b = load_recipe(text.replace("version: 1", "version: 2").replace('quantity: "100.000"', 'quantity: "100.500"')
                    .replace("maximum: PT20M", "maximum: PT25M"))
    assert diff(a, b) == [
        "~ version: 1 → 2",
        "~ BOM RM-1001 (Paracetamol (Ph. Eur.), dense powder): quantity 100.000 kg → 100.500 kg (+0.50 %)",
        "~ step blend_time (timer): maximum PT20M (20 min) → PT25M (25 min)",
    ]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipe_dicts(), recipe_dicts())
def test_diff_is_empty_exactly_for_equal_recipes(a: dict[str, Any], b: dict[str, Any]) -> None:
    ra: MasterRecipe = from_dict(a)
    rb: MasterRecipe = from_dict(b)
    assert diff(ra, ra) == []
    if ra.to_dict() != rb.to_dict():
        assert diff(ra, rb)
