"""The OpenAPI description states the query parameters each API view reads (issue 18: "the
OpenAPI description states every rule the server enforces ... required query parameters").

What a view reads is found in its source: ``request.args.get("x")``, and calls with a string
first argument to a helper that reads ``request.args.get(<its first parameter>)``
(``query_int``, ``_required``, ``_enum_arg``...), followed into the module's own helpers
(``_range`` reads ``from`` and ``to``). A helper that refuses a missing value (raises when it
is empty, like ``oee._required``) makes the parameter required."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

from flask import Flask

from mes.system.blueprint import API_PREFIXES


def _reader_kind(fn: Any) -> str | None:
    """'required' / 'optional' if ``fn`` reads the query parameter named by its first argument."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError):
        return None
    fdef = tree.body[0]
    if not isinstance(fdef, ast.FunctionDef) or not fdef.args.args:
        return None
    first = fdef.args.args[0].arg
    reads = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
                and ast.unparse(n.func.value) == "request.args" and n.args and isinstance(n.args[0], ast.Name)
                and n.args[0].id == first for n in ast.walk(fdef))
    if not reads:
        return None
    has_default = len(fdef.args.args) > 1 and "default" in [a.arg for a in fdef.args.args]
    raises = any(isinstance(n, ast.Raise) for n in ast.walk(fdef))
    return "required" if raises and not has_default and fdef.name.strip("_").startswith("required") else "optional"


def _reads(fn: Any, seen: set[Any] | None = None) -> dict[str, bool]:
    """{query parameter: required?} read by ``fn`` and the module helpers it calls."""
    seen = seen if seen is not None else set()
    if fn in seen:
        return {}
    seen.add(fn)
    out: dict[str, bool] = {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    module = inspect.getmodule(fn)
    for n in ast.walk(tree):
        if not isinstance(n, ast.Call):
            continue
        literal = n.args[0].value if n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str) else None
        if isinstance(n.func, ast.Attribute) and n.func.attr == "get" and ast.unparse(n.func.value) == "request.args":
            if literal:
                out.setdefault(literal, False)
            continue
        name = n.func.id if isinstance(n.func, ast.Name) else None
        callee = getattr(module, name, None) if name else None
        if not inspect.isfunction(callee):
            continue
        kind = _reader_kind(callee)
        if kind and literal:
            out[literal] = out.get(literal, False) or kind == "required"
        elif inspect.getmodule(callee) is module and not kind:
            for k, v in _reads(callee, seen).items():
                out[k] = out.get(k, False) or v
    return out


def _views(app: Flask) -> list[tuple[str, str, Any]]:
    return [(rule.rule, method, app.view_functions[rule.endpoint])
            for rule in app.url_map.iter_rules() if rule.rule.startswith(API_PREFIXES)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})]


def _declared(doc: dict[str, Any], rule: str, method: str) -> dict[str, bool]:
    import re

    path = re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: "{" + m.group(2) + "}", rule)
    op = doc["paths"][path][method.lower()]
    return {p["name"]: bool(p.get("required")) for p in op["parameters"] if p["in"] == "query"}


def test_every_required_query_parameter_is_declared_required_in_openapi(app: Flask) -> None:
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    missing = []
    checked = 0
    for rule, method, view in _views(app):
        read = _reads(inspect.unwrap(view))
        declared = _declared(doc, rule, method)
        for name, required in read.items():
            if required:
                checked += 1
                if not declared.get(name):
                    missing.append(f"{method} {rule}: ?{name} is required but not declared required")
    assert checked >= 10, checked  # the OEE views' line, from and to at least
    assert not missing, "\n".join(missing)


def test_a_view_that_declares_its_query_declares_exactly_what_it_reads(app: Flask) -> None:
    """Declared with types and bounds (e.g. the OEE ``group`` enum), nothing read left out, nothing invented."""
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    wrong, declaring = [], 0
    for rule, method, view in _views(app):
        declared = _declared(doc, rule, method)
        if not declared:
            continue
        declaring += 1
        read = _reads(inspect.unwrap(view))
        if read != declared:
            wrong.append(f"{method} {rule}: reads {read}, declares {declared}")
    assert declaring >= 14  # every API view that reads a query parameter
    assert not wrong, "\n".join(wrong)
    oee = doc["paths"]["/api/v1/oee"]["get"]["parameters"]
    group = next(p for p in oee if p["name"] == "group")
    assert group["schema"]["enum"] == ["shift", "product"] and group["required"] is False
