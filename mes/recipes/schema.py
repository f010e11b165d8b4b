"""The JSON Schema (draft 2020-12) of the master recipe file format.

The schema is built here, in Python, from the same tables the loader uses, and published
beside the recipes as ``recipes/master-recipe.schema.json`` (a test keeps the two equal;
regenerate with ``python -m mes.recipes.schema > recipes/master-recipe.schema.json``).
Editors that understand JSON Schema (e.g. the YAML language server, via the
``# yaml-language-server: $schema=...`` line at the top of each recipe) validate recipes
as they are typed; ``errorMessage`` members give the same wording the loader reports.

The schema checks shape: required members, types, enumerations and the text form of
decimals, ids and durations. Everything that relates one part of a recipe to another
(references, ordering, limits, units, sums) is checked by :mod:`mes.recipes.checks`.

Each step kind gives the schema of its own parameters (:meth:`StepKind.properties
<mes.steps.base.StepKind.properties>`); :func:`build_schema` puts them together for the
registered kinds, and :func:`current` follows the registry when a plugin kind is added.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from mes.quantities import DECIMAL_PATTERN, DURATION_PATTERN, SIGNED_DECIMAL_PATTERN, UNITS
from mes.recipes.model import BOM_ROLES, FORMAT, RECIPE_LANGUAGES, SCALE_CLASSES
from mes.steps import registry
from mes.steps.base import StepKind

__all__ = ["SCHEMA", "SCHEMA_ID", "STEP_FIELDS", "STEP_REQUIRED", "RecipeSchema", "build_schema", "current", "schema_json"]

SCHEMA_ID: Final = "urn:open-mes:schema:master-recipe:v1"

ID_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
CODE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$"
VERSION_PATTERN: Final = r"^[0-9]{1,6}(\.[0-9]{1,6}){0,2}(-[0-9A-Za-z.]{1,32})?$"

DECIMAL_MESSAGE: Final = 'not a decimal quantity: write it as a quoted string of digits with an optional decimal point, e.g. "12.500"'
SIGNED_MESSAGE: Final = 'not a decimal number: write it as a quoted string such as "-5.0" or "12.50"'
ID_MESSAGE: Final = "not a valid id: start with a letter, then letters, digits or '_' (at most 64 characters)"
CODE_MESSAGE: Final = "not a valid item code: letters, digits and . _ / - (at most 64 characters)"
DURATION_MESSAGE: Final = "not an ISO 8601 duration such as \"PT30M\", \"PT1H30M\" or \"P3D\" (days, hours, minutes, whole seconds)"
VERSION_MESSAGE: Final = 'not a version: use a whole number (3) or a semver-like string ("1.2.0")'


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


DEFS: Final[dict[str, Any]] = {
    "id": {"type": "string", "pattern": ID_PATTERN, "errorMessage": ID_MESSAGE,
           "description": "A stable id, unique in the recipe; keep it across versions. Calculations refer to steps by id."},
    "code": {"type": "string", "pattern": CODE_PATTERN, "errorMessage": CODE_MESSAGE, "description": "An item or recipe code."},
    "title": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S", "description": "A short one-line title."},
    "text": {"type": "string", "minLength": 1, "maxLength": 4000, "pattern": r"\S", "description": "Text shown to people."},
    "translations": {
        "type": "object",
        "description": "The step's text in other languages, by language tag (English, the step's own text, is "
                       "required); the kiosk shows the one of the operator's badge and falls back to English.",
        "propertyNames": {"enum": list(RECIPE_LANGUAGES)},
        "additionalProperties": {
            "type": "object", "minProperties": 1, "additionalProperties": False,
            "properties": {"title": _ref("title"), "instruction": _ref("text"), "equipment_class": _ref("title")},
        },
    },
    "decimal": {"type": "string", "pattern": DECIMAL_PATTERN, "errorMessage": DECIMAL_MESSAGE,
                "description": "A non-negative decimal quantity as a quoted string; its decimals are its precision."},
    "signed_decimal": {"type": "string", "pattern": SIGNED_DECIMAL_PATTERN, "errorMessage": SIGNED_MESSAGE,
                       "description": "A decimal that may be negative, as a quoted string."},
    "unit": {"enum": list(UNITS), "description": "A unit of measure, spelled exactly."},
    "precision": {"type": "integer", "minimum": 0, "maximum": 6, "description": "Decimal places recorded."},
    "duration": {"type": "string", "pattern": DURATION_PATTERN, "errorMessage": DURATION_MESSAGE,
                 "description": "An ISO 8601 duration PnDTnHnMnS (whole numbers; a day is 24 h)."},
    "tolerance": {
        "type": "object",
        "description": "±percent of the target, or ±an absolute amount with its unit.",
        "properties": {"percent": _ref("decimal"), "absolute": _ref("decimal"), "unit": _ref("unit")},
        "additionalProperties": False,
        "oneOf": [{"required": ["percent"]}, {"required": ["absolute"]}],
        "dependentRequired": {"absolute": ["unit"]},
        "errorMessage": "a tolerance needs exactly one of 'percent' or 'absolute' (with 'unit')",
    },
    "scale": {
        "type": "object",
        "description": "The scale required: readability d (in unit) at most this, accuracy class at least this.",
        "required": ["readability", "unit"],
        "properties": {"readability": _ref("decimal"), "unit": _ref("unit"), "accuracy_class": {"enum": list(SCALE_CLASSES)}},
        "additionalProperties": False,
    },
}

STEP_COMMON: Final[dict[str, Any]] = {
    "id": _ref("id"),
    "kind": {"enum": []},  # the registered kinds, filled in by build_schema
    "title": _ref("title"),
    "instruction": _ref("text"),
    "translations": _ref("translations"),
}


def _structure(defs: dict[str, Any]) -> None:
    defs["operation"] = {
        "type": "object",
        "required": ["id", "title", "steps"],
        "properties": {
            "id": _ref("id"), "title": _ref("title"), "description": _ref("text"),
            "parallel_with": {"type": "array", "minItems": 1, "uniqueItems": True, "items": _ref("id"),
                              "description": "Earlier operations of the same unit procedure this one may run in parallel with."},
            "steps": {"type": "array", "minItems": 1, "maxItems": 500, "items": _ref("step")},
        },
        "additionalProperties": False,
    }
    defs["unit_procedure"] = {
        "type": "object",
        "required": ["id", "title", "operations"],
        "properties": {
            "id": _ref("id"), "title": _ref("title"), "unit_class": _ref("title"),
            "operations": {"type": "array", "minItems": 1, "maxItems": 200, "items": _ref("operation")},
        },
        "additionalProperties": False,
    }
    defs["bom_line"] = {
        "type": "object",
        "required": ["item", "name", "role", "quantity", "unit"],
        "properties": {
            "item": _ref("code"), "name": _ref("title"), "role": {"enum": list(BOM_ROLES)},
            "quantity": _ref("decimal"), "unit": _ref("unit"), "tolerance": _ref("tolerance"), "note": _ref("text"),
        },
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class RecipeSchema:
    """The schema for a set of step kinds, with each kind's members and required parameters."""

    schema: dict[str, Any]
    step_fields: dict[str, tuple[str, ...]]
    """Step kind -> every member a step of that kind may have."""
    step_required: dict[str, tuple[str, ...]]
    """Step kind -> its required parameters (beyond id, kind, title, instruction)."""


def build_schema(kinds: Iterable[StepKind]) -> RecipeSchema:
    """The master recipe schema for these step kinds (each gives its parameters' schema)."""
    kinds = list(kinds)
    names = [k.name for k in kinds]
    common = {**STEP_COMMON, "kind": {"enum": names}}
    defs: dict[str, Any] = dict(DEFS)
    fields: dict[str, tuple[str, ...]] = {}
    required: dict[str, tuple[str, ...]] = {}
    for kind in kinds:
        for name, fragment in kind.schema_defs().items():
            defs.setdefault(name, fragment)
        params = kind.properties()
        fields[kind.name] = tuple(common) + tuple(params)
        required[kind.name] = tuple(kind.required)
        step_def: dict[str, Any] = {"properties": {**common, **params}, "additionalProperties": False}
        if kind.required:
            step_def["required"] = list(kind.required)
        defs[f"step_{kind.name}"] = step_def
    defs["step"] = {
        "type": "object",
        "description": "A step; its kind decides which parameters it has (see recipes/README.md).",
        "required": ["id", "kind", "title", "instruction"],
        "properties": common,
        "allOf": [
            {"if": {"properties": {"kind": {"const": k}}, "required": ["kind"]}, "then": _ref(f"step_{k}")}
            for k in names
        ],
    }
    _structure(defs)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "open-mes master recipe",
        "description": "An ISA-88 master recipe for open-mes (format mes.master-recipe/v1). See recipes/README.md.",
        "type": "object",
        "required": ["format", "id", "version", "product", "batch_size", "bill_of_materials", "procedure"],
        "properties": {
            "format": {"const": FORMAT},
            "id": _ref("code"),
            "version": {"type": ["integer", "string"], "minimum": 1, "pattern": VERSION_PATTERN, "errorMessage": VERSION_MESSAGE},
            "product": {
                "type": "object", "required": ["code", "name"],
                "properties": {"code": _ref("code"), "name": _ref("title")}, "additionalProperties": False,
            },
            "description": _ref("text"),
            "batch_size": {
                "type": "object", "required": ["quantity", "unit"],
                "properties": {"quantity": _ref("decimal"), "unit": _ref("unit"), "minimum": _ref("decimal"),
                               "maximum": _ref("decimal")},
                "additionalProperties": False,
            },
            "bill_of_materials": {"type": "array", "minItems": 1, "maxItems": 500, "items": _ref("bom_line")},
            "procedure": {"type": "array", "minItems": 1, "maxItems": 100, "items": _ref("unit_procedure")},
        },
        "additionalProperties": False,
        "$defs": defs,
    }
    return RecipeSchema(schema, fields, required)


_CURRENT: list[tuple[int, RecipeSchema]] = []


def current() -> RecipeSchema:
    """The schema of the kinds registered now (rebuilt when a kind is registered)."""
    gen = registry.generation()
    cached = _CURRENT[0] if _CURRENT else None
    if cached is None or cached[0] != gen:
        cached = (gen, build_schema(registry.kinds()))
        _CURRENT[:] = [cached]
    return cached[1]


_AT_IMPORT = current()
SCHEMA: Final[dict[str, Any]] = _AT_IMPORT.schema
"""The master recipe JSON Schema (draft 2020-12) of the kinds registered at import (the
built-ins and installed plugins): what is published."""

STEP_FIELDS: Final[dict[str, tuple[str, ...]]] = _AT_IMPORT.step_fields
"""Step kind -> every member a step of that kind may have (kinds registered at import)."""

STEP_REQUIRED: Final[dict[str, tuple[str, ...]]] = _AT_IMPORT.step_required
"""Step kind -> its required parameters (beyond id, kind, title, instruction)."""


def schema_json() -> str:
    """The schema as published in ``recipes/master-recipe.schema.json`` (2-space indent, UTF-8)."""
    return json.dumps(SCHEMA, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # python -m mes.recipes.schema > recipes/master-recipe.schema.json
    sys.stdout.write(schema_json())
