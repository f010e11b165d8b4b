"""The operator's reading of an equipment status label, confirmed before an equipment check.

At an equipment check the operator reads the status label on the equipment itself (clean,
calibrated, qualified, not in use) and confirms each state the step requires; the engine
then also checks the registry (:func:`mes.equipment.operations.check_equipment`). Both
must agree: a label the operator did not confirm refuses the check, whoever sends it (the
kiosk's tick boxes, an API client's ``label_states``), and what was confirmed is recorded
with the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mes.equipment.operations import CHECK_STATES
from mes.errors import ValidationFailed

STATE_NAMES = {"clean": "clean", "calibrated": "calibrated", "qualified": "qualified", "not_in_use": "not in use",
               "available": "available"}


def state_name(state: str) -> str:
    """How a label state is written for people (``not_in_use`` -> ``not in use``)."""
    return STATE_NAMES.get(state, state)


def confirm_labels(required_states: Sequence[str], confirmed: Any) -> list[str]:
    """The label states the operator confirmed, in the order the step requires them.

    ``confirmed`` is what the operator ticked (a list of state names). Every required state
    must be among them, else the check is refused before anything is recorded; a state that
    is not a label state is refused as a wrong entry. Why: the registry can be right while
    the equipment in front of the operator is not the one scanned, or its label was never
    updated; the operator's reading is the second, independent look.
    """
    if confirmed is None:
        confirmed = []
    if not isinstance(confirmed, list | tuple) or not all(isinstance(s, str) for s in confirmed):
        raise ValidationFailed("The label states are a list of state names.", field="label_states")
    ticked = {s.strip() for s in confirmed if s.strip()}
    unknown = sorted(ticked - set(CHECK_STATES))
    if unknown:
        raise ValidationFailed(f"Unknown label state {', '.join(unknown)} (use {', '.join(CHECK_STATES)}).",
                               field="label_states")
    missing = [s for s in required_states if s not in ticked]
    if missing:
        raise ValidationFailed(f"Check the equipment label: it must show {', '.join(state_name(s) for s in missing)}. "
                               "Nothing was recorded.", field="label_states", missing=missing)
    return [s for s in required_states if s in ticked] + sorted(ticked - set(required_states))
