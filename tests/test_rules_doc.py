"""``docs/rules.md`` stays true: every enforcing function it names is importable, every test
it names exists (found with ``ast``, no collection), and it lists at least 30 rules."""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "docs" / "rules.md"
MIN_RULES = 30


def rows() -> list[tuple[str, str, str, str]]:
    """(number, rule, function, test) for every row of the table."""
    found = []
    for line in RULES.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].isdigit():
            found.append((cells[0], cells[1], cells[2].strip("`"), cells[3].strip("`")))
    return found


@cache
def functions_in(path: Path) -> frozenset[str]:
    """Test functions in a file: module-level ``test_*`` and ``test_*`` methods of ``Test*`` classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names |= {f"{node.name}::{m.name}" for m in node.body
                      if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef) and m.name.startswith("test_")}
    return frozenset(names)


def test_at_least_thirty_rules_numbered_in_order() -> None:
    table = rows()
    assert len(table) >= MIN_RULES
    assert [int(n) for n, *_ in table] == list(range(1, len(table) + 1))
    assert all(rule for _, rule, _, _ in table)


def test_every_enforcing_function_is_importable() -> None:
    for number, _, target, _ in rows():
        assert re.fullmatch(r"[a-z_][\w.]*\.\w+", target), f"rule {number}: {target!r} is not module.function"
        module_name, _, attribute = target.rpartition(".")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attribute, None)), f"rule {number}: {module_name} has no function {attribute}"


def test_every_named_test_exists() -> None:
    for number, _, _, test in rows():
        file, sep, name = test.partition("::")
        assert sep and file.startswith("tests/") and file.endswith(".py"), f"rule {number}: {test!r}"
        path = ROOT / file
        assert path.is_file(), f"rule {number}: no file {file}"
        assert name in functions_in(path), f"rule {number}: {file} has no test {name}"
