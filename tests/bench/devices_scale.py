"""Bench helpers for the device drivers (called from ``python -m tests.bench.devices``).

Only functions here, no ``__main__``: the caller decides what to run and how
to report it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from devices.drivers.mtsics import MtSicsScale
from devices.sim import BalanceModel, MtSicsSimulator, SimulatorThread
from devices.transport import bits_per_character


def measure_mtsics_rate(seconds: float, baud: int = 9600) -> dict[str, Any]:
    """Stream MT-SICS readings (``SIR``) from the simulator over a real pty for ``seconds``.

    The simulator runs in its own thread and event loop, paced at ``baud``
    with 8N1 framing, like a balance on a serial line; the driver streams in
    this thread's loop. Returns the achieved readings per second, the line-rate
    limit for the reply length at that baud (``baud / 10 / reply_bytes``) and
    their ratio (target: >= 0.9). Call it from synchronous code.
    """
    if seconds <= 0:
        raise ValueError("seconds must be > 0")
    if baud <= 0:
        raise ValueError("baud must be > 0")
    sim = MtSicsSimulator(BalanceModel(load="123.45"), baud=baud)
    with SimulatorThread(sim, link="pty") as port:
        stamps, reply_bytes = asyncio.run(_stream_for(port, baud, seconds))
    readings = len(stamps)
    span = stamps[-1] - stamps[0] if readings > 1 else 0.0
    rate = (readings - 1) / span if span > 0 else 0.0
    limit = baud / bits_per_character(8, "N", 1) / reply_bytes
    return {
        "readings_per_s": rate,
        "line_rate_limit_per_s": limit,
        "ratio": rate / limit,
        "reply_bytes": reply_bytes,
        "baud": baud,
        "readings": readings,
        "seconds": span,
        "link": "pty",
    }


async def _stream_for(port: str, baud: int, seconds: float) -> tuple[list[float], int]:
    stamps: list[float] = []
    reply_bytes = 0
    async with MtSicsScale("BENCH", {"port": port, "baudrate": baud, "timeout_s": 5.0}) as scale:
        deadline: float | None = None
        async with contextlib.aclosing(scale.stream()) as stream:
            async for reading in stream:
                if deadline is None:  # the first reply includes the SIR round trip: skip it
                    deadline = time.monotonic() + seconds
                    reply_bytes = len(reading.raw)
                    continue
                stamps.append(reading.monotonic)
                if time.monotonic() >= deadline:
                    break
    return stamps, reply_bytes
