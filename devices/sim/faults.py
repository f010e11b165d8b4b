"""Fault injection for the scale simulators.

Two kinds of fault:

* *Balance conditions* – motion, overload, underload, busy – are states of the
  :class:`~devices.sim.model.BalanceModel` (``set_unstable()`` ...), because
  a real balance reports them in its normal replies.
* *Link faults* – what goes wrong between balance and computer – are applied
  to replies by the simulator through a :class:`FaultPlan`:

  ============  ==========================================================
  ``garbage``   noise bytes in front of the reply, same line
  ``partial``   only the first half of the reply; the rest never comes
  ``split``     the reply arrives in three pieces with pauses between them
  ``disconnect`` half the reply, then the link drops (TCP close / pty hang-up)
  ``es/et/el``  MT-SICS only: the reply is replaced by ``ES``, ``ET``, ``EL``
  ============  ==========================================================

A fault is injected once (optionally only for replies to one command), kept
on (``split``), or drawn at random with a probability per reply (CLI).
"""

from __future__ import annotations

import enum
import random
import threading
from collections.abc import Mapping

__all__ = ["BALANCE_CONDITIONS", "Fault", "FaultPlan", "parse_fault_spec"]


class Fault(str, enum.Enum):
    """A link fault applied to one reply."""

    GARBAGE = "garbage"
    PARTIAL = "partial"
    SPLIT = "split"
    DISCONNECT = "disconnect"
    ERROR_ES = "es"
    ERROR_ET = "et"
    ERROR_EL = "el"


#: The MT-SICS general error replies, by fault.
ERROR_REPLIES: dict[Fault, bytes] = {
    Fault.ERROR_ES: b"ES",
    Fault.ERROR_ET: b"ET",
    Fault.ERROR_EL: b"EL",
}

#: Balance conditions the CLI ``--faults`` option accepts (no probability).
BALANCE_CONDITIONS = frozenset({"unstable", "overload", "underload", "busy"})


class FaultPlan:
    """Which link faults hit the next replies. Thread-safe."""

    def __init__(
        self,
        *,
        split: bool = False,
        probabilities: Mapping[Fault, float] | None = None,
        seed: int | None = 0,
    ) -> None:
        self._lock = threading.Lock()
        self.split = split
        self.probabilities: dict[Fault, float] = dict(probabilities or {})
        for fault, p in self.probabilities.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probability of {fault.value} must be within 0..1")
        self._random = random.Random(seed)
        self._pending: list[list[object]] = []  # [fault, command or None, count]
        self.applied: list[tuple[Fault, str | None]] = []

    def inject(self, fault: Fault, *, command: str | None = None, count: int = 1) -> None:
        """Apply ``fault`` to the next ``count`` replies (to ``command`` only, if given)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._pending.append([Fault(fault), command, count])

    @property
    def pending(self) -> list[tuple[Fault, str | None, int]]:
        """Injected faults not yet applied."""
        with self._lock:
            return [(f, c, n) for f, c, n in self._pending]  # type: ignore[misc]

    def clear(self) -> None:
        """Forget injected faults (the persistent ``split`` flag stays)."""
        with self._lock:
            self._pending.clear()

    def take(self, command: str | None) -> frozenset[Fault]:
        """The faults for the next reply (to ``command``); consumes one-shot entries."""
        chosen: set[Fault] = set()
        with self._lock:
            for entry in list(self._pending):
                fault, wanted, _count = entry
                if fault in chosen or (wanted is not None and wanted != command):
                    continue
                chosen.add(fault)  # type: ignore[arg-type]
                entry[2] -= 1  # type: ignore[operator]
                if entry[2] <= 0:  # type: ignore[operator]
                    self._pending.remove(entry)
            for fault, p in self.probabilities.items():
                if p and self._random.random() < p:
                    chosen.add(fault)
            if self.split:
                chosen.add(Fault.SPLIT)
            for fault in sorted(chosen, key=lambda f: f.value):
                self.applied.append((fault, command))
        return frozenset(chosen)


def parse_fault_spec(spec: str) -> tuple[set[str], bool, dict[Fault, float]]:
    """Parse ``--faults`` text, e.g. ``"unstable,split,garbage=0.05,es=0.1"``.

    Returns (balance conditions, split flag, link-fault probabilities). A
    link fault given without ``=P`` gets probability 0.1.
    """
    conditions: set[str] = set()
    split = False
    probabilities: dict[Fault, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip().lower()
        if name in BALANCE_CONDITIONS:
            if value:
                raise ValueError(f"{name} takes no probability")
            conditions.add(name)
            continue
        if name == Fault.SPLIT.value and not value:
            split = True
            continue
        try:
            fault = Fault(name)
        except ValueError:
            known = sorted(BALANCE_CONDITIONS | {f.value for f in Fault})
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(known)}") from None
        p = float(value) if value else 0.1
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability for {name} must be within 0..1")
        probabilities[fault] = p
    if "overload" in conditions and "underload" in conditions:
        raise ValueError("overload and underload exclude each other")
    return conditions, split, probabilities
