"""What the kiosk offers a step kind building its screen, and where kinds' partials are found.

:class:`StepPage` implements :class:`mes.steps.base.KioskPage` over the kiosk's read
helpers (:mod:`kiosk.views`), so a kind's ``kiosk_context`` never touches Flask's request.
:class:`KindTemplates` finds a kind's partial in the directory the kind ships it in
(``StepKind.template_dir``), for plugin kinds outside this package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from flask import current_app
from jinja2 import BaseLoader, Environment, FileSystemLoader, TemplateNotFound
from markupsafe import Markup

from kiosk import views as v
from mes.audit.canonical import format_at
from mes.execution import operations as ex
from mes.recipes import model as rm
from mes.steps import registry


class StepPage:
    """The step screen being built: batch, step row, query arguments, user, read helpers."""

    def __init__(self, batch: Any, step: Any, args: Mapping[str, str], user: Any) -> None:
        self.batch, self.step, self.args, self.user = batch, step, args, user

    def dec(self, value: Decimal | None) -> str:
        """A decimal as shown (empty for None)."""
        return v.dec(value)

    def limits_text(self, low: Decimal | None, high: Decimal | None, unit: str) -> str:
        """Limits as a translated phrase."""
        return v.limits_text(low, high, unit)

    def values(self) -> dict[str, Decimal]:
        """Current recorded values of the batch's value steps."""
        return v.values_of(self.batch)

    def completed_at_text(self, step_id: str) -> str | None:
        """When another step of the batch was completed, or None."""
        return self.at_text(ex.get_step(self.batch.id, step_id).completed_at)

    def at_text(self, at: Any) -> str | None:
        """A datetime as canonical UTC text (None stays None)."""
        return format_at(at) if at else None

    def now_text(self) -> str:
        """The server clock now."""
        return format_at(ex.clock())

    def containers_weighed(self) -> list[dict[str, Any]]:
        """Containers already weighed for this step."""
        return v.containers_weighed(self.step)

    def scales_for(self, spec: rm.Step) -> list[dict[str, Any]]:
        """Registered scales of the line, each saying whether it suits the weighing."""
        return v.scales_for(self.batch, spec)  # type: ignore[arg-type]

    def resolve_label(self, label: str, item: str | None) -> Any:
        """A scanned label with whether it may be used for ``item``."""
        return v.resolve_label(label, item)

    def recorded(self, step_ids: list[str]) -> list[dict[str, Any]]:
        """What the batch holds for these steps, a line each (the summary's lines)."""
        return v.summary_rows(self.batch, only=step_ids)

    def identified_lot(self, item: str) -> str | None:
        """The lot last identified for ``item`` in this batch."""
        return v.identified_lot(self.batch, item)


class KindTemplates(BaseLoader):
    """Finds a template in the ``template_dir`` of a registered kind (plugin partials)."""

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Callable[[], bool] | None]:
        """The first kind directory holding ``template``."""
        for kind in registry.kinds():
            if kind.template_dir is None:
                continue
            try:
                return FileSystemLoader(str(kind.template_dir)).get_source(environment, template)
            except TemplateNotFound:
                continue
        raise TemplateNotFound(template)


def notice(spec: rm.Step, result: dict[str, Any]) -> str | None:
    """The kind's own sentence for what was recorded (its partial's ``notice`` macro), or None."""
    module = current_app.jinja_env.get_template(registry.kind_of(spec).template).module
    macro = getattr(module, "notice", None)
    if macro is None:
        return None
    return Markup(macro(result)).unescape().strip() or None
