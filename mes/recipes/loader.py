"""Load master recipes from YAML (or plain dicts) into :class:`~mes.recipes.model.MasterRecipe`.

Four passes, each reporting every problem it finds with the path in the recipe and, for
YAML, the line and column in the source; a pass runs only if the one before found none:

1. YAML is composed into nodes (never constructed by PyYAML) and turned into plain data
   here, strictly: anchors/aliases, custom tags and duplicate keys are refused; only
   ``true``/``false`` are booleans (``yes``/``no``/``on``/``off`` stay text); only plain
   whole numbers are integers; an unquoted decimal number becomes a Decimal from its exact
   text (never a float) so that the schema can reject it in a quantity field with a
   helpful message; YAML 1.1 oddities (octal ``012``, ``1_000``, ``1:30``, ``.inf``)
   are errors. Every node's start mark is remembered by path.
2. The data is validated against :data:`mes.recipes.schema.SCHEMA`; each error's JSON path
   is mapped back to the source line.
3. The model is built (cannot fail after 2).
4. :func:`mes.recipes.checks.check` applies the rules beyond the schema.

Only :class:`~mes.recipes.errors.RecipeError` escapes for a bad recipe, whatever the input.
"""

from __future__ import annotations

import difflib
import os
import re
from decimal import Decimal
from pathlib import Path as FsPath
from typing import Any, Final, Iterable, Mapping

import jsonschema
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mes.recipes import checks
from mes.recipes.errors import Path, Problem, RecipeError, format_path
from mes.recipes.model import (
    STEP_CLASSES,
    BatchSize,
    BomLine,
    MasterRecipe,
    Operation,
    Product,
    ScaleRequirement,
    Step,
    Tolerance,
    UnitProcedure,
)
from mes.recipes.schema import SCHEMA, STEP_FIELDS
from mes.recipes.units import UNITS, Duration, suggest_unit

__all__ = ["MAX_BYTES", "SourceMap", "from_dict", "load_recipe", "parse_yaml", "validate_data", "validate_file"]

MAX_BYTES: Final = 2_000_000
"""Largest recipe source accepted."""

MAX_DEPTH: Final = 40
"""Deepest nesting accepted in a recipe document (the format needs 8)."""

_TAG = "tag:yaml.org,2002:"
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_PLAIN_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?")


# --------------------------------------------------------------------------- YAML


class SourceMap:
    """Source positions (1-based line, column) by recipe path, for values and for keys."""

    def __init__(self, source: str | None = None) -> None:
        self.source = source
        self.values: dict[Path, tuple[int, int]] = {}
        self.keys: dict[Path, tuple[int, int]] = {}

    def locate(self, path: Path, *, key: bool = False) -> tuple[int, int] | None:
        """The position of ``path`` (its key if ``key``), else of its nearest ancestor."""
        if key and path in self.keys:
            return self.keys[path]
        probe = tuple(path)
        while True:
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return None
            probe = probe[:-1]

    def problem(self, path: Path, message: str, *, key: bool = False) -> Problem:
        """A Problem at ``path`` with its source position."""
        pos = self.locate(path, key=key)
        return Problem(message, format_path(path), pos[0] if pos else None, pos[1] if pos else None, self.source)


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Converter:
    """Nodes -> plain data (dict/list/str/int/bool/None/Decimal), recording positions."""

    def __init__(self, smap: SourceMap) -> None:
        self.smap = smap
        self.problems: list[Problem] = []
        self.seen: set[int] = set()

    def fail(self, node: Node, path: Path, message: str) -> None:
        line, col = _mark(node)
        self.problems.append(Problem(message, format_path(path), line, col, self.smap.source))

    def convert(self, node: Node, path: Path, depth: int = 0) -> Any:
        if id(node) in self.seen:
            self.fail(node, path, "YAML aliases (*name) are not allowed in recipes; write the value out")
            return None
        self.seen.add(id(node))
        self.smap.values[path] = _mark(node)
        if depth > MAX_DEPTH:
            self.fail(node, path, f"nested more than {MAX_DEPTH} levels deep")
            return None
        if isinstance(node, MappingNode):
            if node.tag != _TAG + "map":
                self.fail(node, path, f"unsupported YAML tag {node.tag!r}")
                return None
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag not in _KEY_TAGS or id(key_node) in self.seen:
                    self.fail(key_node, path, "mapping keys must be plain names")
                    continue
                self.seen.add(id(key_node))
                key = key_node.value
                if key in out:
                    self.fail(key_node, path + (key,), f"duplicate key {key!r} (first at line {self.smap.keys[path + (key,)][0]})")
                    continue
                self.smap.keys[path + (key,)] = _mark(key_node)
                out[key] = self.convert(value_node, path + (key,), depth + 1)
            return out
        if isinstance(node, SequenceNode):
            if node.tag != _TAG + "seq":
                self.fail(node, path, f"unsupported YAML tag {node.tag!r}")
                return None
            return [self.convert(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        return self.scalar(node, path)

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        tag, text = node.tag, node.value
        if tag == _TAG + "str" or tag == _TAG + "timestamp":
            return text
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            if text in ("true", "True", "TRUE"):
                return True
            if text in ("false", "False", "FALSE"):
                return False
            return text  # yes/no/on/off: text, so that an item code NO stays "NO"
        if tag == _TAG + "int":
            if _PLAIN_INT.fullmatch(text):
                return int(text)
            self.fail(node, path, f"ambiguous unquoted number {text!r} (YAML 1.1 reads it in another base); "
                                  f"quote it, or write a plain whole number")
            return None
        if tag == _TAG + "float":
            if _PLAIN_FLOAT.fullmatch(text) and len(text) <= 40:
                return Decimal(text)  # exact; the schema turns it away from quantity fields
            self.fail(node, path, f"unquoted {text!r} is not a decimal number; quantities are quoted strings like \"12.500\"")
            return None
        self.fail(node, path, f"unsupported YAML tag {tag!r}")
        return None


_KEY_TAGS: Final = frozenset(_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp"))


def parse_yaml(text: str, source: str | None = None) -> tuple[Any, SourceMap]:
    """Strictly turn YAML text into plain data and a :class:`SourceMap`; RecipeError if it
    is not well-formed YAML or uses what recipes refuse (see the module docstring)."""
    smap = SourceMap(source)
    if len(text) > MAX_BYTES:
        raise RecipeError([Problem(f"the recipe is larger than {MAX_BYTES} characters", source=source)])
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise RecipeError([Problem(f"YAML syntax error: {what}", "", mark.line + 1 if mark else None,
                                   mark.column + 1 if mark else None, source)]) from None
    except yaml.YAMLError as exc:
        raise RecipeError([Problem(" ".join(f"YAML error: {exc}".split()), "", None, None, source)]) from None
    except RecursionError:
        raise RecipeError([Problem("YAML is nested too deeply", source=source)]) from None
    if node is None:
        raise RecipeError([Problem("the document is empty", "", 1, 1, source)])
    converter = _Converter(smap)
    data = converter.convert(node, ())
    if converter.problems:
        raise RecipeError(converter.problems)
    return data, smap


# --------------------------------------------------------------------------- schema


def _is_def(schema: Any, name: str) -> bool:
    return isinstance(schema, dict) and schema.get("errorMessage") == SCHEMA["$defs"][name].get("errorMessage")


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterable[jsonschema.ValidationError]:
    """``pattern`` with ECMA-262 semantics for ``$`` (end of input, not before a final newline)."""
    if not validator.is_type(instance, "string"):
        return
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        py = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
        compiled = _PATTERNS[pattern] = re.compile(py)
    if not compiled.search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_PATTERNS: dict[str, re.Pattern[str]] = {}
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})
_VALIDATOR = _Validator(SCHEMA)


def _show(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null (empty)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "...'"


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    return "a list"


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_fields(instance: Mapping[str, Any], allowed: Iterable[str], what: str, path: Path, smap: SourceMap) -> list[Problem]:
    allowed = list(allowed)
    return [
        smap.problem(path + (key,), f"unknown field {key!r} in {what}{_suggest(key, allowed)}; allowed: {', '.join(allowed)}", key=True)
        for key in instance if key not in allowed
    ]


def _describe(error: jsonschema.ValidationError, smap: SourceMap) -> list[Problem]:
    path: Path = tuple(error.absolute_path)
    v, value, schema = error.validator, error.instance, error.schema
    where = path[-1] if path else None
    if v == "required":
        if not isinstance(value, dict):
            return []
        missing = [name for name in error.validator_value if name not in value]
        what = f"step {value.get('id')!r}" if "kind" in value and isinstance(value.get("id"), str) else None
        suffix = f" (needed by {what} of kind {value['kind']!r})" if what and value.get("kind") in STEP_FIELDS else ""
        return [smap.problem(path, f"missing required field {name!r}{suffix}") for name in missing]
    if v == "additionalProperties" and isinstance(value, dict):
        allowed = list(schema.get("properties", {}))
        return _unknown_fields(value, allowed, f"{format_path(path) or 'the recipe'}", path, smap)
    if v == "unevaluatedProperties" and isinstance(value, dict):
        kind = value.get("kind")
        if kind not in STEP_FIELDS:
            return []  # the unknown kind is reported on its own
        return _unknown_fields(value, STEP_FIELDS[kind], f"a {kind} step", path, smap)
    if v == "type":
        expected = error.validator_value
        expected = expected if isinstance(expected, list) else [expected]
        if "string" in expected and isinstance(value, (int, Decimal)) and not isinstance(value, bool):
            if _is_def(schema, "decimal") or _is_def(schema, "signed_decimal"):
                message = (f"{value} is an unquoted YAML number; quantities must be quoted strings so that every "
                           f"digit is kept exactly: write \"{value}\"")
            else:
                message = f"{value} is a number, expected text: write \"{value}\""
            return [smap.problem(path, message)]
        if expected == ["integer"]:
            return [smap.problem(path, f"{_show(value)} is {_type_name(value)}, expected a whole number (unquoted, e.g. 2)")]
        if expected == ["boolean"]:
            return [smap.problem(path, f"{_show(value)} is not a boolean: write true or false")]
        if expected == ["object"]:
            return [smap.problem(path, f"expected a mapping (name: value lines), found {_type_name(value)}")]
        if expected == ["array"]:
            return [smap.problem(path, f"expected a list (lines starting with '- '), found {_type_name(value)}")]
        return [smap.problem(path, f"{_show(value)} is {_type_name(value)}, expected {' or '.join(expected)}")]
    if v == "enum":
        options = [str(o) for o in error.validator_value]
        if where == "unit" or options == list(UNITS):
            hint = suggest_unit(value) if isinstance(value, str) else None
            did = f" (did you mean {hint!r}?)" if hint else ""
            return [smap.problem(path, f"{_show(value)} is not a known unit{did}; known units: {', '.join(UNITS)}")]
        if where == "kind":
            did = _suggest(value, options) if isinstance(value, str) else ""
            return [smap.problem(path, f"{_show(value)} is not a step kind{did}; kinds: {', '.join(options)}")]
        did = _suggest(value, options) if isinstance(value, str) else ""
        return [smap.problem(path, f"{_show(value)} is not one of: {', '.join(options)}{did}")]
    if v == "const":
        return [smap.problem(path, f"{_show(value)} must be {error.validator_value!r}")]
    if v in ("pattern", "oneOf") and schema.get("errorMessage"):
        if v == "oneOf":
            return [smap.problem(path, str(schema["errorMessage"]))]
        return [smap.problem(path, f"{_show(value)} is {schema['errorMessage']}")]
    if v == "pattern":
        return [smap.problem(path, "must not be blank")]
    if v == "minLength":
        return [smap.problem(path, "must not be empty")]
    if v == "maxLength":
        return [smap.problem(path, f"is too long (at most {error.validator_value} characters)")]
    if v == "minItems":
        n = error.validator_value
        return [smap.problem(path, f"needs at least {n} entr{'y' if n == 1 else 'ies'}")]
    if v == "maxItems":
        return [smap.problem(path, f"has more than {error.validator_value} entries")]
    if v == "uniqueItems":
        return [smap.problem(path, "lists the same value more than once")]
    if v == "minimum":
        return [smap.problem(path, f"{_show(value)} is below the minimum {error.validator_value}")]
    if v == "maximum":
        return [smap.problem(path, f"{_show(value)} is above the maximum {error.validator_value}")]
    if v == "dependentRequired":
        pairs = [f"{k!r} needs {', '.join(map(repr, need))}" for k, need in error.validator_value.items()
                 if isinstance(value, dict) and k in value and any(n not in value for n in need)]
        return [smap.problem(path, "; ".join(pairs) or error.message)]
    return [smap.problem(path, error.message)]


def _schema_problems(data: Any, smap: SourceMap) -> list[Problem]:
    problems: list[Problem] = []
    for error in _VALIDATOR.iter_errors(data):
        problems.extend(_describe(error, smap))
    return problems


# --------------------------------------------------------------------------- building


def _dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _tolerance(data: Mapping[str, Any] | None) -> Tolerance | None:
    if data is None:
        return None
    if "percent" in data:
        return Tolerance(kind="percent", value=Decimal(data["percent"]), unit=data.get("unit"))
    return Tolerance(kind="absolute", value=Decimal(data["absolute"]), unit=data["unit"])


_DECIMAL_PARAMS: Final = frozenset({"target", "low", "high", "mean_low", "mean_high", "quantity",
                                    "expected_yield", "yield_low", "yield_high"})
_DURATION_PARAMS: Final = frozenset({"minimum", "maximum", "max_since_cleaning"})
_TUPLE_PARAMS: Final = frozenset({"required_states", "roles", "covers"})


def _step(data: Mapping[str, Any]) -> Step:
    cls = STEP_CLASSES[data["kind"]]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name == "kind":
            continue
        if name in _DECIMAL_PARAMS:
            value = Decimal(value)
        elif name in _DURATION_PARAMS:
            value = Duration.parse(value)
        elif name in _TUPLE_PARAMS:
            value = tuple(value)
        elif name == "tolerance":
            value = _tolerance(value)
        elif name == "scale":
            value = ScaleRequirement(readability=Decimal(value["readability"]), unit=value["unit"],
                                     accuracy_class=value.get("accuracy_class"))
        kwargs[name] = value
    return cls(**kwargs)


def _build(data: Mapping[str, Any]) -> MasterRecipe:
    """The model from schema-valid data."""
    bs = data["batch_size"]
    return MasterRecipe(
        id=data["id"],
        version=data["version"],
        product=Product(data["product"]["code"], data["product"]["name"]),
        description=data.get("description"),
        batch_size=BatchSize(quantity=Decimal(bs["quantity"]), unit=bs["unit"],
                             minimum=_dec(bs.get("minimum")), maximum=_dec(bs.get("maximum"))),
        bill_of_materials=tuple(
            BomLine(item=b["item"], name=b["name"], role=b["role"], quantity=Decimal(b["quantity"]), unit=b["unit"],
                    tolerance=_tolerance(b.get("tolerance")), note=b.get("note"))
            for b in data["bill_of_materials"]
        ),
        procedure=tuple(
            UnitProcedure(
                id=u["id"], title=u["title"], unit_class=u.get("unit_class"),
                operations=tuple(
                    Operation(id=o["id"], title=o["title"], description=o.get("description"),
                              parallel_with=tuple(o.get("parallel_with", ())), steps=tuple(_step(s) for s in o["steps"]))
                    for o in u["operations"]
                ),
            )
            for u in data["procedure"]
        ),
    )


# --------------------------------------------------------------------------- entry points


def validate_data(data: Any, smap: SourceMap) -> MasterRecipe:
    """Schema, build and semantic checks on plain data; RecipeError with every problem."""
    problems = _schema_problems(data, smap)
    if problems:
        raise RecipeError(problems)
    recipe = _build(data)
    problems = [smap.problem(path, message, key=key) for path, message, key in checks.check(recipe)]
    if problems:
        raise RecipeError(problems)
    return recipe


def _read(source: str | os.PathLike[str]) -> tuple[str, str]:
    """(text, name) of a path; RecipeError if it cannot be read as UTF-8."""
    name = os.fspath(source)
    try:
        raw = FsPath(name).read_bytes()
    except OSError as exc:
        raise RecipeError([Problem(f"cannot read the file: {exc.strerror or exc}", source=name)]) from None
    if len(raw) > MAX_BYTES:
        raise RecipeError([Problem(f"the file is larger than {MAX_BYTES} bytes", source=name)])
    try:
        return raw.decode("utf-8-sig"), name
    except UnicodeDecodeError as exc:
        raise RecipeError([Problem(f"the file is not UTF-8 (byte {exc.start})", source=name)]) from None


def _is_path(source: str | os.PathLike[str]) -> bool:
    if isinstance(source, os.PathLike):
        return True
    return "\n" not in source and source.strip().endswith((".yaml", ".yml"))


def load_recipe(source: str | os.PathLike[str], *, name: str | None = None) -> MasterRecipe:
    """Load and fully validate a master recipe from a path or from YAML text.

    A :class:`os.PathLike`, or a one-line string ending in ``.yaml``/``.yml``, is read as a
    file (UTF-8); any other string is the YAML text itself (``name`` labels it in messages,
    default ``<string>``). Raises RecipeError listing every problem with line and column.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise RecipeError([Problem(f"expected a path or YAML text, got {type(source).__name__}")])
    if _is_path(source):
        text, label = _read(source)
    else:
        text, label = str(source), name or "<string>"
    data, smap = parse_yaml(text, label)
    return validate_data(data, smap)


def from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> MasterRecipe:
    """Validate a recipe given as plain data (e.g. ``to_dict()`` output or JSON from the
    database). Floats are refused: quantities are decimal strings. RecipeError if invalid."""
    smap = SourceMap(source)
    problems: list[Problem] = []
    clean = _plain(data, (), problems, smap, 0)
    if problems:
        raise RecipeError(problems)
    return validate_data(clean, smap)


def _plain(value: Any, path: Path, problems: list[Problem], smap: SourceMap, depth: int) -> Any:
    """A copy of ``value`` with only JSON types (tuples become lists); floats and other
    types are problems."""
    if depth > MAX_DEPTH:
        problems.append(smap.problem(path, f"nested more than {MAX_DEPTH} levels deep"))
        return None
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(smap.problem(path, f"mapping keys must be text, got {key!r}"))
                continue
            out[key] = _plain(item, path + (key,), problems, smap, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, path + (i,), problems, smap, depth + 1) for i, item in enumerate(value)]
    if isinstance(value, float):
        problems.append(smap.problem(path, f"{value!r} is a float; recipes hold decimals as strings, e.g. \"12.500\""))
        return None
    if value is None or isinstance(value, (str, bool, int, Decimal)):
        return value
    problems.append(smap.problem(path, f"unsupported value of type {type(value).__name__}"))
    return None


def validate_file(path: str | os.PathLike[str]) -> list[str]:
    """Line-numbered problems of a recipe file (``file:line:col: path: message``); empty
    if the recipe is valid. For ``mes recipes validate FILE``."""
    try:
        load_recipe(FsPath(path))
    except RecipeError as exc:
        return exc.messages()
    return []
