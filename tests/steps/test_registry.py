"""The step kind registry: built-ins in order, plugins by entry point, clear errors, and the
rule that step kinds are branched on nowhere but in their own modules."""

from __future__ import annotations

import re
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from mes.recipes.model import STEP_CLASSES, STEP_KINDS, VALUE_KINDS
from mes.recipes.schema import SCHEMA, build_schema, current
from mes.steps import registry
from mes.steps.base import StepKind

REPO = Path(__file__).resolve().parents[2]


def test_the_built_in_kinds_are_registered_in_documentation_order() -> None:
    kinds = registry.kinds()
    assert tuple(k.name for k in kinds[:len(STEP_KINDS)]) == STEP_KINDS
    for kind in kinds[:len(STEP_KINDS)]:
        assert isinstance(kind, StepKind) and kind.step_class is STEP_CLASSES[kind.name]
        assert kind.template == f"kiosk/steps/{kind.name}.html"
        assert (REPO / "kiosk" / "templates" / kind.template).is_file(), kind.template
    assert tuple(k for k in STEP_KINDS if STEP_CLASSES[k].produces_value) == VALUE_KINDS


def test_an_unknown_kind_is_a_clear_lookup_error() -> None:
    with pytest.raises(registry.UnknownStepKind) as err:
        registry.get("weight")
    assert isinstance(err.value, LookupError)
    assert str(err.value).startswith("unknown step kind 'weight'; registered kinds: instruction, numeric, weigh")
    assert "'mes.step_kinds' entry point group" in str(err.value)


def test_a_kind_must_name_a_dataclass_of_its_own_kind() -> None:
    class Wrong(StepKind):
        name = "wrong"
        step_class = STEP_CLASSES["numeric"]

        def complete(self, ctx: Any) -> None:
            raise AssertionError

    with pytest.raises(ValueError, match="step_class NumericStep has kind 'numeric'"):
        registry.register(Wrong)
    assert "wrong" not in registry.names()


def test_plugins_are_loaded_from_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """A package names its kind in ``[project.entry-points."mes.step_kinds"]``; the registry loads it."""
    from tests.steps.test_toy_kind import PhReading

    seen: list[str] = []

    def entry_points(group: str) -> list[EntryPoint]:
        seen.append(group)
        return [EntryPoint("ph_reading", "tests.steps.test_toy_kind:PhReading", group)]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_KINDS", {})
    gen = registry.generation()
    try:
        assert seen == ["mes.step_kinds"] and registry.names()[-1] == "ph_reading"
        assert isinstance(registry.get("ph_reading"), PhReading)
        assert "ph_reading" in current().step_fields and current().schema["$defs"]["step_ph_reading"]
    finally:
        registry.unregister("ph_reading")
    assert registry.generation() > gen and "ph_reading" not in current().step_fields


def test_the_published_schema_is_built_from_the_built_in_kinds() -> None:
    built = build_schema(registry.get(name) for name in STEP_KINDS).schema
    assert built == SCHEMA


# A step-kind chain: a branch on a recipe step's class or on a step's kind name. Record kinds
# (value, container, identification ...) and other ``kind`` fields are not step kinds.
_KIND_NAMES = "|".join(STEP_KINDS)
_CHAIN = re.compile(
    r"isinstance\([^)]*\b(rm\.)?(" + "|".join(c.__name__ for c in STEP_CLASSES.values()) + r")\b"
    r"|\bkind\s*(==|!=|in)\s*\(?['\"](" + _KIND_NAMES + r")['\"]"
    r"|['\"](" + _KIND_NAMES + r")['\"]\s*(==|!=)\s*[\w.]*kind\b")

# Places that still name one kind (none is a chain over kinds): the demo plant registers
# the scales weigh steps and the equipment checks need; the recipe model's helpers return
# the weigh steps of an item and the output; the kiosk's summary names the *record* kind
# "signature".
_KNOWN = {
    "kiosk/views.py": 1,
    "mes/equipment/plant.py": 2,
    "mes/recipes/model.py": 2,
}


def test_step_kinds_are_branched_on_only_in_their_own_modules() -> None:
    found: dict[str, int] = {}
    for path in sorted([*(REPO / "mes").rglob("*.py"), *(REPO / "kiosk").rglob("*.py"), *(REPO / "kiosk").rglob("*.html")]):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("mes/steps/") or rel.startswith("kiosk/templates/kiosk/steps/"):
            continue
        hits = [line for line in path.read_text(encoding="utf-8").splitlines() if _CHAIN.search(line)]
        if hits:
            found[rel] = len(hits)
    unexpected = {p: n for p, n in found.items() if n > _KNOWN.get(p, 0)}
    assert not unexpected, f"step kinds branched on outside mes/steps: {unexpected}"
