"""The registry of step kinds: the built-in kinds, plus plugins by entry point.

The loader, the checks, the scaling, the engine, the kiosk and the simulated operator ask
:func:`get` (or :func:`kind_of` for a step) for a kind; nothing else knows the kinds. A
package adds a kind by naming its :class:`~mes.steps.base.StepKind` subclass in the
``mes.step_kinds`` entry point group::

    [project.entry-points."mes.step_kinds"]
    ph_check = "acme_mes.steps:PhCheck"

or by calling :func:`register` at import. The built-ins and the entry points are loaded on
first use (so importing this module imports no kind, and a kind may import the registry).
"""

from __future__ import annotations

import importlib
import threading
from importlib.metadata import entry_points
from typing import Final

from mes.recipes.model import Step
from mes.steps.base import StepKind

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "UnknownStepKind", "generation", "get", "kind_of", "kinds", "load", "names",
           "register", "unregister"]

ENTRY_POINT_GROUP: Final = "mes.step_kinds"

BUILTIN: Final = (
    "mes.steps.instruction:Instruction",
    "mes.steps.numeric:Numeric",
    "mes.steps.weigh:Weigh",
    "mes.steps.identify:Identify",
    "mes.steps.equipment_check:EquipmentCheck",
    "mes.steps.timer:Timer",
    "mes.steps.calculation:Calculation",
    "mes.steps.sample_check:SampleCheck",
    "mes.steps.signature:Signature",
    "mes.steps.produce_output:ProduceOutput",
    "mes.steps.meter:Meter",
)
"""The built-in kinds, in documentation order (``module:class``)."""


class UnknownStepKind(LookupError):
    """No step kind of that name is registered."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown step kind {name!r}; registered kinds: {', '.join(known)} "
                         f"(a plugin kind is registered by the {ENTRY_POINT_GROUP!r} entry point group)")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


_KINDS: dict[str, StepKind] = {}
_lock = threading.RLock()
_loaded = False
_generation = 0


def _resolve(target: str) -> object:
    module, _, attr = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _instance(kind: StepKind | type[StepKind]) -> StepKind:
    obj = kind() if isinstance(kind, type) else kind
    if not isinstance(obj, StepKind):
        raise TypeError(f"{kind!r} is not a StepKind")
    if not obj.name or not isinstance(obj.name, str):
        raise ValueError(f"{kind!r} has no name")
    if getattr(obj.step_class, "kind", None) != obj.name:
        raise ValueError(f"step kind {obj.name!r}: its step_class {obj.step_class.__name__} has kind {obj.step_class.kind!r}")
    return obj


def register(kind: StepKind | type[StepKind], *, replace: bool = False) -> StepKind:
    """Register a kind (class or instance) under its name; ValueError if the name is taken
    (unless ``replace``). Returns the registered instance."""
    load()
    obj = _instance(kind)
    global _generation
    with _lock:
        if not replace and obj.name in _KINDS and type(_KINDS[obj.name]) is not type(obj):
            raise ValueError(f"step kind {obj.name!r} is already registered ({_KINDS[obj.name]!r})")
        _KINDS[obj.name] = obj
        _generation += 1
    return obj


def unregister(name: str) -> None:
    """Remove a kind (tests, or a plant that retires a plugin kind)."""
    global _generation
    with _lock:
        load()
        _KINDS.pop(name, None)
        _generation += 1


def load() -> None:
    """Load the built-in kinds and the entry-point plugins (once; later calls do nothing)."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        _loaded = True
        for target in BUILTIN:
            register(_resolve(target))  # type: ignore[arg-type]
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            register(ep.load())


def get(name: str) -> StepKind:
    """The kind called ``name``; :class:`UnknownStepKind` (a LookupError) naming the known kinds if none."""
    load()
    try:
        return _KINDS[name]
    except KeyError:
        raise UnknownStepKind(name, tuple(_KINDS)) from None


def kind_of(step: Step | str) -> StepKind:
    """The kind of a recipe step (or of a kind name)."""
    return get(step if isinstance(step, str) else step.kind)


def kinds() -> tuple[StepKind, ...]:
    """Every registered kind: built-ins in documentation order, then plugins."""
    load()
    return tuple(_KINDS.values())


def names() -> tuple[str, ...]:
    """The names of every registered kind, in :func:`kinds` order."""
    return tuple(k.name for k in kinds())


def generation() -> int:
    """A number that changes whenever a kind is registered or removed (for caches)."""
    load()
    return _generation
