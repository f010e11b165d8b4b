"""Shared helpers for the device tests (imported explicitly; no conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from devices.drivers.aandd import AandDScale
from devices.drivers.mtsics import MtSicsScale
from devices.sim import AandDSimulator, BalanceModel, MtSicsSimulator

T = TypeVar("T")

#: Both real links every driver is tested over.
LINKS = ("pty", "tcp")

#: Line speed for functional tests; pacing itself is tested at 9600 and 1200 baud.
FAST_BAUD = 38400


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    """Run an async test body in a fresh loop, with a generous overall limit."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` (cheap, in-loop) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def read_until(
    scale: Any, predicate: Callable[[Any], bool], limit: int = 50, **kwargs: Any
) -> Any:
    """Read until a reading satisfies ``predicate`` (frames already in flight may predate a change)."""
    for _ in range(limit):
        reading = await scale.read(**kwargs)
        if predicate(reading):
            return reading
    raise AssertionError(f"no matching reading in {limit} reads; last: {reading!r}")


def closed_tcp_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def mtsics(
    link: str,
    balance: BalanceModel | None = None,
    *,
    config: dict[str, Any] | None = None,
    **sim_kwargs: Any,
) -> AsyncIterator[tuple[MtSicsSimulator, MtSicsScale]]:
    """An MT-SICS simulator on ``link`` and a connected driver talking to it."""
    sim_kwargs.setdefault("baud", FAST_BAUD)
    sim = MtSicsSimulator(balance or BalanceModel(load="100.00"), **sim_kwargs)
    async with sim.serve(link):
        driver = MtSicsScale(
            "BAL-01", {"port": sim.url, "baudrate": sim.baud or FAST_BAUD, **(config or {})}
        )
        await driver.connect()
        try:
            yield sim, driver
        finally:
            await driver.close()


@contextlib.asynccontextmanager
async def aandd(
    link: str,
    balance: BalanceModel | None = None,
    *,
    config: dict[str, Any] | None = None,
    **sim_kwargs: Any,
) -> AsyncIterator[tuple[AandDSimulator, AandDScale]]:
    """An A&D stream simulator on ``link`` and a connected driver listening to it."""
    sim_kwargs.setdefault("baud", FAST_BAUD)
    sim_kwargs.setdefault("rate_hz", 50)
    sim = AandDSimulator(balance or BalanceModel(load="12.34"), **sim_kwargs)
    async with sim.serve(link):
        driver = AandDScale(
            "BAL-AD",
            {"port": sim.url, "baudrate": sim.baud or FAST_BAUD, "bytesize": 8, "parity": "N", **(config or {})},
        )
        await driver.connect()
        try:
            yield sim, driver
        finally:
            await driver.close()
