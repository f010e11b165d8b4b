"""The published JSON Schema: current, valid, accepting the examples, and agreeing with
the loader's internal (faster) validation."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from hypothesis import HealthCheck, given, settings

from mes.recipes.loader import _Validator, schema_errors
from mes.recipes.model import MEANINGS, ROLES, STEP_KINDS
from mes.recipes.schema import SCHEMA, STEP_FIELDS, schema_json
from tests.recipes.helpers import EXAMPLES, RECIPES, REPO, minimal
from tests.recipes.test_loader import mutated_dicts, semantically_mutated_dicts

PUBLISHED = RECIPES / "master-recipe.schema.json"


def test_published_schema_is_current() -> None:
    assert PUBLISHED.read_text(encoding="utf-8") == schema_json(), (
        "regenerate: python -m mes.recipes.schema > recipes/master-recipe.schema.json")


def test_schema_is_valid_draft_2020_12() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(json.loads(PUBLISHED.read_text(encoding="utf-8")))


def test_examples_conform_with_a_stock_validator() -> None:
    published = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(published)
    for path in EXAMPLES:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert list(validator.iter_errors(data)) == [], path.name


def test_examples_point_editors_at_the_schema() -> None:
    for path in EXAMPLES:
        assert path.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema=master-recipe.schema.json\n")


def test_every_kind_has_its_fields() -> None:
    assert set(STEP_FIELDS) == set(STEP_KINDS)
    for kind, fields in STEP_FIELDS.items():
        assert fields[:4] == ("id", "kind", "title", "instruction")
        assert set(SCHEMA["$defs"][f"step_{kind}"]["properties"]) == set(fields)


def test_shared_vocabulary_matches_the_rest_of_the_mes() -> None:
    """Signature meanings and roles are those of mes.signatures / mes.users (read from the
    source, so this test imports nothing that touches the database)."""
    tree = ast.parse((REPO / "mes" / "signatures" / "operations.py").read_text(encoding="utf-8"))
    meanings = next(ast.literal_eval(node.value) for node in tree.body
                    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MEANINGS" for t in node.targets))
    assert tuple(meanings) == MEANINGS
    users = (REPO / "mes" / "users" / "models.py").read_text(encoding="utf-8")
    for role in ROLES:
        assert f'"{role}"' in users


_STOCK = _Validator(SCHEMA)  # the published schema as is, with ECMA-262 '$' semantics


def _agree(data: Any) -> None:
    stock_ok = _STOCK.is_valid(data)
    ours = schema_errors(data)
    assert stock_ok == (ours == []), ours


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_dicts())
def test_internal_validation_agrees_with_the_published_schema(data: dict[str, Any]) -> None:
    _agree(data)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(semantically_mutated_dicts())
def test_internal_validation_agrees_on_plausible_values(data: dict[str, Any]) -> None:
    _agree(data)


def test_agreement_on_known_cases() -> None:
    _agree(minimal())
    data = minimal()
    data["procedure"][0]["operations"][0]["steps"][0]["kind"] = "nope"
    _agree(data)
    data = minimal()
    data["procedure"][0]["operations"][0]["steps"][1]["colour"] = "red"
    _agree(data)
    data = minimal()
    data["bill_of_materials"][0]["quantity"] = "1.5\n"  # '$' is the end of the text, not of a line
    _agree(data)
    assert schema_errors(data) == ["bill_of_materials[0].quantity: '1.5\\n' is not a decimal quantity: write it as a "
                                   "quoted string of digits with an optional decimal point, e.g. \"12.500\""]


def test_schema_module_writes_the_published_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mes.recipes.schema"], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout == schema_json()
