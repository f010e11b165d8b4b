"""Bench helper for the Modbus TCP driver (called from ``python -m tests.bench.devices``).

Only functions here, no ``__main__``: the caller decides what to run and how
to report it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from devices.drivers.modbus import DataType, ModbusTcpDriver
from devices.sim import SimulatorThread
from devices.sim.modbus import ModbusSimulator, RegisterMap
from devices.sim.server import SimulatorServer

#: Tag types cycled through, so a cycle mixes 1- and 2-register values.
_TYPES = ("int16", "uint16", "int32", "float32")


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(prefix: str, samples_s: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": round(_percentile(samples_s, 0.50) * 1000, 3),
        f"{prefix}_p99_ms": round(_percentile(samples_s, 0.99) * 1000, 3),
    }


def measure_modbus_cycle(tags: int = 100, cycles: int = 50) -> dict[str, Any]:
    """Time polling ``tags`` tags per cycle against the simulator, beside single reads.

    The simulator runs in its own thread and event loop on TCP loopback; the
    driver polls from this thread's loop. ``tags`` holding-register tags of
    mixed types (int16, uint16, int32, float32) sit back to back, so the
    driver coalesces them into ceil(registers / 125) block reads. In the same
    run it times a single-register read round trip (the primary int16 tag)
    and a cycle without coalescing (one request per tag, fewer cycles).
    Returns p50/p99 in milliseconds and ``ratio_p50`` = cycle / single read.
    Call it from synchronous code.
    """
    if tags < 1 or cycles < 1:
        raise ValueError("tags and cycles must be >= 1")
    regmap = RegisterMap(max(1000, 4 * tags))
    config_tags: dict[str, Any] = {}
    address = 0
    for i in range(tags):
        dtype = _TYPES[i % len(_TYPES)]
        regmap.set_value("holding_registers", address, dtype, i)
        config_tags[f"t{i:04d}"] = {
            "function": "holding_registers", "address": address, "type": dtype, "unit": "1",
        }
        address += DataType(dtype).registers
    sim = ModbusSimulator(regmap)
    # SimulatorThread only needs protocol/start_tcp/stop, which the Modbus simulator has.
    with SimulatorThread(cast(SimulatorServer, sim), link="tcp"):
        return asyncio.run(_measure(sim.port, config_tags, tags, cycles, address))


async def _measure(port: int, config_tags: dict[str, Any], tags: int, cycles: int, registers: int) -> dict[str, Any]:
    base = {"host": "127.0.0.1", "port": port, "timeout_s": 5.0, "tags": config_tags}
    async with ModbusTcpDriver("BENCH", base) as plc:
        requests = len(plc.plan())
        for _ in range(3):  # warm up: connection, caches, code paths
            await plc.poll()
            await plc.read()
        cycle_s: list[float] = []
        single_s: list[float] = []
        for _ in range(cycles):  # interleaved, so both see the same machine load
            t0 = time.perf_counter()
            cycle = await plc.poll()
            cycle_s.append(time.perf_counter() - t0)
            if not cycle.ok or len(cycle.readings) != tags:
                raise RuntimeError(f"bench cycle failed: {cycle.errors}")
            t0 = time.perf_counter()
            await plc.read()
            single_s.append(time.perf_counter() - t0)
    naive_cycles = max(1, min(cycles, 10))
    naive = {**base, "max_block_registers": 1}  # one request per tag
    async with ModbusTcpDriver("BENCH-NAIVE", naive) as plc:
        await plc.poll()
        naive_s: list[float] = []
        for _ in range(naive_cycles):
            t0 = time.perf_counter()
            await plc.poll()
            naive_s.append(time.perf_counter() - t0)
    result: dict[str, Any] = {
        "tags": tags,
        "registers": registers,
        "cycles": cycles,
        "requests_per_cycle": requests,
        **_summary("cycle", cycle_s),
        **_summary("single_read", single_s),
        **_summary("uncoalesced_cycle", naive_s),
        "link": "tcp loopback, simulator in its own thread",
    }
    result["ratio_p50"] = round(result["cycle_p50_ms"] / result["single_read_p50_ms"], 2)
    result["coalescing_speedup_p50"] = round(result["uncoalesced_cycle_p50_ms"] / result["cycle_p50_ms"], 1)
    return result
