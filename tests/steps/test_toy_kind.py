"""A step kind added from this test module alone, touching no existing file: it registers,
a recipe using it loads and is checked, a batch runs through it via the engine and the API,
and the kiosk renders its partial and posts its payload (docs/step-kinds.md, worked example)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mes.execution import operations as ex
from mes.execution import recipes_store as store
from mes.quantities import to_text
from mes.recipes.errors import RecipeError
from mes.recipes.loader import load_recipe
from mes.recipes.model import MasterRecipe, Step, StepRef, in_limits
from mes.steps import registry
from mes.steps.base import KioskPage, Report, StepKind, decimal_or_none, ref
from mes.steps.context import StepContext
from tests import execution_helpers as eh
from tests.helpers import logged_in
from tests.test_kiosk import Kiosk, message, screen

# --------------------------------------------------------------------------- the kind


@dataclass(frozen=True, kw_only=True)
class PhReadingStep(Step):
    """Read the pH of the batch; ``low``/``high`` inclusive, ``precision`` decimals."""

    kind: ClassVar[str] = "ph_reading"
    produces_value: ClassVar[bool] = True
    low: Decimal
    high: Decimal
    precision: int = 2

    @property
    def value_unit(self) -> str:
        return "pH"


class PhReading(StepKind):
    """A pH reading: recorded as a value; outside the range it is flagged and a major deviation is raised."""

    name = "ph_reading"
    step_class = PhReadingStep
    required = ("low", "high")
    converters = {"low": decimal_or_none, "high": decimal_or_none}

    def properties(self) -> dict[str, Any]:
        return {"low": ref("decimal"), "high": ref("decimal"), "precision": ref("precision")}

    def check(self, recipe: MasterRecipe, sref: StepRef, report: Report, unique_ids: bool) -> None:
        step: PhReadingStep = sref.step  # type: ignore[assignment]
        if not Decimal(0) <= step.low <= step.high <= Decimal(14):
            report(sref.path + ("high",), "a pH range is 0 <= low <= high <= 14")

    def complete(self, ctx: StepContext) -> None:
        spec: PhReadingStep = ctx.spec  # type: ignore[assignment]
        value = ctx.decimal(ctx.payload.get("ph"), "ph")
        ok = in_limits(value, spec.low, spec.high)
        ctx.record("value", {"low": to_text(spec.low), "high": to_text(spec.high)}, value, "pH",
                   [] if ok else ["out_of_limits"])
        ctx.result = {"ph": to_text(value), "in_limits": ok}
        if not ok:
            ctx.deviate("limits_missed", f"{spec.title}: pH {to_text(value)} is outside {spec.low} to {spec.high}",
                        {"step": spec.id, "value": to_text(value)})

    def kiosk_context(self, spec: Step, page: KioskPage) -> dict[str, Any]:
        assert isinstance(spec, PhReadingStep)
        return {"ph_range": f"{page.dec(spec.low)} – {page.dec(spec.high)}"}

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        return {"ph": form.get("ph", "").strip()}

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        assert isinstance(spec, PhReadingStep)
        mid = (spec.low + spec.high) / 2
        return {"ph": to_text(mid)}, sim.operator, f"pH {mid}"


PARTIAL = """\
{% macro label() %}pH reading{% endmacro %}
{% macro facts() %}<p class="facts" data-field="ph-range">Range: {{ ph_range }}</p>{% endmacro %}
{% macro form() %}<input type="text" name="ph" data-label="pH">
  <button type="submit" class="primary" data-commit>Record</button>{% endmacro %}
{% macro notice(result) %}pH {{ result.ph }} recorded.{% endmacro %}
"""

RECIPE = """\
format: mes.master-recipe/v1
id: TOY-BUFFER
version: 1
product: {code: FG-BUFFER, name: Buffer solution}
batch_size: {quantity: "10.000", unit: kg}
bill_of_materials:
  - {item: BLK-BUFFER, name: Buffer bulk, role: intermediate, quantity: "10.000", unit: kg}
procedure:
  - id: up
    title: Buffer
    operations:
      - id: op
        title: Adjust and fill
        steps:
          - {id: scan_bulk, kind: identify, title: Scan the bulk, instruction: Scan the bulk container., item: BLK-BUFFER}
          - {id: ph, kind: ph_reading, title: Read the pH, instruction: Read the pH of the bulk., low: "6.80", high: "7.20"}
          - id: filled
            kind: produce_output
            title: Fill
            instruction: Weigh the filled buffer.
            item: FG-BUFFER
            quantity: "10.000"
            unit: kg
            yield_low: "95.0"
            yield_high: "101.0"
"""


@pytest.fixture
def ph_kind(tmp_path: Path) -> Iterator[StepKind]:
    """The toy kind registered (its partial in a directory of its own), removed afterwards."""
    (tmp_path / "kiosk" / "steps").mkdir(parents=True)
    (tmp_path / "kiosk" / "steps" / "ph_reading.html").write_text(PARTIAL, encoding="utf-8")
    PhReading.template_dir = tmp_path
    kind = registry.register(PhReading)
    yield kind
    registry.unregister("ph_reading")
    PhReading.template_dir = None


# --------------------------------------------------------------------------- tests


def test_the_kind_registers_and_is_found_by_name(ph_kind: StepKind) -> None:
    assert registry.get("ph_reading") is ph_kind and "ph_reading" in registry.names()
    assert registry.kind_of(PhReadingStep(id="x", title="t", instruction="i", low=Decimal(1), high=Decimal(2))) is ph_kind
    with pytest.raises(ValueError, match="already registered"):
        registry.register(type("Other", (PhReading,), {}))


def test_a_recipe_using_the_kind_loads_and_its_checks_apply(ph_kind: StepKind) -> None:
    recipe = load_recipe(RECIPE)
    step = recipe.step("ph")
    assert isinstance(step, PhReadingStep) and step.low == Decimal("6.80") and step.to_dict()["kind"] == "ph_reading"
    with pytest.raises(RecipeError) as bad:  # the kind's own check, with the line of the step
        load_recipe(RECIPE.replace('high: "7.20"', 'high: "15"'))
    assert "<string>:16:118: procedure[0].operations[0].steps[1].high: a pH range is 0 <= low <= high <= 14" in str(bad.value)
    with pytest.raises(RecipeError, match="missing required field 'low'"):  # its schema fragment
        load_recipe(RECIPE.replace('low: "6.80", ', ""))
    with pytest.raises(RecipeError, match="unknown field 'colour' in a ph_reading step"):
        load_recipe(RECIPE.replace('low: "6.80"', 'low: "6.80", colour: red'))


def test_without_the_kind_the_recipe_is_refused_with_the_kinds_named() -> None:
    with pytest.raises(RecipeError, match="'ph_reading' is not a step kind"):
        load_recipe(RECIPE)
    with pytest.raises(LookupError, match="unknown step kind 'ph_reading'; registered kinds: instruction, numeric"):
        registry.get("ph_reading")


def _batch(world: eh.World) -> str:
    rv = eh.effective_recipe(world, RECIPE, "toy.yaml")
    eh.stock(world, store.master_of(store.get_version(rv)))
    batch_id = eh.start(world, rv, "10.000", "kg")
    op = world.actor("operator")
    ex.complete_step(op, batch_id, "scan_bulk", {"lot_id": world.lots["BLK-BUFFER"][0]}, world.key(),
                     ex.get_step(batch_id, "scan_bulk").version)
    return batch_id


def test_a_batch_runs_through_the_kind_via_the_engine(app: Flask, ph_kind: StepKind, monkeypatch: pytest.MonkeyPatch) -> None:
    world = eh.make_world(monkeypatch)
    batch_id = _batch(world)
    op = world.actor("operator")
    out = ex.complete_step(op, batch_id, "ph", {"ph": "7.31"}, world.key(), ex.get_step(batch_id, "ph").version)
    assert out["state"] == "completed" and out["in_limits"] is False and len(out["deviations"]) == 1
    rec = next(r for r in ex.records_of(batch_id) if r.batch_step_id.endswith(":ph"))
    assert (rec.kind, to_text(rec.value), rec.unit, rec.flags) == ("value", "7.31", "pH", ["out_of_limits"])
    assert ex.deviations_of(batch_id)[0].category == "limits_missed"
    # the batch record hook's default: one row per record
    rows = ph_kind.ebr_rows(ex.control_recipe(ex.get_batch(batch_id)).step("ph"), [ex._record_json(rec)])
    assert rows[0]["value"] == "7.31 pH" and rows[0]["flags"] == ["out_of_limits"] and rows[0]["kind"] == "ph_reading"


def test_a_batch_runs_through_the_kind_via_the_api(app: Flask, client: FlaskClient, ph_kind: StepKind,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    world = eh.make_world(monkeypatch)
    batch_id = _batch(world)
    api = logged_in(client, world.seeded, "operator")
    step = next(s for s in api.get(f"/api/v1/batches/{batch_id}").get_json()["steps"] if s["id"] == "ph")
    assert step["kind"] == "ph_reading" and step["state"] == "ready"
    url = f"/api/v1/batches/{batch_id}/steps/ph/complete"
    r = api.post(url, {"expected_version": step["version"], "payload": {"ph": "seven"}}, headers={"Idempotency-Key": "ph-0"})
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    r = api.post(url, {"expected_version": step["version"], "payload": {"ph": "7.02"}}, headers={"Idempotency-Key": "ph-1"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["ph"] == "7.02" and r.get_json()["in_limits"] is True and "deviations" not in r.get_json()
    assert ex.get_step(batch_id, "ph").state == "completed"


def test_the_kiosk_renders_the_kinds_partial_and_posts_its_payload(app: Flask, ph_kind: StepKind,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    world = eh.make_world(monkeypatch)
    batch_id = _batch(world)
    k = Kiosk(app.test_client(), world.seeded.kiosk)
    k.login("B-operator", "2468")
    url = f"/kiosk/batches/{batch_id}/steps/ph"
    k.get(url)
    assert screen(k.page) == "step" and 'class="step-layout kind-ph_reading"' in k.page
    assert '<p class="kind">pH reading</p>' in k.page and 'data-field="ph-range">Range: 6.80 – 7.20<' in k.page
    assert re.search(r'<input type="text" name="ph"', k.page)
    r = k.post(url, {**k.form(), "confirmed": "1", "ph": "6.95"})
    assert r.status_code == 200, message(k.page)
    assert "pH 6.95 recorded." in k.page
    rec = next(r for r in ex.records_of(batch_id) if r.batch_step_id.endswith(":ph"))
    assert to_text(rec.value) == "6.95" and rec.recorded_by == world.seeded.users["operator"]
