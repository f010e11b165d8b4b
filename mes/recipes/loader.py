"""Load master recipes from YAML (or plain dicts) into :class:`~mes.recipes.model.MasterRecipe`.

Four passes, each reporting every problem it finds with the path in the recipe and, for
YAML, the line and column in the source; a pass runs only if the one before found none:

1. YAML is parsed into events (never constructed by PyYAML; no recursion; nesting cut
   off at 40 levels) and turned into plain data here, strictly: aliases, custom tags,
   complex keys, duplicate keys and multiple documents are refused; only
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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path as FsPath
from typing import Any, Final

import jsonschema
import yaml

from mes.quantities import UNITS, suggest_unit
from mes.recipes import checks, schema
from mes.recipes.errors import Path, Problem, RecipeError, format_path
from mes.recipes.model import (
    BatchSize,
    BomLine,
    MasterRecipe,
    Operation,
    Product,
    Step,
    Tolerance,
    UnitProcedure,
)
from mes.recipes.schema import SCHEMA
from mes.steps import registry

__all__ = ["MAX_BYTES", "SourceMap", "from_dict", "load_recipe", "parse_yaml", "schema_errors", "validate_data", "validate_file"]

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


_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser when available (fast); PyYAML's pure-Python one otherwise."""

_RESOLVER: Final = yaml.resolver.Resolver()


class _Frame:
    """An open mapping or sequence while events stream in."""

    __slots__ = ("value", "path", "key", "skip")

    def __init__(self, value: Any, path: Path, skip: bool = False) -> None:
        self.value = value
        self.path = path
        self.key: str | None = None  # mapping: the key waiting for its value
        self.skip = skip  # a complex mapping key being skipped


class _Builder:
    """YAML events -> plain data (dict/list/str/int/bool/None/Decimal) with positions.

    Works on the event stream, not on composed nodes, so nesting costs no recursion and
    is cut off at :data:`MAX_DEPTH` before the parser has read further (YAML scanners are
    quadratic in flow nesting depth, so a deeply nested document must be stopped early).
    """

    def __init__(self, smap: SourceMap) -> None:
        self.smap = smap
        self.problems: list[Problem] = []
        self.stack: list[_Frame] = []
        self.root: Any = None
        self.documents = 0

    def fail(self, mark: Any, path: Path, message: str) -> None:
        self.problems.append(Problem(message, format_path(path), mark.line + 1, mark.column + 1, self.smap.source))

    def run(self, events: Iterable[yaml.Event]) -> Any:
        for event in events:
            if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
                continue
            if isinstance(event, yaml.DocumentStartEvent):
                self.documents += 1
                if self.documents > 1:
                    self.fail(event.start_mark, (), "expected a single document, found another (---)")
                    break
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                self.stack.pop()
                continue
            if self.stack and self.stack[-1].skip:
                if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                    self.stack.append(_Frame(None, self.stack[-1].path, skip=True))
                continue
            if not self.node(event):
                break
        return self.root

    def slot(self, event: yaml.Event) -> tuple[Path, Any] | None:
        """Where the value of ``event`` goes: (path, container or None for the root); None
        if the event is a mapping key (handled here)."""
        if not self.stack:
            return (), None
        frame = self.stack[-1]
        if isinstance(frame.value, list):
            return frame.path + (len(frame.value),), frame
        if frame.key is not None:
            return frame.path + (frame.key,), frame
        # a mapping key
        if not isinstance(event, yaml.ScalarEvent) or (event.tag not in (None, "!") and event.tag not in _KEY_TAGS):
            self.fail(event.start_mark, frame.path, "mapping keys must be plain names")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                self.stack.append(_Frame(None, frame.path, skip=True))
            frame.key = "\0invalid"
            return None
        key = event.value
        if key in frame.value:
            first = self.smap.keys.get(frame.path + (key,))
            self.fail(event.start_mark, frame.path + (key,),
                      f"duplicate key {key!r}" + (f" (first at line {first[0]})" if first else ""))
            frame.key = "\0duplicate"
            return None
        self.smap.keys[frame.path + (key,)] = (event.start_mark.line + 1, event.start_mark.column + 1)
        frame.key = key
        return None

    def node(self, event: yaml.Event) -> bool:
        """Handle a node event; False to stop reading."""
        if isinstance(event, yaml.AliasEvent):
            where = self.stack[-1].path if self.stack else ()
            self.fail(event.start_mark, where, "YAML aliases (*name) are not allowed in recipes; write the value out")
            return False
        target = self.slot(event)
        if target is None:
            return True
        path, frame = target
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            expected = _TAG + ("map" if isinstance(event, yaml.MappingStartEvent) else "seq")
            if event.tag not in (None, "!", expected):
                self.fail(event.start_mark, path, f"unsupported YAML tag {event.tag!r}")
                return False
            if len(self.stack) >= MAX_DEPTH:
                self.fail(event.start_mark, path, f"nested more than {MAX_DEPTH} levels deep")
                return False
            value: Any = {} if isinstance(event, yaml.MappingStartEvent) else []
            self.store(frame, path, value, event)
            self.stack.append(_Frame(value, path))
            return True
        assert isinstance(event, yaml.ScalarEvent)
        self.store(frame, path, self.scalar(event, path), event)
        return True

    def store(self, frame: _Frame | None, path: Path, value: Any, event: yaml.Event) -> None:
        self.smap.values[path] = (event.start_mark.line + 1, event.start_mark.column + 1)
        if frame is None:
            self.root = value
        elif isinstance(frame.value, list):
            frame.value.append(value)
        else:
            if frame.key is not None and not frame.key.startswith("\0"):
                frame.value[frame.key] = value
            frame.key = None

    def scalar(self, event: yaml.ScalarEvent, path: Path) -> Any:
        tag, text = event.tag, event.value
        if tag is None or tag == "!":
            tag = _RESOLVER.resolve(yaml.ScalarNode, text, event.implicit)
        if tag in (_TAG + "str", _TAG + "timestamp"):
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
            if _PLAIN_INT.fullmatch(text) and len(text) <= 40:
                return int(text)
            self.fail(event.start_mark, path, f"ambiguous unquoted number {text!r} (YAML 1.1 reads it in another base); "
                                              "quote it, or write a plain whole number")
            return None
        if tag == _TAG + "float":
            if _PLAIN_FLOAT.fullmatch(text) and len(text) <= 40:
                return Decimal(text)  # exact; the schema turns it away from quantity fields
            self.fail(event.start_mark, path, f"unquoted {text!r} is not a decimal number; quantities are quoted strings like \"12.500\"")
            return None
        self.fail(event.start_mark, path, f"unsupported YAML tag {tag!r}")
        return None


_KEY_TAGS: Final = frozenset(_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp"))


def _too_deep_flow(text: str) -> tuple[int, int] | None:
    """(line, column) where flow collections (``[`` / ``{``) outside quotes and comments
    first nest deeper than :data:`MAX_DEPTH`, or None.

    PyYAML's scanner has a depth limit of its own that can stop it before our event-level
    check sees the document; when parsing fails, this tells which limit it was.
    """
    depth, line, col, quote, comment, prev = 0, 1, 0, "", False, " "
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, comment, prev = line + 1, 0, False, " "
            continue
        if comment:
            continue
        if quote:
            if ch == quote and not (quote == '"' and prev == "\\"):
                quote = ""
            prev = ch
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "#" and prev in " \t":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line, col
        elif ch in "]}":
            depth = max(0, depth - 1)
        prev = ch
    return None


def parse_yaml(text: str, source: str | None = None) -> tuple[Any, SourceMap]:
    """Strictly turn YAML text into plain data and a :class:`SourceMap`; RecipeError if it
    is not well-formed YAML or uses what recipes refuse (see the module docstring)."""
    smap = SourceMap(source)
    if len(text) > MAX_BYTES:
        raise RecipeError([Problem(f"the recipe is larger than {MAX_BYTES} characters", source=source)])
    builder = _Builder(smap)
    try:
        data = builder.run(yaml.parse(text, Loader=_LOADER))
    except yaml.MarkedYAMLError as exc:
        deep = _too_deep_flow(text)
        if deep is not None:  # the parser's own depth limit stopped it: say it as we do
            builder.problems.append(Problem(f"nested more than {MAX_DEPTH} levels deep", "", deep[0], deep[1], source))
            raise RecipeError(builder.problems) from None
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        builder.problems.append(Problem(f"YAML syntax error: {what}", "", mark.line + 1 if mark else None,
                                        mark.column + 1 if mark else None, source))
    except yaml.YAMLError as exc:
        builder.problems.append(Problem(" ".join(f"YAML error: {exc}".split()), "", None, None, source))
    except UnicodeError:
        builder.problems.append(Problem("the text is not valid Unicode (it contains lone surrogates)", "", None, None, source))
    if builder.problems:
        raise RecipeError(builder.problems)
    if builder.documents == 0:
        raise RecipeError([Problem("the document is empty", "", 1, 1, source)])
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


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/x"}`` replaced by (inlined) ``defs[x]``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inline(defs[ref[len("#/$defs/"):]], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


# The published schema dispatches on a step's kind with one if/then branch per kind, which
# jsonschema evaluates for every step. Internally the same rules are applied in two
# cheaper parts: the recipe with steps checked only for being mappings, then each step
# against the common step members and the definition of its own kind (same errors,
# several times faster). test_schema checks both agree. The validators follow the step
# kind registry: they are rebuilt when a kind is registered.


@dataclass(frozen=True)
class _Validators:
    main: Any
    step: Any
    kinds: dict[str, Any]
    step_fields: dict[str, tuple[str, ...]]


_VALIDATORS: list[tuple[int, _Validators]] = []


def _validators() -> _Validators:
    current = schema.current()
    gen = registry.generation()
    if _VALIDATORS and _VALIDATORS[0][0] == gen:
        return _VALIDATORS[0][1]
    full = current.schema
    defs = {**full["$defs"], "step": {"type": "object"}}
    made = _Validators(
        main=_Validator(_inline({k: v for k, v in full.items() if k != "$defs"}, defs)),
        step=_Validator(_inline({k: v for k, v in full["$defs"]["step"].items() if k != "allOf"}, defs)),
        kinds={kind: _Validator(_inline(full["$defs"][f"step_{kind}"], defs)) for kind in current.step_fields},
        step_fields=current.step_fields,
    )
    _VALIDATORS[:] = [(gen, made)]
    return made


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


def _describe(error: jsonschema.ValidationError, smap: SourceMap, prefix: Path = ()) -> list[Problem]:
    path: Path = prefix + tuple(error.absolute_path)
    v, value, schema = error.validator, error.instance, error.schema
    where = path[-1] if path else None
    if v == "required":
        if not isinstance(value, dict):
            return []
        missing = [name for name in error.validator_value if name not in value]
        kind = value.get("kind")
        known = isinstance(kind, str) and kind in _validators().step_fields and isinstance(value.get("id"), str)
        suffix = f" (needed by step {value['id']!r} of kind {kind!r})" if known else ""
        return [smap.problem(path, f"missing required field {name!r}{suffix}") for name in missing]
    if v == "additionalProperties" and isinstance(value, dict):
        allowed = list(schema.get("properties", {}))
        kind = value.get("kind")
        fields = _validators().step_fields
        what = f"a {kind} step" if isinstance(kind, str) and tuple(allowed) == fields.get(kind) else (format_path(path) or "the recipe")
        return _unknown_fields(value, allowed, what, path, smap)
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


def _step_dicts(data: Any) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path, step) for every step mapping in the places the format puts steps."""
    procedure = data.get("procedure") if isinstance(data, dict) else None
    for ui, up in enumerate(procedure if isinstance(procedure, list) else ()):
        operations = up.get("operations") if isinstance(up, dict) else None
        for oi, op in enumerate(operations if isinstance(operations, list) else ()):
            steps = op.get("steps") if isinstance(op, dict) else None
            for si, step in enumerate(steps if isinstance(steps, list) else ()):
                if isinstance(step, dict):
                    yield ("procedure", ui, "operations", oi, "steps", si), step


def _schema_problems(data: Any, smap: SourceMap) -> list[Problem]:
    """Every schema violation, as problems with source positions."""
    problems: list[Problem] = []
    validators = _validators()
    for error in validators.main.iter_errors(data):
        problems.extend(_describe(error, smap))
    for path, step in _step_dicts(data):
        for error in validators.step.iter_errors(step):
            problems.extend(_describe(error, smap, path))
        kind = step.get("kind")
        if isinstance(kind, str) and kind in validators.kinds:
            for error in validators.kinds[kind].iter_errors(step):
                problems.extend(_describe(error, smap, path))
    return problems


def schema_errors(data: Any) -> list[str]:
    """The schema problems of plain data, without positions (empty if it conforms)."""
    return [f"{p.path or '(root)'}: {p.message}" for p in _schema_problems(data, SourceMap())]


# --------------------------------------------------------------------------- building


def _dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _tolerance(data: Mapping[str, Any] | None) -> Tolerance | None:
    return None if data is None else Tolerance.from_file(data)


def _step(data: Mapping[str, Any]) -> Step:
    """The step's dataclass, built by its kind."""
    return registry.get(data["kind"]).build(data)


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
