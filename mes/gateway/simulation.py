"""Simulated plant equipment for ``mes demo`` and the browser tests (``MES_SIMULATION=true``).

Two MT-SICS balances served over TCP loopback at 9600 baud (``devices.sim``), matching the
example recipe's weigh steps, and a PackML packaging line over OPC UA (``LINE-1``). They
run in the gateway's own event loop and are read by the real drivers, exactly like the
devices of a plant; only the load on the pan is set from outside, through
``POST /api/v1/simulation/devices/<device_id>`` (:meth:`Simulation.set_load`).

Never enabled in a plant: the simulation endpoint lets anyone with the operator permission
decide what a scale shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from mes.gateway.config import DeviceSpec

__all__ = ["LINE_DEVICE", "SIMULATED_SCALES", "SimulatedScale", "Simulation"]

log = logging.getLogger("mes.gateway.simulation")


@dataclass(frozen=True)
class SimulatedScale:
    """A simulated balance and how it is registered as equipment."""

    device_id: str
    equipment_class: str
    description: str
    unit: str
    decimals: int
    capacity: str
    min_weight: str
    readability: str
    accuracy_class: str
    model: str
    serial_number: str


#: The demo's scales: a floor scale and a bench balance, as the example recipe asks for.
SIMULATED_SCALES: tuple[SimulatedScale, ...] = (
    SimulatedScale("SCALE-FLOOR-01", "Floor scale 150 kg, class III", "Floor scale 150 kg, d = 10 g (simulated)",
                   "kg", 2, "150", "0.2", "0.01", "III", "SIM-FLOOR-150", "FS150-0001"),
    SimulatedScale("SCALE-BENCH-01", "Bench balance 6 kg, class II", "Bench balance 6 kg, d = 0.1 g (simulated)",
                   "g", 1, "6100", "5", "0.1", "II", "SIM-BENCH-6100", "BB6-0001"),
)
#: The simulated packaging line (an OPC UA PackML server) and its MES line.
LINE_DEVICE = "LINE-1"
MASS_UNITS = {"mg": Decimal("0.001"), "g": Decimal(1), "kg": Decimal(1000)}


class Simulation:
    """Start/stop the simulators in the gateway's loop; give the gateway their device specs."""

    def __init__(self, *, scales: tuple[SimulatedScale, ...] = SIMULATED_SCALES, line: bool = True,
                 baud: int = 9600, machine: Any = None) -> None:
        self.scale_specs = scales
        self.line = line
        self.baud = baud
        self.machine = machine
        self.scales: dict[str, Any] = {}  # device id -> MtSicsSimulator
        self.line_sim: Any = None
        self._ports: dict[str, int] = {}  # device id -> TCP port of an unplugged scale

    def has(self, device_id: str) -> bool:
        """True for a device this simulation serves."""
        return device_id in self.scales or (device_id == LINE_DEVICE and self.line_sim is not None)

    async def start(self) -> list[DeviceSpec]:
        """Serve every simulator on loopback; return the specs the gateway runs."""
        from devices.sim import BalanceModel, MtSicsSimulator

        specs: list[DeviceSpec] = []
        for s in self.scale_specs:
            model = BalanceModel(load=0, unit=s.unit, decimals=s.decimals, capacity=s.capacity, model=s.model,
                                 serial_number=s.serial_number, firmware="1.0.0")
            sim = MtSicsSimulator(model, baud=self.baud)
            url = await sim.start_tcp()
            self.scales[s.device_id] = sim
            specs.append(DeviceSpec(device_id=s.device_id, driver="mtsics", config={"port": url}, mode="stream",
                                    kind="scale"))
        if self.line:
            from devices.sim.opcua import OpcUaSimulator, PackMLMachine

            machine = self.machine or PackMLMachine(auto=True, acting_s=1.0, item_interval_s=0.5, defect_every=40,
                                                    execute_s=90.0, held_s=15.0)
            self.line_sim = OpcUaSimulator(machine, tick_s=0.1)
            await self.line_sim.start()
            config = self.line_sim.driver_config(["state", "processed", "defective", "stop_reason", "speed"])
            specs.append(DeviceSpec(device_id=LINE_DEVICE, driver="opcua", config=config, mode="packml",
                                    kind="line", line=LINE_DEVICE, interval_s=1.0, emit_every_s=1.0))
        log.info("simulated devices: %s", ", ".join(s.device_id for s in specs))
        return specs

    async def stop(self) -> None:
        """Stop every simulator."""
        for sim in self.scales.values():
            await sim.stop()
        if self.line_sim is not None:
            await self.line_sim.stop()

    async def set_connected(self, device_id: str, connected: bool) -> None:
        """Unplug a simulated scale (stop serving, drop the link) or plug it back in on the same port."""
        sim = self.scales[device_id]
        if not connected and sim.url is not None and sim._server is not None:
            self._ports[device_id] = int(sim.url.rsplit(":", 1)[1])
            await sim.stop()
        elif connected and sim._server is None:
            await sim.start_tcp(port=self._ports.get(device_id, 0))

    def set_load(self, device_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Put ``payload["load"]`` (``unit``) on a simulated scale's pan; ``unstable`` makes it move."""
        from mes.gateway.runner import outcome

        sim = self.scales.get(device_id)
        if sim is None:
            return outcome(False, 404, "not-found", f"{device_id} is not a simulated scale.")
        unit = str(payload.get("unit") or sim.balance.unit)
        if unit not in MASS_UNITS:
            return outcome(False, 422, "validation-failed", f"unit must be one of {', '.join(MASS_UNITS)}.",
                           field="unit")
        try:
            load = Decimal(str(payload.get("load")))
            if not load.is_finite():
                raise InvalidOperation
        except (InvalidOperation, ValueError):
            return outcome(False, 422, "validation-failed", "load must be a decimal number such as \"1.234\".",
                           field="load")
        in_balance_unit = load * MASS_UNITS[unit] / MASS_UNITS[sim.balance.unit]
        unstable = bool(payload.get("unstable", False))
        sim.balance.set_weight(in_balance_unit)
        quantum = Decimal(1).scaleb(-sim.balance.decimals)
        sim.balance.set_unstable(unstable, noise=quantum * 5 if unstable else None)
        return outcome(True, detail=f"{device_id} loaded with {load} {unit}.", device_id=device_id,
                       load=str(load), unit=unit, unstable=unstable,
                       display={"value": str(in_balance_unit), "unit": sim.balance.unit})
