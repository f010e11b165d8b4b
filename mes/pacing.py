"""Background work that leaves the request threads their speed.

A web worker's background thread (:mod:`mes.jobs`) verifies new audit entries and compares
every GMP table with the audit log, in Python, while the same process serves the kiosks.
CPython runs one thread at a time: while the background thread computes, each request
thread of the process waits for its turn at every step, so a comparison of 300 ms slowed
every step completion that met it from about 15 ms to 60-150 ms (the plant bench's p99).

Inside :func:`paced`, the long loops of that work call :func:`breathe` between chunks,
which sleeps so that the thread computes for at most ``duty`` of the time: the work takes
longer, the requests do not. Outside :func:`paced` (a request, a CLI command) and inside
:func:`unpaced` (work that holds the audit append lock, which every kiosk waits for)
:func:`breathe` does nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["DUTY", "breathe", "paced", "unpaced"]

#: The share of the time paced work computes.
DUTY = 0.25
#: The longest single pause (a chunk that took long is followed by this at most).
MAX_PAUSE_S = 0.1


@dataclass
class _Pacer:
    duty: float
    since: float = field(default_factory=time.perf_counter)
    paused_s: float = 0.0

    def breathe(self) -> None:
        worked = time.perf_counter() - self.since
        pause = min(MAX_PAUSE_S, worked * (1 - self.duty) / self.duty)
        if pause > 0:
            time.sleep(pause)
            self.paused_s += pause
        self.since = time.perf_counter()


_current: contextvars.ContextVar[_Pacer | None] = contextvars.ContextVar("mes_pacer", default=None)


@contextlib.contextmanager
def paced(duty: float = DUTY) -> Iterator[_Pacer]:
    """Run the block's long loops at ``duty`` of the time (see :func:`breathe`)."""
    pacer = _Pacer(duty)
    token = _current.set(pacer)
    try:
        yield pacer
    finally:
        _current.reset(token)


@contextlib.contextmanager
def unpaced() -> Iterator[None]:
    """Run the block at full speed, also inside :func:`paced` (it holds a lock others wait for)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def breathe() -> None:
    """Between two chunks of a long loop: pause as :func:`paced` asks, or do nothing."""
    pacer = _current.get()
    if pacer is not None:
        pacer.breathe()
