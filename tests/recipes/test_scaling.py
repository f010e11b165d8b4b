"""Control recipes: exact scaling, resolved weigh steps, refusals, the canonical hash."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mes.quantities import convert, decimal_places, round_half_even, to_text
from mes.recipes.errors import RecipeError
from mes.recipes.loader import from_dict, load_recipe
from mes.recipes.model import MasterRecipe, ProduceOutputStep, WeighStep
from mes.recipes.scaling import CONTROL_FORMAT, ControlRecipe, canonical_json, recipe_hash, scale
from tests.recipes.helpers import CREAM, PARACETAMOL, minimal, recipe_dicts

D = Decimal


@pytest.fixture(scope="module")
def paracetamol() -> MasterRecipe:
    return load_recipe(PARACETAMOL)


def test_paracetamol_scaled_to_150000_tablets(paracetamol: MasterRecipe) -> None:
    control = scale(paracetamol, D("150000"), "pcs")
    assert control.batch_size.quantity == D("150000") and control.batch_size.unit == "pcs"
    assert control.nominal_batch_size == paracetamol.batch_size
    assert {b.item: to_text(b.quantity) for b in control.bill_of_materials} == {
        "RM-1001": "75.000", "RM-2001": "4.500", "RM-2010": "2.250", "RM-2020": "2.100",
        "RM-2002": "1.950", "RM-2030": "0.450", "RM-3001": "16.500"}
    w = control.step("w_mgst")
    assert isinstance(w, WeighStep) and (to_text(w.target), w.unit, str(w.tolerance)) == ("450", "g", "±1.0 %")  # type: ignore[arg-type]
    assert w.window() == (D("445.5"), D("454.5"))
    w = control.step("w_ccs_intra")
    assert isinstance(w, WeighStep) and to_text(w.target) == "1.050"  # type: ignore[arg-type]
    out = control.step("tablets_out")
    assert isinstance(out, ProduceOutputStep) and to_text(out.quantity) == "86.250"
    assert control.step("lod") == paracetamol.step("lod")  # limits do not scale
    assert control.step("blend_time") == paracetamol.step("blend_time")  # neither do times


def test_control_recipe_dict(paracetamol: MasterRecipe) -> None:
    d = scale(paracetamol, D("150000"), "pcs").to_dict()
    assert d["format"] == CONTROL_FORMAT
    assert d["master"] == {"id": "MR-PCM500-TAB", "version": 1, "hash": recipe_hash(paracetamol.to_dict())}
    assert d["batch_size"] == {"quantity": "150000", "unit": "pcs"}
    assert d["nominal_batch_size"] == {"quantity": "200000", "unit": "pcs", "minimum": "100000", "maximum": "200000"}
    assert d["bill_of_materials"][0]["low"] == "74.625" and d["bill_of_materials"][0]["high"] == "75.375"
    granulation = d["procedure"][1]
    assert granulation["stages"] == [["gran_setup"], ["binder_prep", "dry_mix"], ["wet_massing"], ["drying"], ["milling"]]
    w = d["procedure"][0]["operations"][1]["steps"][1]
    assert (w["id"], w["target"], w["unit"], w["tolerance"], w["low"], w["high"]) == (
        "w_pcm", "75.000", "kg", {"percent": "0.5"}, "74.625", "75.375")
    json.dumps(d)  # JSON-able
    assert "float" not in repr(d)


def test_scaling_to_the_nominal_batch_size_changes_nothing(paracetamol: MasterRecipe) -> None:
    control = scale(paracetamol, D("200000"), "pcs")
    assert control.bill_of_materials == paracetamol.bill_of_materials
    assert [to_text(b.quantity) for b in control.bill_of_materials] == [to_text(b.quantity) for b in paracetamol.bill_of_materials]
    for ref in paracetamol.steps():
        if isinstance(ref.step, WeighStep):
            assert control.step(ref.step.id) == paracetamol.resolved_weigh(ref.step)


def test_batch_size_in_another_unit() -> None:
    cream = load_recipe(CREAM)
    assert scale(cream, D("150000"), "g").bill_of_materials == scale(cream, D("150.000"), "kg").bill_of_materials


@pytest.mark.parametrize(
    ("size", "unit", "message"),
    [
        ("50000", "pcs", "outside the validated batch size range 100000 to 200000 pcs"),
        ("200001", "pcs", "outside the validated batch size range"),
        ("150000.5", "pcs", "must be a whole number"),
        ("100", "kg", "cannot scale a recipe for 200000 pcs to kg"),
        ("0", "pcs", "must be a positive number"),
        ("-1", "pcs", "must be a positive number"),
        ("NaN", "pcs", "must be a positive number"),
        ("150000", "stones", "not a known unit"),
    ],
)
def test_refusals(paracetamol: MasterRecipe, size: str, unit: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        scale(paracetamol, D(size), unit)


def test_floats_are_refused(paracetamol: MasterRecipe) -> None:
    with pytest.raises(TypeError, match="must be a Decimal"):
        scale(paracetamol, 150000.0, "pcs")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        scale(paracetamol, "150000", "pcs")  # type: ignore[arg-type]
    assert scale(paracetamol, 150000, "pcs").batch_size.quantity == D("150000")  # type: ignore[arg-type]


def test_batch_too_small_for_the_scale() -> None:
    recipe = from_dict(minimal())  # RM-1: 10.000 kg ±1.0 % on a scale with d = 0.01 kg
    scale(recipe, D("10"), "kg")  # ±0.010 kg: just resolvable
    with pytest.raises(RecipeError, match="finer than the required scale readability 0.01 kg"):
        scale(recipe, D("9"), "kg")


def test_tiny_batches_that_round_to_zero() -> None:
    with pytest.raises(RecipeError, match="rounds to zero"):
        scale(from_dict(minimal()), D("0.001"), "kg")


def test_rounding_is_half_even() -> None:
    data = minimal()
    data["batch_size"]["quantity"] = "8"
    data["bill_of_materials"][0]["quantity"] = "0.010"  # kg, 3 decimals
    data["procedure"][0]["operations"][0]["steps"][1]["scale"] = {"readability": "0.00001", "unit": "kg"}
    recipe = from_dict(data)
    assert scale(recipe, D("2"), "kg").bill_of_materials[0].quantity == D("0.002")  # 0.0025: tie, to even
    assert scale(recipe, D("6"), "kg").bill_of_materials[0].quantity == D("0.008")  # 0.0075: tie, to even
    assert scale(recipe, D("7"), "kg").bill_of_materials[0].quantity == D("0.009")  # 0.00875: up


def test_split_weighings_are_scaled_one_by_one(paracetamol: MasterRecipe) -> None:
    control = scale(paracetamol, D("123457"), "pcs")
    intra, extra = control.step("w_ccs_intra"), control.step("w_ccs_extra")
    line = next(b for b in control.bill_of_materials if b.item == "RM-2020")
    assert intra.target == extra.target == D("0.864")  # type: ignore[attr-defined]  # 1.400 x 0.617285
    assert line.quantity == D("1.728")  # 2.800 x 0.617285 = 1.728398 (the BOM line is informational)


# ----------------------------------------------------------------------------- hash


def test_recipe_hash_is_sha256_of_canonical_json(paracetamol: MasterRecipe) -> None:
    d = scale(paracetamol, D("150000"), "pcs").to_dict()
    expected = hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    assert recipe_hash(d) == expected
    assert len(expected) == 64
    assert recipe_hash(json.loads(json.dumps(d))) == expected  # survives a JSON round trip
    reordered = dict(reversed(list(d.items())))
    assert recipe_hash(reordered) == expected


def test_recipe_hash_changes_with_any_content(paracetamol: MasterRecipe) -> None:
    a = scale(paracetamol, D("150000"), "pcs").to_dict()
    b = scale(paracetamol, D("150001"), "pcs").to_dict()
    assert recipe_hash(a) != recipe_hash(b)
    c = json.loads(json.dumps(a))
    c["procedure"][1]["operations"][4]["steps"][2]["high"] = "2.00"  # same number, different text
    assert recipe_hash(a) != recipe_hash(c)


def test_canonical_json_refuses_floats_and_foreign_values() -> None:
    assert canonical_json({"b": "é", "a": [1, True, None]}) == '{"a":[1,true,null],"b":"é"}'.encode()
    for bad in ({"x": 1.5}, {"x": D("1.5")}, {1: "x"}, {"x": 2**60}, {"x": (1, 2)}):
        with pytest.raises(TypeError):
            recipe_hash(bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- properties


def _quantities(control: ControlRecipe) -> dict[str, Decimal]:
    out = {f"bom:{b.item}": b.quantity for b in control.bill_of_materials}
    for ref in control.steps():
        if isinstance(ref.step, WeighStep):
            out[f"weigh:{ref.step.id}"] = ref.step.target  # type: ignore[assignment]
        if isinstance(ref.step, ProduceOutputStep):
            out[f"out:{ref.step.id}"] = ref.step.quantity
    return out


def _nominal(recipe: MasterRecipe) -> dict[str, Decimal]:
    out = {f"bom:{b.item}": b.quantity for b in recipe.bill_of_materials}
    for ref in recipe.steps():
        if isinstance(ref.step, WeighStep) and ref.step.target is not None:
            out[f"weigh:{ref.step.id}"] = ref.step.target
        if isinstance(ref.step, ProduceOutputStep):
            out[f"out:{ref.step.id}"] = ref.step.quantity
    return out


_settings = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(recipe_dicts())
def test_scaling_by_one_is_the_nominal_recipe(data: dict[str, Any]) -> None:
    recipe = from_dict(data)
    control = scale(recipe, recipe.batch_size.quantity, recipe.batch_size.unit)
    scaled = _quantities(control)
    for key, value in _nominal(recipe).items():
        assert to_text(scaled[key]) == to_text(value)  # to the last written decimal
    for ref in recipe.steps():
        if isinstance(ref.step, WeighStep):
            assert control.step(ref.step.id) == recipe.resolved_weigh(ref.step)
    assert recipe_hash(control.to_dict()) == recipe_hash(scale(recipe, recipe.batch_size.quantity, recipe.batch_size.unit).to_dict())


@_settings
@given(recipe_dicts(), st.integers(1, 20))
def test_scaling_is_linear_and_exact_for_whole_multiples(data: dict[str, Any], k: int) -> None:
    recipe = from_dict(data)
    control = scale(recipe, recipe.batch_size.quantity * k, recipe.batch_size.unit)
    scaled = _quantities(control)
    for key, value in _nominal(recipe).items():
        assert scaled[key] == value * k and decimal_places(scaled[key]) == decimal_places(value)


@_settings
@given(recipe_dicts(), st.fractions(min_value=Fraction(1, 10), max_value=Fraction(10), max_denominator=1000))
def test_scaling_rounds_the_exact_product_once(data: dict[str, Any], factor: Fraction) -> None:
    recipe = from_dict(data)
    nominal = recipe.batch_size
    places = decimal_places(nominal.quantity) + 4
    size = round_half_even(Fraction(nominal.quantity) * factor, places)
    if nominal.unit == "pcs":
        size = round_half_even(Fraction(nominal.quantity) * factor, 0)
    if size <= 0:
        return
    exact_factor = Fraction(size) / Fraction(nominal.quantity)
    control = scale(recipe, size, nominal.unit)
    scaled = _quantities(control)
    for key, value in _nominal(recipe).items():
        assert scaled[key] == round_half_even(Fraction(value) * exact_factor, decimal_places(value))
    # a weigh step without its own target gets the scaled BOM quantity, converted exactly
    for ref in recipe.steps():
        if isinstance(ref.step, WeighStep) and ref.step.target is None:
            line = next(b for b in control.bill_of_materials if b.item == ref.step.item)
            assert scaled[f"weigh:{ref.step.id}"] == convert(line.quantity, line.unit, control.step(ref.step.id).unit)  # type: ignore[attr-defined]
