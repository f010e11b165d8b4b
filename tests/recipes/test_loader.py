"""Loading recipes: the examples, line-numbered problems, YAML strictness, dict input, and
property tests (generated recipes load and round-trip; garbage only ever raises RecipeError)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mes.recipes.errors import RecipeError
from mes.recipes.loader import MAX_BYTES, from_dict, load_recipe, parse_yaml, validate_file
from mes.recipes.model import MasterRecipe, WeighStep
from tests.recipes.helpers import CREAM, EXAMPLES, PARACETAMOL, dump, minimal, recipe_dicts

TEXT = PARACETAMOL.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- examples


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load_and_validate(path: Path) -> None:
    assert validate_file(path) == []
    recipe = load_recipe(path)
    assert isinstance(recipe, MasterRecipe)
    assert from_dict(recipe.to_dict()) == recipe
    assert load_recipe(dump(recipe.to_dict())) == recipe


def test_paracetamol_content() -> None:
    r = load_recipe(PARACETAMOL)
    assert r.product.name == "Paracetamol 500 mg tablets"
    assert r.batch_size.quantity == Decimal("200000") and r.batch_size.unit == "pcs"
    total = sum((line.quantity for line in r.bill_of_materials if line.role != "processing_aid"), Decimal(0))
    assert total == Decimal("115.000")  # 575.0 mg x 200 000 tablets
    mgst = r.bom_line("RM-2030")
    assert mgst is not None and mgst.quantity / total * 100 < 1  # lubricant well below 1 %
    kinds = {ref.step.kind for ref in r.steps()}
    assert kinds == {"instruction", "numeric", "weigh", "identify", "equipment_check", "timer", "calculation",
                     "sample_check", "signature", "produce_output"}
    w_mgst = r.step("w_mgst")
    assert isinstance(w_mgst, WeighStep) and r.resolved_weigh(w_mgst).target == Decimal("600")
    assert r.precedes("w_pcm", "charge_pcm")
    assert not r.precedes("charge_pvp", "charge_pcm") and not r.precedes("charge_pcm", "charge_pvp")  # parallel


def test_cream_content() -> None:
    r = load_recipe(CREAM)
    assert sum((b.quantity for b in r.bill_of_materials if b.unit == "kg"), Decimal(0)) == Decimal("200.000")
    ph = r.step("ph")
    assert (ph.low, ph.high) == (Decimal("5.0"), Decimal("6.0"))  # type: ignore[attr-defined]
    assert r.procedure[1].stages()[1] == ("water_phase", "oil_phase")
    assert r.precedes("temp_before_c", "charge_preservative")


def test_text_and_path_inputs() -> None:
    assert load_recipe(str(PARACETAMOL)) == load_recipe(PARACETAMOL) == load_recipe(TEXT)
    with pytest.raises(RecipeError) as info:
        load_recipe("no/such/recipe.yaml")
    assert "cannot read the file" in str(info.value)
    with pytest.raises(RecipeError):
        load_recipe(42)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- line numbers


def mutate(old: str, new: str, marker: str | None = None) -> tuple[str, int, int]:
    """TEXT with the first ``old`` replaced by ``new``, and the 1-based line and column of
    ``marker`` (default: ``new``) in the result."""
    assert old in TEXT, old
    start = TEXT.index(old)
    text = TEXT[:start] + new + TEXT[start + len(old):]
    pos = text.index(marker if marker is not None else new, start)
    return text, text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    return validate_file(path)


CASES = {
    "bad quantity": ('target: "1.400"', 'target: "12.5kg"', '"12.5kg"',
                     "procedure[0].operations[2].steps[5].target: '12.5kg' is not a decimal quantity"),
    "unquoted float quantity": ('quantity: "6.000"', "quantity: 6.000", "6.000",
                                'bill_of_materials[1].quantity: 6.000 is an unquoted YAML number; quantities must be quoted strings'),
    "unquoted integer quantity": ('quantity: "3.000"', "quantity: 3", "3\n",
                                  'bill_of_materials[2].quantity: 3 is an unquoted YAML number'),
    "unknown step kind": ("kind: timer\n            title: Dry-mix", "kind: timr\n            title: Dry-mix", "timr",
                          "procedure[1].operations[2].steps[3].kind: 'timr' is not a step kind (did you mean 'timer'?)"),
    "dangling BOM reference": ("item: RM-2030\n            unit: g", "item: RM-9999\n            unit: g", "RM-9999",
                               "procedure[0].operations[2].steps[10].item: no bill-of-materials line for item 'RM-9999'"),
    "calculation uses a later step": ("formula: granule_weight / (", "formula: blend_weight / (", "blend_weight",
                                      "procedure[1].operations[5].steps[3].formula: step 'blend_weight' comes later"),
    "duplicate step id": ("id: w_mgst", "id: w_pvp", "w_pvp\n",
                          "procedure[0].operations[2].steps[10].id: duplicate id 'w_pvp': "
                          "already used at procedure[0].operations[2].steps[3]"),
    "unknown unit": ("unit: mm", "unit: MM", "MM", "'MM' is not a known unit (did you mean 'mm'?)"),
    "unknown field": ("            max_containers: 6\n", "            max_container: 6\n", "max_container",
                      "unknown field 'max_container' in a weigh step (did you mean 'max_containers'?)"),
    "not a boolean": ("second_person: true", "second_person: yes", "yes", "'yes' is not a boolean"),
    "duplicate key": ('            precision: 2\n            high: "2.0"',
                      '            precision: 2\n            high: "2.0"\n            high: "2.5"',
                      'high: "2.5"', "duplicate key 'high'"),
    "too many decimals": ('high: "2.0"', 'high: "2.005"', '"2.005"', "2.005 has 3 decimals but the step records 2"),
    "function call in formula": ("formula: granule_weight / (", "formula: abs(granule_weight) / (", "abs(",
                                 "function calls are not allowed"),
    "limits out of order": ('low: "55"', 'low: "66"', '"60"', "target 60 is below low 66"),
    "bad duration": ("maximum: PT20M", "maximum: 20 min", "20 min", "is not an ISO 8601 duration"),
    "calculation uses an unknown step": ("formula: granule_weight / (", "formula: dummy / (", "dummy",
                                         "step 'dummy' does not exist in this recipe"),
    "YAML syntax error": ("  - id: blending\n", "  - id: blending\n   bad: [\n", "bad", "YAML syntax error"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_broken_variants_report_the_right_line(tmp_path: Path, case: str) -> None:
    old, new, marker, expected = CASES[case]
    text, line, column = mutate(old, new, marker)
    messages = problems_of(tmp_path, text)
    where = f"{tmp_path / 'broken.yaml'}:{line}:"
    hits = [m for m in messages if expected in m]
    assert hits, messages
    assert any(m.startswith(where) for m in hits), (where, messages)
    if case != "YAML syntax error":
        assert any(m.startswith(f"{where}{column}:") for m in hits), (column, messages)


def test_missing_required_field_points_at_the_step(tmp_path: Path) -> None:
    old = "          - id: ipc_balance_check\n            kind: equipment_check\n"
    start = TEXT.index(old)
    text = TEXT.replace("            equipment_class: Analytical balance, class I\n", "")
    messages = problems_of(tmp_path, text)
    step_line = TEXT.count("\n", 0, start) + 1
    assert any(f":{step_line}:13: procedure[3].operations[0].steps[2]: missing required field 'equipment_class'" in m
               for m in messages), messages


def test_calculation_referencing_a_parallel_operation(tmp_path: Path) -> None:
    # charge_pvp is in binder_prep, which runs in parallel with dry_mix
    text, line, _ = mutate("            minimum: PT3M\n            maximum: PT5M\n",
                           "            minimum: PT3M\n            maximum: PT5M\n"
                           "          - id: bad_calc\n            kind: calculation\n            title: T\n"
                           "            instruction: I\n            formula: binder_stir_value * 2\n"
                           "            unit: kg\n            precision: 1\n", "binder_stir_value")
    text = text.replace("formula: binder_stir_value * 2", "formula: w_pvp + charge_pvp * 2")
    messages = problems_of(tmp_path, text)
    assert any(f":{line}:" in m and "'charge_pvp' is in operation 'binder_prep', which runs in parallel with 'dry_mix'" in m
               for m in messages), messages


def test_all_problems_are_reported_in_source_order(tmp_path: Path) -> None:
    text = TEXT.replace('quantity: "6.000"', "quantity: 6.000").replace("unit: mm", "unit: MM")
    messages = problems_of(tmp_path, text)
    assert len(messages) == 2
    lines = [int(m.split(":")[1]) for m in messages]
    assert lines == sorted(lines)


# ----------------------------------------------------------------------------- YAML strictness


def load_text(text: str) -> MasterRecipe:
    return load_recipe(text, name="t.yaml")


def messages_of(text: str) -> str:
    with pytest.raises(RecipeError) as info:
        load_text(text)
    return str(info.value)


def test_aliases_are_refused() -> None:
    text = dump(minimal()).replace("product:\n", "product: &p\n", 1) + "description: *p\n"
    assert "aliases" in messages_of(text)


def test_billion_laughs_is_refused_quickly() -> None:
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(20))
    assert "aliases" in messages_of(text)


def test_recursive_alias_is_refused() -> None:
    assert "aliases" in messages_of("a: &a [*a]\n")


def test_python_tags_are_refused() -> None:
    assert "unsupported YAML tag" in messages_of("format: !!python/object:os.system 'ls'\n")
    assert "unsupported YAML tag" in messages_of("format: !custom x\n")


def test_yaml_11_surprises() -> None:
    text = dump(minimal()).replace("item: RM-1\n", "item: NO\n")  # Norway: stays the text NO
    assert text.count("item: NO\n") == 3
    assert load_text(text).bom_line("NO") is not None
    assert "ambiguous unquoted number '012'" in messages_of("version: 012\n")
    assert "ambiguous unquoted number '1_000'" in messages_of("version: 1_000\n")
    assert "ambiguous unquoted number '1:30'" in messages_of("version: 1:30\n")
    assert "is not a decimal number" in messages_of("version: .inf\n")


def test_floats_become_exact_decimals_only_to_be_refused() -> None:
    data, _ = parse_yaml("a: 0.1\nb: 1.10\n")
    assert data == {"a": Decimal("0.1"), "b": Decimal("1.10")} and str(data["b"]) == "1.10"


def test_version_float_is_refused() -> None:
    text = dump(minimal()).replace("version: 1", "version: 1.2")
    assert "version: 1.2 is a number, expected text" in messages_of(text)
    assert load_text(dump(minimal()).replace("version: 1", "version: 1.2.0")).version == "1.2.0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the document is empty"),
        ("# only a comment\n", "the document is empty"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
        ("[1, 2]", "expected a mapping"),
        ("just text", "expected a mapping"),
        ("a: [\n", "YAML syntax error"),
        ("a:\n\tb: 1\n", "YAML syntax error"),
        ("[" * 5000, "nested"),
        ("? [a, b]\n: c\n", "mapping keys must be plain names"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("a: \x00\n", "YAML error"),
        ("a: \ud800\n", "not valid Unicode"),
    ],
)
def test_malformed_documents(text: str, message: str) -> None:
    assert message in messages_of(text)


def test_deep_nesting_in_flow_style() -> None:
    assert "nested" in messages_of("a: " + "[" * 60 + "]" * 60 + "\n")


def test_non_utf8_and_huge_files(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: Crème\n".encode("latin-1"))
    assert "not UTF-8" in validate_file(bad)[0]
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (MAX_BYTES + 1))
    assert "larger than" in validate_file(huge)[0]
    assert "larger than" in messages_of("#" * (MAX_BYTES + 1) + "\n")


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + dump(minimal()).encode())
    assert validate_file(path) == []


# ----------------------------------------------------------------------------- dict input


def test_from_dict_refuses_floats_and_foreign_types() -> None:
    data = minimal()
    data["bill_of_materials"][0]["quantity"] = 10.0
    with pytest.raises(RecipeError, match=r"bill_of_materials\[0\]\.quantity: 10\.0 is a float"):
        from_dict(data)
    data = minimal()
    data["bill_of_materials"][0]["quantity"] = Decimal("10.000")
    with pytest.raises(RecipeError, match="unquoted YAML number; quantities must be quoted strings"):
        from_dict(data)
    data = minimal()
    data["product"][1] = "x"  # type: ignore[index]
    with pytest.raises(RecipeError, match="keys must be text"):
        from_dict(data)
    data = minimal()
    data["description"] = object()
    with pytest.raises(RecipeError, match="unsupported value of type object"):
        from_dict(data)


def test_from_dict_accepts_tuples_and_reports_paths_without_lines() -> None:
    data = minimal()
    data["procedure"] = tuple(data["procedure"])
    assert from_dict(data).id == "MR-TEST"
    data["id"] = "bad id"
    with pytest.raises(RecipeError) as info:
        from_dict(data, source="db:recipe/7")
    assert info.value.messages() == [
        "db:recipe/7: id: 'bad id' is not a valid item code: letters, digits and . _ / - (at most 64 characters)"]


# ----------------------------------------------------------------------------- properties

_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(recipe_dicts())
def test_generated_recipes_load_and_round_trip(data: dict[str, Any]) -> None:
    recipe = load_recipe(dump(data))
    again = recipe.to_dict()
    assert load_recipe(dump(again)) == recipe
    assert from_dict(again) == recipe
    assert again == from_dict(data).to_dict()
    assert from_dict(data).to_dict() == load_recipe(dump(again)).to_dict()  # decimals kept to the digit


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=12)
    | st.sampled_from(["", "12.5", "PT5M", "weigh", "kg", "RM-0", "w_0", "procedure", "-1"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def _slots(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) in a nested dict/list."""
    if isinstance(node, dict):
        for key in list(node):
            yield node, key
            yield from _slots(node[key])
    elif isinstance(node, list):
        for i in range(len(node)):
            yield node, i
            yield from _slots(node[i])


@st.composite
def mutated_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid recipe dict with 1-3 random edits (replace, delete, rename, duplicate)."""
    data = copy.deepcopy(draw(recipe_dicts()))
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(data))
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "delete", "rename", "duplicate"]))
        if action == "replace":
            container[key] = draw(json_values)
        elif action == "delete":
            del container[key]
        elif action == "rename" and isinstance(container, dict):
            container[draw(st.text(max_size=10))] = container.pop(key)
        elif action == "duplicate" and isinstance(container, list):
            container.insert(key, copy.deepcopy(container[key]))
    return data


@_settings
@given(mutated_dicts())
def test_mutated_recipes_raise_only_recipe_error(data: dict[str, Any]) -> None:
    for attempt in (lambda: load_recipe(dump(data)), lambda: from_dict(data)):
        try:
            attempt()
        except RecipeError as exc:
            assert exc.problems and all(str(p) for p in exc.problems)


@_settings
@given(st.data())
def test_mutated_yaml_text_raises_only_recipe_error(data: st.DataObject) -> None:
    text = dump(data.draw(recipe_dicts()))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 40)))
        text = text[:i] + data.draw(st.sampled_from(["", "-", ":", " ", "\n", "'", "\"", "[", "{", "&a ", "*a", "!", "#",
                                                     "1.5", "\t", "? ", "- x\n", "kind: weigh\n"]) | st.text(max_size=5)) + text[j:]
    try:
        load_recipe(text, name="fuzz.yaml")
    except RecipeError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=200))
def test_garbage_text_raises_only_recipe_error(text: str) -> None:
    with pytest.raises(RecipeError):
        load_recipe(text + "\n")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_files_raise_only_recipe_error(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("garbage") / "g.yaml"
    path.write_bytes(raw)
    assert validate_file(path)


def test_yaml_dump_of_real_floats_is_refused() -> None:
    data = minimal()
    text = yaml.safe_dump(data).replace("'10.000'", "10.000")
    assert "unquoted YAML number" in messages_of(text)


def test_unhashable_kind_is_a_problem_not_a_crash() -> None:
    data = minimal()
    out = data["procedure"][0]["operations"][1]["steps"][3]
    out["kind"] = []
    del out["title"]
    with pytest.raises(RecipeError) as info:
        from_dict(data)
    assert any("missing required field 'title'" in m for m in info.value.messages())


plausible_values = st.sampled_from(
    ["kg", "g", "mg", "L", "mL", "pcs", "%", "min", "s", "h", "°C", "pH", "mPa·s", "N", "mm", "rpm",
     "0", "0.0", "1", "0.5", "10", "12.500", "100.000", "-5.0", "PT0S", "PT5M", "P1D", "start", "calc", "out", "w_0",
     "num", "RM-0", "RM-1", "BLK-1", "verified", "performed", "released", "qa", "lot", "dispensed", "preset", "none"]
) | st.integers(0, 7) | st.booleans() | st.lists(st.sampled_from(["qa", "clean", "start", "calc", "w_0", "op0"]), max_size=3)


@st.composite
def semantically_mutated_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid recipe dict with 1-4 leaves replaced by values of plausible types, so that the
    rules beyond the schema (units, references, ordering, limits) get exercised."""
    data = copy.deepcopy(draw(recipe_dicts()))
    for _ in range(draw(st.integers(1, 4))):
        leaves = [(c, k) for c, k in _slots(data) if not isinstance(c[k], (dict, list)) or (isinstance(c[k], list) and k != "steps")]
        container, key = draw(st.sampled_from(leaves))
        container[key] = draw(plausible_values)
    return data


@_settings
@given(semantically_mutated_dicts())
def test_semantic_mutations_raise_only_recipe_error(data: dict[str, Any]) -> None:
    try:
        recipe = from_dict(data)
    except RecipeError as exc:
        assert exc.problems
    else:
        assert from_dict(recipe.to_dict()) == recipe


def test_readme_example_is_valid() -> None:
    readme = (PARACETAMOL.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## A short example", 1)[1]
    text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    recipe = load_recipe(text, name="README.md")
    assert recipe.id == "MR-EXAMPLE" and recipe.produce_output().id == "out"


def test_an_example_recipe_records_a_pressure_in_bar() -> None:
    """Units come from the plant's units file (pint): a unit outside the first eighteen, here
    bar, is a recipe unit like any other, with exact limits."""
    step = load_recipe(CREAM).step("emulsion_vacuum")
    assert step.unit == "bar"  # type: ignore[attr-defined]
    assert (step.low, step.target, step.high) == (Decimal("0.20"), Decimal("0.30"), Decimal("0.40"))  # type: ignore[attr-defined]
