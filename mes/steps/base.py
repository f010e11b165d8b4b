"""The abstract step kind: every hook one kind of step has, in one class.

A step kind (``weigh``, ``timer``, a plant's own ``ph_check`` ...) is a subclass of
:class:`StepKind` registered in :mod:`mes.steps.registry`. The recipe loader, the checks,
the scaling, the engine, the kiosk, the simulated operator and the batch record ask the
registry for the kind of a step and call its hooks; none of them knows the kinds. The
template methods have sensible defaults, so a small kind overrides only what it needs:
its recipe dataclass and schema fragment, and :meth:`StepKind.complete` (the one abstract
method), plus a kiosk partial. See ``docs/step-kinds.md``.

Nothing here imports the engine, the kiosk or Flask: the engine hands a kind a
:class:`~mes.steps.context.StepContext`, the kiosk a :class:`KioskPage`, the simulator
itself; each is the narrow interface a kind may use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mes.quantities import Duration, decimal_places, round_half_even, to_text
from mes.recipes.errors import Path, Problem
from mes.recipes.model import MasterRecipe, Step, StepRef, freeze_translations

if TYPE_CHECKING:
    from mes.steps.context import StepContext

__all__ = ["KioskPage", "Report", "ScaleContext", "StepKind", "decimal_or_none", "duration", "ref"]


def ref(name: str) -> dict[str, str]:
    """A JSON-schema reference to a shared definition of the recipe schema (``decimal``,
    ``signed_decimal``, ``unit``, ``precision``, ``duration``, ``id``, ``code``, ``title``,
    ``text``, ``tolerance``, ``scale``, or one a kind adds with :meth:`StepKind.schema_defs`)."""
    return {"$ref": f"#/$defs/{name}"}


def decimal_or_none(value: Any) -> Decimal | None:
    """A schema-valid decimal string as a Decimal (None stays None)."""
    return None if value is None else Decimal(value)


def duration(value: Any) -> Duration | None:
    """A schema-valid ISO 8601 duration string as a Duration (None stays None)."""
    return None if value is None else Duration.parse(value)


class Report(Protocol):
    """Where recipe checks report a problem: ``report(path, message, key=False)``."""

    def __call__(self, path: Path, message: str, *, key: bool = False) -> None: ...


@dataclass
class ScaleContext:
    """What scaling a step to one batch may use: the master as written, the master with
    its BOM quantities scaled, the exact factor, and where to put problems."""

    master: MasterRecipe
    scaled_master: MasterRecipe
    factor: Fraction
    problems: list[Problem] = field(default_factory=list)

    def scaled(self, value: Decimal) -> Decimal:
        """``value × factor`` rounded HALF_EVEN to ``value``'s decimals (exact product, one rounding)."""
        return round_half_even(Fraction(value) * self.factor, decimal_places(value))


class KioskPage(Protocol):
    """What the kiosk offers a kind building its step screen (implemented by the kiosk)."""

    batch: Any
    """The batch (``mes.execution.models.Batch``)."""
    step: Any
    """The batch step row (``mes.execution.models.BatchStep``)."""
    args: Mapping[str, str]
    """The page's query arguments."""
    user: Any
    """The signed-in user."""

    def dec(self, value: Decimal | None) -> str:
        """A decimal as shown (empty for None)."""
        ...

    def limits_text(self, low: Decimal | None, high: Decimal | None, unit: str) -> str:
        """Limits as a translated phrase (``1 to 2 g``, ``at most 2 g``, ``no limits``)."""
        ...

    def values(self) -> dict[str, Decimal]:
        """Current recorded values of the batch's value steps, by step id."""
        ...

    def completed_at_text(self, step_id: str) -> str | None:
        """When another step of the batch was completed (canonical UTC text), or None."""
        ...

    def at_text(self, at: Any) -> str | None:
        """A datetime as canonical UTC text (None stays None)."""
        ...

    def now_text(self) -> str:
        """The server clock now, as canonical UTC text."""
        ...

    def containers_weighed(self) -> list[dict[str, Any]]:
        """Containers already weighed for this step (this attempt)."""
        ...

    def scales_for(self, spec: Step) -> list[dict[str, Any]]:
        """Registered scales of the batch's line, each saying whether it suits the weighing
        (``device_id``, ``label``, ``ok``, ``reason``, ``readability`` and ``readability_uom``)."""
        ...

    def resolve_label(self, label: str, item: str | None) -> Any:
        """A scanned lot or container label, with whether it may be used for ``item``."""
        ...

    def identified_lot(self, item: str) -> str | None:
        """The lot last identified for ``item`` in this batch."""
        ...

    def recorded(self, step_ids: list[str]) -> list[dict[str, Any]]:
        """What the batch holds for these steps, one line each, in batch order: ``seq``,
        ``id``, ``title``, ``recorded`` (text, places as recorded) and ``by`` (a name)."""
        ...


@dataclass(frozen=True)
class Expectation:
    """What a step asks for, as text with the places the recipe wrote: a target in ``unit``
    and limits (``low``, ``high``, either may be empty) in ``limits_unit``."""

    target: str = ""
    low: str = ""
    high: str = ""
    unit: str = ""
    limits_unit: str = ""


class StepKind(ABC):
    """One kind of step. Subclass it, set :attr:`name` and :attr:`step_class`, give the
    schema of its parameters and implement :meth:`complete`; register the class (or an
    instance) in :mod:`mes.steps.registry`, or name it in the ``mes.step_kinds`` entry
    point group of your package."""

    name: ClassVar[str] = ""
    """The ``kind`` written in recipes; unique."""
    step_class: ClassVar[type[Step]]
    """The recipe dataclass (a frozen ``kw_only`` subclass of :class:`~mes.recipes.model.Step`)."""
    required: ClassVar[tuple[str, ...]] = ()
    """Parameters a step of this kind must have (beyond id, kind, title, instruction)."""
    converters: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    """Parameter name -> function from its schema-valid file form to the dataclass value
    (e.g. ``Decimal``, :func:`duration`, ``tuple``); others are taken as they are."""
    template_dir: ClassVar[FsPath | None] = None
    """A directory holding this kind's kiosk partial (a plugin ships its own); None: the
    partial is among the kiosk's templates."""

    # ------------------------------------------------------------------ recipe format

    def properties(self) -> dict[str, Any]:
        """JSON-schema fragments of the kind's parameters, by name (use :func:`ref`)."""
        return {}

    def schema_defs(self) -> dict[str, Any]:
        """Extra shared definitions the parameters refer to (added to ``$defs``)."""
        return {}

    def build(self, data: Mapping[str, Any]) -> Step:
        """The dataclass of a schema-valid step mapping (``kind`` included)."""
        kwargs = {k: (self.converters[k](v) if k in self.converters else v) for k, v in data.items() if k != "kind"}
        if "translations" in kwargs:
            kwargs["translations"] = freeze_translations(kwargs["translations"])
        return self.step_class(**kwargs)

    # ------------------------------------------------------------------ recipe checks

    def check(self, recipe: MasterRecipe, ref: StepRef, report: Report, unique_ids: bool) -> None:
        """Report what is wrong with one step of this kind beyond the schema (default: nothing).
        ``unique_ids`` is False when the recipe repeats ids (references are not checked then)."""
        return None

    def check_recipe(self, recipe: MasterRecipe, refs: Sequence[StepRef], report: Report) -> None:
        """Recipe-wide rules of this kind (e.g. exactly one output step); run once per recipe."""
        return None

    def bom_items(self, step: Step) -> tuple[str, ...]:
        """The bill-of-materials items a step of this kind weighs or identifies (every BOM
        item must be used by some step)."""
        return ()

    # ------------------------------------------------------------------------ scaling

    def scale(self, step: Step, ctx: ScaleContext) -> Step:
        """The step in a control recipe for one batch (default: unchanged)."""
        return step

    def control_members(self, step: Step) -> dict[str, Any]:
        """Members added to the step in the control recipe's stored form (default: none)."""
        return {}

    # ------------------------------------------------------------------------- engine

    @abstractmethod
    def complete(self, ctx: StepContext) -> None:
        """Validate ``ctx.payload`` against ``ctx.spec``, record (``ctx.record``), raise
        deviations (``ctx.deviate``), set ``ctx.result``; refuse by raising. Writes of other
        features go to ``ctx.effects`` (run after every check passed, same transaction)."""

    def recompute(self, actor: Any, batch: Any, row: Any, spec: Step, changed: set[str], cause: str,
                  why: str, now: datetime) -> Any:
        """After the value of step ``cause`` was corrected (``why``): recompute a completed
        step of this kind that used one of the ``changed`` step ids (add the step's own id to ``changed`` when its
        value depends on them, so later steps follow). Returns the new record superseding the
        old one (audited, with a deviation where it now misses its limits), or None when
        nothing changes (default: a kind whose record depends on no other value)."""
        return None

    def produced_lot(self, records: Sequence[Mapping[str, Any]]) -> str | None:
        """The lot a step of this kind produced, from its current value records' data
        (default: none); release names it in ``batch.released``."""
        return None

    def second_person(self, spec: Step) -> bool:
        """Whether a different person completes the step at the kiosk (verification)."""
        return False

    signs: ClassVar[bool] = False
    """Whether a step of this kind is a signature gate, signed in a role the recipe names
    (through :func:`mes.execution.gates.sign_gate`, without ``batch.execute``)."""

    #: its recorded value is an in-process check QA trends on a control chart
    charted: ClassVar[bool] = False
    #: its value records are material dispensed into the batch (the eBR's actual bill of materials)
    dispenses: ClassVar[bool] = False

    def signing_role(self, spec: Step, roles: set[str]) -> str | None:
        """For a gate: the role, of a person holding ``roles``, in which they may sign it
        (None: they may not; default: not a gate)."""
        return None

    # ----------------------------------------------------------------- what it asks for

    def expectation(self, spec: Step) -> Expectation:
        """The step's target and limits as the recipe wrote them (places kept), for the
        batch summary and review; by default the spec's ``target``, ``low``, ``high`` and
        ``unit``, where it has them."""
        def text(name: str) -> str:
            value = getattr(spec, name, None)
            return to_text(value) if isinstance(value, Decimal) else ""

        unit = str(getattr(spec, "unit", "") or "")
        return Expectation(text("target"), text("low"), text("high"), unit, unit)

    # -------------------------------------------------------------------------- kiosk

    @property
    def template(self) -> str:
        """The kiosk partial: a Jinja template of macros ``label()``, and optionally
        ``facts()``, ``form_attrs()``, ``form()`` and ``notice(result)`` (see step.html)."""
        return f"kiosk/steps/{self.name}.html"

    def kiosk_context(self, spec: Step, page: KioskPage) -> dict[str, Any]:
        """Extra template context of the step screen (default: none)."""
        return {}

    def kiosk_blocked(self, spec: Step, context: Mapping[str, Any]) -> dict[str, Any] | None:
        """Context for the blocked screen when the step cannot be done here now (e.g. no
        usable scale), else None."""
        return None

    def payload(self, spec: Step, form: Mapping[str, Any]) -> dict[str, Any]:
        """The engine payload from the submitted form (plain mapping, values stay text:
        the engine checks them). Default: nothing."""
        return {}

    # ---------------------------------------------------------------------- simulator

    def simulate(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> tuple[dict[str, Any], Any, str]:
        """What the simulated operator sends: ``(payload, client, summary)``. ``sim`` is the
        :class:`~mes.execution.sim_operator.Simulator` (its client, lots, scales)."""
        raise NotImplementedError(f"the simulation does not know step kind {self.name}")

    def simulate_step(self, sim: Any, batch: dict[str, Any], step: dict[str, Any], spec: Step) -> str | None:
        """Do the whole step in the simulation (e.g. weigh container by container) and
        return its summary, or None to send one :meth:`simulate` payload."""
        return None

    sim_timed: ClassVar[bool] = True
    """Whether the time its steps take counts in the simulated operator's estimate of how long
    a step of the kind takes (while a timer runs); False for timers themselves."""

    def sim_wait(self, spec: Step) -> timedelta | None:
        """How long after its start the simulated operator completes the step, waiting in
        real time (a timer), or None: done at once."""
        return None

    # ------------------------------------------------------------------- batch record

    def ebr_rows(self, spec: Step, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """How the step's current records read in the electronic batch record: one row per
        record (what, value with unit, flags, who and when) by default."""
        rows = []
        for r in records:
            value = r.get("value")
            rows.append({"step": spec.id, "title": spec.title, "kind": self.name, "record": r.get("kind"),
                         "value": f"{value} {r.get('unit') or ''}".strip() if value is not None else "",
                         "data": dict(r.get("data") or {}), "flags": list(r.get("flags") or []),
                         "recorded_by": r.get("recorded_by"), "recorded_at": r.get("recorded_at")})
        return rows

    def __repr__(self) -> str:
        return f"<step kind {self.name!r} ({type(self).__module__}.{type(self).__qualname__})>"
