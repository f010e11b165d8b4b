"""The rules beyond the schema, one by one, on small variants of a minimal recipe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mes.recipes.checks import check
from mes.recipes.errors import RecipeError
from mes.recipes.loader import from_dict
from tests.recipes.helpers import minimal, step

Edit = Callable[[dict[str, Any]], None]


def steps(d: dict[str, Any], op: int = 0) -> list[dict[str, Any]]:
    return d["procedure"][0]["operations"][op]["steps"]


def problems(edit: Edit) -> list[str]:
    data = minimal()
    edit(data)
    try:
        from_dict(data)
    except RecipeError as exc:
        return exc.messages()
    return []


def expect(edit: Edit, path: str, message: str) -> None:
    found = problems(edit)
    assert any(f": {path}: " in m and message in m for m in found), found


def test_minimal_recipe_is_valid() -> None:
    assert problems(lambda d: None) == []
    assert check(from_dict(minimal())) == []


# ---------------------------------------------------------------- ids and structure


def test_ids_are_unique_across_levels() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["procedure"][0]["operations"][1]["id"] = "up1"
        steps(d, 1)[0]["id"] = "w1"

    found = problems(edit)
    assert any("procedure[0].operations[1].id: duplicate id 'up1': already used at procedure[0]" in m for m in found)
    assert any("steps[0].id: duplicate id 'w1': already used at procedure[0].operations[0].steps[1]" in m for m in found)


def parallel(ids: list[str], where: int = 1) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        d["procedure"][0]["operations"][where]["parallel_with"] = ids
    return edit


def test_parallel_with_rules() -> None:
    expect(parallel(["op2"]), "procedure[0].operations[1].parallel_with[0]", "cannot run in parallel with itself")
    expect(parallel(["op1", "nope"]), "procedure[0].operations[1].parallel_with[1]", "no operation 'nope' in unit procedure 'up1'")
    expect(parallel(["op2"], where=0), "procedure[0].operations[0].parallel_with[0]", "operation 'op2' comes later")

    def not_adjacent(d: dict[str, Any]) -> None:
        ops = d["procedure"][0]["operations"]
        ops.insert(1, {"id": "op_mid", "title": "Middle", "steps": [step("mid", "instruction")]})
        ops[2]["parallel_with"] = ["op1"]

    expect(not_adjacent, "procedure[0].operations[2].parallel_with[0]", "not in the stage just before")


def test_parallel_operations_form_one_stage() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["procedure"][0]["operations"].insert(1, {"id": "side", "title": "Side", "parallel_with": ["op1"],
                                                   "steps": [step("s1", "instruction")]})

    data = minimal()
    edit(data)
    recipe = from_dict(data)
    assert recipe.procedure[0].stages() == (("op1", "side"), ("op2",))
    assert not recipe.precedes("w1", "s1") and not recipe.precedes("s1", "w1")
    assert recipe.precedes("s1", "mix") and recipe.precedes("w1", "mix")


# ---------------------------------------------------------------- batch size and BOM


def bs(**values: str) -> Edit:
    return lambda d: d["batch_size"].update(values)


def test_batch_size_rules() -> None:
    expect(bs(quantity="0"), "batch_size.quantity", "greater than zero")
    expect(bs(quantity="1000.5", unit="pcs"), "batch_size.quantity", "whole number")
    expect(bs(unit="°C"), "batch_size.unit", "a mass, a volume or a count")
    expect(bs(minimum="200"), "batch_size.minimum", "at most the nominal")
    expect(bs(minimum="0"), "batch_size.minimum", "greater than zero")
    expect(bs(maximum="50"), "batch_size.maximum", "at least the nominal")
    assert problems(bs(minimum="50.0", maximum="120")) == []


def bom(index: int, **values: Any) -> Edit:
    return lambda d: d["bill_of_materials"][index].update(values)


def test_bom_rules() -> None:
    expect(lambda d: d["bill_of_materials"].append(dict(d["bill_of_materials"][0])), "bill_of_materials[2].item",
           "item 'RM-1' is already on the bill of materials")
    expect(bom(0, quantity="0.000"), "bill_of_materials[0].quantity", "greater than zero")
    expect(bom(0, unit="min"), "bill_of_materials[0].unit", "a mass, a volume or a count")
    expect(bom(0, tolerance={"percent": "0"}), "bill_of_materials[0].tolerance", "must be greater than 0")
    expect(bom(0, tolerance={"percent": "10.5"}), "bill_of_materials[0].tolerance", "at most 10 %")
    expect(bom(0, tolerance={"percent": "1", "unit": "kg"}), "bill_of_materials[0].tolerance", "a percent tolerance has no unit")
    expect(bom(0, tolerance={"absolute": "10", "unit": "kg"}), "bill_of_materials[0].tolerance", "is not smaller than the quantity")
    expect(bom(0, tolerance={"absolute": "1", "unit": "L"}), "bill_of_materials[0].tolerance",
           "the tolerance is in L but the quantity is in kg")
    expect(bom(0, tolerance={"absolute": "0", "unit": "g"}), "bill_of_materials[0].tolerance", "greater than zero")
    assert problems(bom(0, tolerance={"absolute": "50", "unit": "g"})) == []

    def unused(d: dict[str, Any]) -> None:
        d["bill_of_materials"].append({"item": "RM-3", "name": "Unused", "role": "excipient", "quantity": "1", "unit": "kg"})

    expect(unused, "bill_of_materials[2].item", "item 'RM-3' is never weighed or identified")


def test_identify_alone_covers_a_bom_item() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["bill_of_materials"].append({"item": "PK-1", "name": "Jars", "role": "packaging", "quantity": "4000", "unit": "pcs"})
        steps(d).insert(0, step("jars", "identify", item="PK-1"))

    assert problems(edit) == []


# ---------------------------------------------------------------- weigh and identify


def weigh(**values: Any) -> Edit:
    return lambda d: steps(d)[1].update(values)


W = "procedure[0].operations[0].steps[1]"


def test_weigh_rules() -> None:
    expect(weigh(item="RM-404"), f"{W}.item", "no bill-of-materials line for item 'RM-404'")
    expect(weigh(unit="L"), f"{W}.unit", "a weigh step weighs in a mass unit")
    expect(weigh(target="0", unit="kg"), f"{W}.target", "greater than zero")
    expect(weigh(max_containers=3), f"{W}.max_containers", "needs multiple_containers: true")
    expect(weigh(tare="none", multiple_containers=True), f"{W}.tare", "tare: none cannot add up several containers")
    # the container's tare limits (issue 14)
    expect(weigh(tare="none", tare_high="1.0"), f"{W}.tare", "tare limits need a container tare")
    expect(weigh(tare_low="0"), f"{W}.tare_low", "tare_low must be greater than zero")
    expect(weigh(tare_low="2.0", tare_high="1.0"), f"{W}.tare_low", "tare_low must not be above tare_high")
    assert problems(weigh(tare_low="0.5", tare_high="1.0")) == []
    expect(weigh(scale={"readability": "1", "unit": "mL"}), f"{W}.scale.unit", "the scale readability is a mass")
    expect(weigh(scale={"readability": "0", "unit": "g"}), f"{W}.scale.readability", "greater than zero")
    expect(weigh(scale={"readability": "0.2", "unit": "kg"}), f"{W}.scale.readability",
           "a scale with d = 0.2 kg cannot resolve the tolerance ±1.0 % of 10.000 kg")
    expect(weigh(tolerance={"percent": "20"}), f"{W}.tolerance", "at most 10 %")
    assert problems(weigh(unit="g", tolerance={"absolute": "50", "unit": "g"}, scale={"readability": "1", "unit": "g"})) == []

    def no_tolerance(d: dict[str, Any]) -> None:
        del d["bill_of_materials"][0]["tolerance"]

    expect(no_tolerance, W, "no tolerance: give one on this step or on the bill-of-materials line for 'RM-1'")

    def volume_item(d: dict[str, Any]) -> None:
        d["bill_of_materials"][0]["unit"] = "L"

    expect(volume_item, f"{W}.item", "weigh steps dispense by mass")


def test_split_weighings_must_add_up() -> None:
    def split(a: str, b: str, unit_b: str = "kg") -> Edit:
        def edit(d: dict[str, Any]) -> None:
            s = steps(d)
            s[1].update(target=a, unit="kg")
            s.insert(2, step("w1b", "weigh", item="RM-1", target=b, unit=unit_b, scale={"readability": "0.1", "unit": "g"}))
        return edit

    assert problems(split("6.000", "4000", "g")) == []
    expect(split("6.000", "3.999"), "bill_of_materials[0].quantity",
           "the weigh steps for 'RM-1' (6.000 kg, 3.999 kg) do not add up to 10.000 kg")

    def whole_and_split(d: dict[str, Any]) -> None:
        steps(d).insert(2, step("w1b", "weigh", item="RM-1", target="1.000", unit="kg", scale={"readability": "0.1", "unit": "g"}))

    expect(whole_and_split, W, "item 'RM-1' is weighed in 2 steps; give each of them a target")


def test_identify_rules() -> None:
    expect(lambda d: steps(d)[0].update(item="RM-404"), "procedure[0].operations[0].steps[0].item", "no bill-of-materials line")
    expect(lambda d: steps(d)[0].update(scan="dispensed"), "procedure[0].operations[0].steps[0].scan",
           "scan: dispensed needs a weigh step for 'RM-1' that completes before this step")
    expect(lambda d: steps(d)[2].update(dispensed_by="w1"), "procedure[0].operations[0].steps[2].dispensed_by",
           "dispensed_by needs scan: dispensed")
    expect(lambda d: steps(d)[2].update(scan="dispensed", dispensed_by="w1"), "procedure[0].operations[0].steps[2].dispensed_by",
           "step 'w1' does not weigh 'RM-2'")
    expect(lambda d: steps(d)[2].update(scan="dispensed", dispensed_by="w2"), "procedure[0].operations[0].steps[2].dispensed_by",
           "dispensed_by 'w2' comes later")
    assert problems(lambda d: steps(d, 1).insert(0, step("c1", "identify", item="RM-1", scan="dispensed", dispensed_by="w1"))) == []


# ---------------------------------------------------------------- limits


N = "procedure[0].operations[1].steps[1]"


def numeric(**values: Any) -> Edit:
    return lambda d: steps(d, 1)[1].update(values)


def test_numeric_limits() -> None:
    expect(numeric(low="3.0"), f"{N}.high", "high 2.0 is below low 3.0")
    expect(numeric(low="1.0", target="2.5"), f"{N}.high", "high 2.0 is below target 2.5")
    expect(numeric(target="0.5", low="1.0"), f"{N}.target", "target 0.5 is below low 1.0")
    expect(numeric(high="2.05"), f"{N}.high", "2.05 has 2 decimals but the step records 1")
    assert problems(numeric(low="-5", target="0", high="2.0")) == []
    assert problems(numeric(low="2.0", high="2.0")) == []


def test_sample_check_limits() -> None:
    def sample(**values: Any) -> Edit:
        base = {"samples": 10, "unit": "mg", "precision": 1, "target": "575.0", "low": "546.3", "high": "603.7"}
        return lambda d: steps(d, 1).insert(0, step("ipc", "sample_check", **{**base, **values}))

    S = "procedure[0].operations[1].steps[0]"
    assert problems(sample(mean_low="557.75", mean_high="592.25")) == []
    expect(sample(mean_low="540.0"), f"{S}.mean_low", "mean_low 540.0 is below low 546.3")
    expect(sample(mean_high="610.0"), f"{S}.high", "high 603.7 is below mean_high 610.0")
    expect(sample(mean_low="580.0"), f"{S}.target", "target 575.0 is below mean_low 580.0")
    expect(sample(mean_low="557.755"), f"{S}.mean_low", "has 3 decimals but the step records 2")
    expect(sample(low="546.25"), f"{S}.low", "has 2 decimals but the step records 1")


# ---------------------------------------------------------------- calculations


C = "procedure[0].operations[1].steps[2].formula"


def formula(text: str) -> Edit:
    return lambda d: steps(d, 1)[2].update(formula=text)


def test_calculation_references() -> None:
    assert problems(formula("(w1 + w2) * lod / 100")) == []
    expect(formula("w1 +"), C, "the formula ends where a number")
    expect(formula("max(w1) * 2"), C, "function calls are not allowed")
    expect(formula("max(w1, w2)"), C, "',' is not allowed in a formula")
    expect(formula("w1 + nope"), C, "step 'nope' does not exist in this recipe")
    expect(formula("theo * 2"), C, "step 'theo' is this step itself")
    expect(formula("w1 + out"), C, "step 'out' comes later")
    expect(formula("mix * 2"), C, "step 'mix' is a timer step and records no value")
    expect(formula("sig1 * 2"), C, "step 'sig1' is a signature step and records no value")


def test_calculation_cannot_use_a_parallel_operation() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["procedure"][0]["operations"][1]["parallel_with"] = ["op1"]

    expect(edit, C, "step 'w1' is in operation 'op1', which runs in parallel with 'op2'; it is not guaranteed to be complete")


def test_calculation_limits() -> None:
    expect(lambda d: steps(d, 1)[2].update(low="101", high="99"), "procedure[0].operations[1].steps[2].high", "high 99 is below low 101")
    expect(lambda d: steps(d, 1)[2].update(low="99.0001"), "procedure[0].operations[1].steps[2].low", "4 decimals but the step records 3")


# ---------------------------------------------------------------- timers, equipment, signatures


T = "procedure[0].operations[1].steps[0]"


def test_timer_rules() -> None:
    def timer(**values: Any) -> Edit:
        def edit(d: dict[str, Any]) -> None:
            s = steps(d, 1)[0]
            s.pop("minimum"), s.pop("maximum")
            s.update(values)
        return edit

    expect(timer(), T, "a timer needs a minimum, a maximum or both")
    expect(timer(minimum="PT1H", maximum="PT30M"), f"{T}.maximum", "the maximum PT30M is shorter than the minimum PT1H")
    expect(timer(maximum="PT0S"), f"{T}.maximum", "longer than zero")
    expect(timer(maximum="P3D", from_step="lod"), f"{T}.from_step", "from_step 'lod' comes later")
    expect(timer(maximum="P3D", from_step="mix"), f"{T}.from_step", "from_step 'mix' is this step itself")
    assert problems(timer(maximum="P3D", from_step="w1")) == []
    assert problems(timer(minimum="PT90M")) == []


def test_equipment_check_rules() -> None:
    def equipment(**values: Any) -> Edit:
        return lambda d: steps(d).insert(0, step("eq", "equipment_check", equipment_class="Blender", **values))

    E = "procedure[0].operations[0].steps[0].max_since_cleaning"
    assert problems(equipment(required_states=["clean", "not_in_use"], max_since_cleaning="P3D")) == []
    expect(equipment(required_states=["calibrated"], max_since_cleaning="P3D"), E, "needs 'clean' in required_states")
    expect(equipment(required_states=["clean"], max_since_cleaning="PT0S"), E, "longer than zero")


def test_signature_rules() -> None:
    def sig(**values: Any) -> Edit:
        return lambda d: steps(d)[4].update(values)

    S = "procedure[0].operations[0].steps[4]"
    expect(sig(meaning="released", roles=["qa", "supervisor"], second_person=False), f"{S}.roles", "only qa may sign 'released'")
    expect(sig(meaning="rejected", roles=["operator"], second_person=False), f"{S}.roles", "only qa may sign 'rejected'")
    expect(sig(meaning="performed"), f"{S}.second_person", "second-person verification needs meaning 'verified'")
    expect(sig(covers=["w2", "theo"]), f"{S}.covers", "covers step 'theo' comes later")
    assert problems(sig(meaning="released", roles=["qa"], second_person=False)) == []
    assert problems(sig(covers=["w1", "w2"])) == []

    def first_in_operation(d: dict[str, Any]) -> None:
        steps(d, 1).insert(0, step("gate", "signature", meaning="verified", roles=["qa"], second_person=True))

    expect(first_in_operation, "procedure[0].operations[1].steps[0].second_person", "nothing to verify")


# ---------------------------------------------------------------- produce output


P = "procedure[0].operations[1].steps[3]"


def test_produce_output_rules() -> None:
    def out(**values: Any) -> Edit:
        return lambda d: steps(d, 1)[3].update(values)

    expect(out(quantity="0"), f"{P}.quantity", "greater than zero")
    expect(out(yield_low="0"), f"{P}.yield_low", "greater than zero")
    expect(out(yield_low="101.0", yield_high="99.0"), f"{P}.yield_high", "yield_high 99.0 is below yield_low 101.0")
    expect(out(expected_yield="103.0"), f"{P}.yield_high", "yield_high 101.0 is below expected_yield 103.0")
    expect(out(theoretical_from="lod"), f"{P}.theoretical_from", "must name a calculation step, 'lod' is a numeric step")
    expect(out(unit="L"), f"{P}.theoretical_from", "step 'theo' computes kg, which cannot be compared with L")
    assert problems(out(unit="g")) == []

    def none(d: dict[str, Any]) -> None:
        del steps(d, 1)[3]

    expect(none, "procedure", "the recipe has no produce_output step; exactly one is required")

    def two(d: dict[str, Any]) -> None:
        extra = dict(steps(d, 1)[3], id="out2")
        steps(d, 1).append(extra)

    expect(two, "procedure[0].operations[1].steps[4].kind", "a second produce_output step (the first is 'out')")


def test_every_problem_is_reported_at_once() -> None:
    def many(d: dict[str, Any]) -> None:
        steps(d)[1]["item"] = "RM-404"
        steps(d, 1)[2]["formula"] = "w1 + later"
        d["batch_size"]["quantity"] = "0"

    found = problems(many)
    assert len(found) >= 3


@pytest.mark.parametrize("kind", ["numeric", "sample_check", "calculation"])
def test_decimal_limits_may_be_negative(kind: str) -> None:
    params: dict[str, Any] = {"unit": "°C", "precision": 1, "low": "-25.0", "high": "-15.0"}
    if kind == "sample_check":
        params["samples"] = 3
    if kind == "calculation":
        params["formula"] = "lod - 20"
    assert problems(lambda d: steps(d, 1).insert(2, step("cold", kind, **params))) == []


# ---------------------------------------------------------------- text per language


def test_step_text_per_language_loads_round_trips_and_falls_back_to_english() -> None:
    """Issue 15 / kiosk rule 13: a step's title, instruction (and an equipment check's class)
    may be given in zh-Hans; English, the step's own text, stays required; a text not given
    falls back to English; the file form keeps them and a recipe without any keeps its form."""
    data = minimal()
    first = steps(data)[0]
    first["translations"] = {"zh-Hans": {"title": "中文标题", "instruction": "中文说明。"}}
    recipe = from_dict(data)
    spec = recipe.step(first["id"])
    assert spec.text("title", "zh-Hans") == "中文标题" and spec.text("instruction", "zh-Hans") == "中文说明。"
    assert spec.text("title", "en") == first["title"] and spec.text("title", None) == first["title"]
    assert recipe.to_dict()["procedure"][0]["operations"][0]["steps"][0]["translations"] == first["translations"]
    assert from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()
    assert "translations" not in from_dict(minimal()).to_dict()["procedure"][0]["operations"][0]["steps"][1]
    partial = minimal()
    steps(partial)[0]["translations"] = {"zh-Hans": {"title": "只有标题"}}
    only_title = from_dict(partial).step(first["id"])
    assert only_title.text("instruction", "zh-Hans") == first["instruction"]


def test_step_text_per_language_is_checked() -> None:
    expect(lambda d: steps(d)[0].update(translations={"fr": {"title": "Titre"}}), "procedure[0].operations[0].steps[0].translations",
           "fr")
    expect(lambda d: steps(d)[0].update(translations={"zh-Hans": {}}), "procedure[0].operations[0].steps[0].translations.zh-Hans",
           "")
    expect(lambda d: steps(d)[0].update(translations={"zh-Hans": {"equipment_class": "房间"}}),
           "procedure[0].operations[0].steps[0].translations.zh-Hans.equipment_class", "has no equipment_class to translate")
