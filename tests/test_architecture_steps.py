"""A step kind lives in one place: ``mes/steps/``.

Outside it, no Python file in ``mes/`` or ``kiosk/`` branches on a step kind (no
``isinstance(step, WeighStep)``, no ``step.kind == "weigh"``, no ``match`` on either), and no
template chains ``{% if step.kind == … %}``: the engine, loader, kiosk and simulator look a
kind up in the registry, so adding a kind touches no existing file.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS_HOME = ROOT / "mes" / "steps"

STEP_KINDS = frozenset({
    "instruction", "numeric", "weigh", "identify", "equipment_check", "timer", "calculation",
    "sample_check", "signature", "produce_output",
})
STEP_CLASSES = frozenset({
    "InstructionStep", "NumericStep", "WeighStep", "IdentifyStep", "EquipmentCheckStep", "TimerStep",
    "CalculationStep", "SampleCheckStep", "SignatureStep", "ProduceOutputStep",
})


def step_class_names() -> frozenset[str]:
    """The recipe Step subclasses: the known ones and any the model defines today."""
    names = set(STEP_CLASSES)
    try:
        from mes.recipes.model import Step
    except ImportError:  # the base class moved: the known names still apply
        return frozenset(names)
    todo = list(Step.__subclasses__())
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return frozenset(names)


def outside_steps(pattern: str) -> list[Path]:
    return sorted(
        p for package in ("mes", "kiosk") for p in (ROOT / package).rglob(pattern)
        if STEPS_HOME not in p.parents
    )


def _names(node: ast.AST) -> Iterator[str]:
    """Class names in an isinstance() second argument: ``A``, ``m.A``, ``(A, m.B)``."""
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.Attribute):
        yield node.attr
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for elt in node.elts:
            yield from _names(elt)
    elif isinstance(node, ast.BinOp):  # A | B
        yield from _names(node.left)
        yield from _names(node.right)


def _is_kind(node: ast.AST) -> bool:
    """``kind``, ``x.kind``, ``x["kind"]``, ``x.get("kind")`` or ``type(x).kind``."""
    if isinstance(node, ast.Name):
        return node.id == "kind"
    if isinstance(node, ast.Attribute):
        return node.attr == "kind"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "kind"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "kind"
    return False


def _kind_literals(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & STEP_KINDS
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return set().union(*(_kind_literals(e) for e in node.elts)) if node.elts else set()
    return set()


def kind_branches(tree: ast.AST, classes: frozenset[str]) -> Iterator[tuple[int, str]]:
    """(line, what) for every branch on a step kind in a parsed module."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"isinstance", "issubclass"}
            and len(node.args) == 2
        ):
            hit = sorted(set(_names(node.args[1])) & classes)
            if hit:
                yield node.lineno, f"{node.func.id}(…, {', '.join(hit)})"
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_kind(s) for s in sides):
                literals = set().union(*(_kind_literals(s) for s in sides))
                if literals:
                    yield node.lineno, f"kind compared with {', '.join(sorted(literals))}"
        elif isinstance(node, ast.Match):
            for case in node.cases:
                for sub in ast.walk(case.pattern):
                    if isinstance(sub, ast.MatchValue) and _kind_literals(sub.value) and _is_kind(node.subject):
                        yield node.lineno, f"match on kind {sub.value.value!r}"  # type: ignore[attr-defined]
                    elif isinstance(sub, ast.MatchClass) and set(_names(sub.cls)) & classes:
                        yield node.lineno, f"match on class {ast.unparse(sub.cls)}"


TEMPLATE_CHAIN = re.compile(r"\{%-?\s*(?:el)?if\b[^%]*?\bkind\b\s*(?:==|!=|\bin\b|\bnot in\b)")


def test_no_step_kind_branches_outside_mes_steps() -> None:
    classes = step_class_names()
    problems = []
    for path in outside_steps("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        problems += [f"{path.relative_to(ROOT)}:{line} {what}"
                     for line, what in sorted(kind_branches(tree, classes))]
    assert not problems, "step kinds are looked up in the registry (mes/steps/), not branched on:\n" + "\n".join(
        problems)


def test_no_step_kind_chains_in_templates() -> None:
    problems = []
    for path in outside_steps("*.html"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if TEMPLATE_CHAIN.search(line):
                problems.append(f"{path.relative_to(ROOT)}:{n} {line.strip()[:100]}")
    assert not problems, "templates include the kind's partial instead of chaining on the kind:\n" + "\n".join(
        problems)


# ------------------------------------------------------------- the checker itself


def _found(source: str) -> list[str]:
    return [what for _, what in kind_branches(ast.parse(source), STEP_CLASSES)]


def test_checker_finds_each_kind_of_branch() -> None:
    assert _found("isinstance(s, WeighStep)")
    assert _found("isinstance(s, (m.NumericStep, WeighStep))")
    assert _found("s.kind == 'weigh'")
    assert _found("'timer' != step.kind")
    assert _found("kind in ('numeric', 'weigh')")
    assert _found("step['kind'] == 'identify'")
    assert _found("step.get('kind') == 'signature'")
    assert _found("match s.kind:\n    case 'weigh': pass")
    assert _found("match s:\n    case WeighStep(): pass")
    assert not _found("tol.kind == 'percent'")
    assert not _found("isinstance(x, int)")
    assert not _found("name == 'weigh'")
    assert TEMPLATE_CHAIN.search("{% if step.kind == 'weigh' %}")
    assert TEMPLATE_CHAIN.search("{%- elif kind in ['a'] %}")
    assert not TEMPLATE_CHAIN.search("{% include 'steps/' ~ step.kind ~ '.html' %}")
