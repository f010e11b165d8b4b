"""The dataclasses: file form, immutability, and the pure per-step rules the engine uses."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from mes.quantities import Duration
from mes.recipes.loader import from_dict, load_recipe
from mes.recipes.model import (
    FORMAT,
    STEP_CLASSES,
    STEP_KINDS,
    VALUE_KINDS,
    CalculationStep,
    NumericStep,
    ProduceOutputStep,
    SampleCheckStep,
    ScaleRequirement,
    TimerStep,
    Tolerance,
    WeighStep,
    in_limits,
)
from tests.recipes.helpers import PARACETAMOL, minimal

D = Decimal


def test_step_kinds() -> None:
    assert STEP_KINDS == ("instruction", "numeric", "weigh", "identify", "equipment_check", "timer", "calculation",
                          "sample_check", "signature", "produce_output", "meter")
    assert VALUE_KINDS == ("numeric", "weigh", "calculation", "sample_check", "produce_output")
    assert all(STEP_CLASSES[k].kind == k for k in STEP_KINDS)


def test_to_dict_is_the_file_form() -> None:
    data = minimal()
    recipe = from_dict(data)
    out = recipe.to_dict()
    assert out["format"] == FORMAT
    assert out["bill_of_materials"][0] == {"item": "RM-1", "name": "Active", "role": "api", "quantity": "10.000",
                                           "unit": "kg", "tolerance": {"percent": "1.0"}}
    weigh = out["procedure"][0]["operations"][0]["steps"][1]
    assert weigh == {"id": "w1", "kind": "weigh", "title": "Title of w1", "instruction": "Do w1.", "item": "RM-1",
                     "scale": {"readability": "0.01", "unit": "kg"}, "stable_reading": True, "tare": "each_container",
                     "multiple_containers": False}
    timer = out["procedure"][0]["operations"][1]["steps"][0]
    assert timer["minimum"] == "PT10M" and timer["maximum"] == "PT15M"
    sig = out["procedure"][0]["operations"][0]["steps"][4]
    assert "covers" not in sig and sig["roles"] == ["supervisor"]


def test_objects_are_frozen() -> None:
    recipe = load_recipe(PARACETAMOL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.id = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.procedure[0].operations[0].steps[0].title = "x"  # type: ignore[misc]
    assert isinstance(recipe.procedure, tuple) and isinstance(recipe.bill_of_materials, tuple)
    hash(recipe.product)


def test_no_floats_anywhere() -> None:
    recipe = load_recipe(PARACETAMOL)

    def walk(value: object) -> None:
        assert not isinstance(value, float)
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(recipe.to_dict())
    for ref in recipe.steps():
        for f in dataclasses.fields(ref.step):
            assert not isinstance(getattr(ref.step, f.name), float)


def test_tolerance_windows_are_exact() -> None:
    pct = Tolerance(kind="percent", value=D("0.25"))
    assert pct.window(D("8.600"), "kg") == (D("8.5785"), D("8.6215"))
    assert pct.window(D("100.000"), "kg") == (D("99.750"), D("100.250"))
    assert str(pct) == "±0.25 %"
    absolute = Tolerance(kind="absolute", value=D("50"), unit="g")
    assert absolute.window(D("10.000"), "kg") == (D("9.950"), D("10.050"))
    assert absolute.amount(D("10.000"), "kg") == D("0.050")
    assert str(absolute) == "±50 g"


def test_scale_requirement() -> None:
    req = ScaleRequirement(readability=D("0.1"), unit="g", accuracy_class="II")
    assert req.accepts(D("0.01"), "g", "I")
    assert req.accepts(D("0.0001"), "kg", "II")
    assert not req.accepts(D("1"), "g", "II")  # too coarse
    assert not req.accepts(D("0.01"), "g", "III")  # class too low
    assert not req.accepts(D("0.01"), "g", None)
    assert ScaleRequirement(readability=D("0.01"), unit="kg").accepts(D("0.005"), "kg", None)
    assert str(req) == "class II, d ≤ 0.1 g"


def test_in_limits_is_inclusive() -> None:
    assert in_limits(D("2.0"), None, D("2.0")) and not in_limits(D("2.01"), None, D("2.0"))
    assert in_limits(D("5.0"), D("5.0"), D("6.0")) and not in_limits(D("4.99"), D("5.0"), D("6.0"))
    assert in_limits(D("-100"), None, None)


def test_numeric_and_timer_rules() -> None:
    lod = NumericStep(id="lod", title="LOD", instruction="i", unit="%", precision=2, high=D("2.0"))
    assert lod.in_limits(D("1.99")) and lod.in_limits(D("2.00")) and not lod.in_limits(D("2.01"))
    blend = TimerStep(id="b", title="Blend", instruction="i", minimum=Duration.parse("PT15M"), maximum=Duration.parse("PT20M"))
    assert blend.in_limits(Duration(900)) and blend.in_limits(Duration(1200))
    assert not blend.in_limits(Duration(899)) and not blend.in_limits(Duration(1201))


def test_sample_check_evaluation() -> None:
    step = SampleCheckStep(id="tw", title="Tablet weight", instruction="i", samples=3, unit="mg", precision=1,
                           target=D("575.0"), low=D("546.3"), high=D("603.7"), mean_low=D("557.75"), mean_high=D("592.25"))
    ok = step.evaluate([D("570.1"), D("580.2"), D("575.0")])
    assert ok.ok and ok.mean == D("575.10") and ok.out_of_limits == ()
    bad = step.evaluate([D("546.2"), D("603.7"), D("600.0")])
    assert not bad.individual_ok and bad.out_of_limits == (0,) and bad.mean == D("583.30") and bad.mean_ok
    low_mean = step.evaluate([D("550.0"), D("550.0"), D("560.0")])
    assert low_mean.individual_ok and not low_mean.mean_ok and not low_mean.ok
    with pytest.raises(ValueError, match="needs 3 results"):
        step.evaluate([D("575.0")])


def test_calculation_compute() -> None:
    calc = CalculationStep(id="y", title="Yield", instruction="i", formula="out / theo * 100", unit="%", precision=1,
                           low=D("95.0"), high=D("102.0"))
    assert calc.references == ("out", "theo")
    value = calc.compute({"out": D("112.85"), "theo": D("115.000")})
    assert value == D("98.1") and calc.in_limits(value)


def test_yield_percent() -> None:
    out = ProduceOutputStep(id="o", title="Out", instruction="i", item="BLK", quantity=D("115.000"), unit="kg",
                            yield_low=D("95.0"), yield_high=D("102.0"))
    assert out.yield_places == 1
    assert out.yield_percent(D("112.850"), D("115.000")) == D("98.1")
    assert out.yield_percent(D("109.25"), D("115.000")) == D("95.0")  # exactly 95.0 %
    assert out.yield_in_limits(D("95.0")) and not out.yield_in_limits(D("94.9"))
    with pytest.raises(ValueError):
        out.yield_percent(D("1"), D("0"))


def test_resolved_weigh_and_window() -> None:
    recipe = load_recipe(PARACETAMOL)
    w = recipe.step("w_mgst")
    assert isinstance(w, WeighStep) and w.target is None and w.unit == "g"
    resolved = recipe.resolved_weigh(w)
    assert (resolved.target, resolved.unit, str(resolved.tolerance)) == (D("600"), "g", "±1.0 %")
    assert resolved.window() == (D("594"), D("606"))
    with pytest.raises(ValueError, match="not resolved"):
        w.window()


def test_navigation() -> None:
    recipe = load_recipe(PARACETAMOL)
    ref = recipe.locate("lod")
    assert ref.path == ("procedure", 1, "operations", 4, "steps", 2)
    assert (ref.unit_procedure.id, ref.operation.id) == ("granulation", "drying")
    assert recipe.produce_output().id == "tablets_out"
    assert [w.id for w in recipe.weigh_steps("RM-2020")] == ["w_ccs_intra", "w_ccs_extra"]
    assert recipe.bom_line("RM-404") is None
    with pytest.raises(KeyError):
        recipe.step("nope")
    ids = [r.step.id for r in recipe.steps()]
    assert len(ids) == len(set(ids)) and ids[0] == "disp_line_clearance"
    assert recipe.precedes("disp_line_clearance", "compression_reviewed")
    assert not recipe.precedes("compression_reviewed", "disp_line_clearance")
    assert not recipe.precedes("lod", "lod")
