"""Scale simulators with fault injection, for tests, demos and benches.

* :class:`BalanceModel` – the weighing cell (load, zero, tare, motion, range).
* :class:`MtSicsSimulator` – a Mettler-Toledo balance speaking MT-SICS.
* :class:`AandDSimulator` – an A&D balance in stream mode.
* :class:`FaultPlan` / :class:`Fault` – link faults (garbage, partial, split,
  disconnect, ES/ET/EL) injected once, kept on, or drawn at random.
* :class:`SimulatorThread` – run any of them in a background thread.
* :mod:`devices.sim.scale` – the ``mes sim scale`` command line.

Serving happens over a real pseudo-terminal (``await sim.start_pty()``) or
TCP loopback (``await sim.start_tcp()``), paced at the simulated baud rate.
"""

from devices.sim.aandd import AandDSimulator
from devices.sim.faults import Fault, FaultPlan, parse_fault_spec
from devices.sim.model import BalanceModel, BalanceSnapshot
from devices.sim.mtsics import MtSicsSimulator
from devices.sim.server import Session, SimStats, SimulatorServer, SimulatorThread

__all__ = [
    "AandDSimulator",
    "BalanceModel",
    "BalanceSnapshot",
    "Fault",
    "FaultPlan",
    "MtSicsSimulator",
    "Session",
    "SimStats",
    "SimulatorServer",
    "SimulatorThread",
    "parse_fault_spec",
]
