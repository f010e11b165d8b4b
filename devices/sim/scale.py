"""``mes sim scale``: run a scale simulator on a pseudo-terminal or TCP port.

Examples::

    python -m devices.sim.scale --protocol mtsics --pty
    python -m devices.sim.scale --protocol aandd --tcp 4001 --baud 2400 --rate 10
    python -m devices.sim.scale --pty --link /tmp/scale0 --faults unstable,split,garbage=0.05

On start it prints one line with the port to give the driver (the pty path,
or ``socket://127.0.0.1:PORT``), then serves until interrupted or until
``--duration`` seconds have passed. The weight can be changed at run time
only programmatically (:func:`create_simulator` and the simulator's
``balance``); the CLI sets the initial state.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from devices.sim.aandd import AandDSimulator
from devices.sim.faults import FaultPlan, parse_fault_spec
from devices.sim.model import BalanceModel
from devices.sim.mtsics import MtSicsSimulator
from devices.sim.runner import stop_on_signals, wait_for_stop
from devices.sim.server import SimulatorServer

__all__ = ["PROTOCOLS", "build_parser", "create_simulator", "main", "run"]

PROTOCOLS: dict[str, type[SimulatorServer]] = {
    "mtsics": MtSicsSimulator,
    "aandd": AandDSimulator,
}


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def build_parser(prog: str = "mes sim scale") -> argparse.ArgumentParser:
    """The argument parser (exposed so the ``mes`` CLI can embed it)."""
    parser = argparse.ArgumentParser(prog=prog, description="Simulate a laboratory balance.")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="mtsics")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal")
    where.add_argument("--tcp", type=int, metavar="PORT", help="serve on TCP PORT (0 = any free)")
    parser.add_argument("--host", default="127.0.0.1", help="TCP address (default 127.0.0.1)")
    parser.add_argument("--link", metavar="PATH", help="with --pty: keep a symlink PATH to the pty")
    parser.add_argument("--baud", type=int, default=9600, help="pace output at this baud (0 = unpaced)")
    parser.add_argument("--bits-per-char", type=float, default=10.0, help="10 for 8N1 or 7E1")
    parser.add_argument("--weight", type=_decimal, default=Decimal("0"), help="load on the pan")
    parser.add_argument("--unit", default="g")
    parser.add_argument("--decimals", type=int, default=2)
    parser.add_argument("--capacity", type=_decimal, default=Decimal("220"))
    parser.add_argument("--rate", type=float, default=10.0, help="aandd: frames per second (0 = line rate)")
    parser.add_argument(
        "--faults",
        default="",
        help="comma list: unstable, overload, underload, busy, split, "
        "and garbage|partial|disconnect|es|et|el[=probability]",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for random faults")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser


def create_simulator(
    protocol: str,
    *,
    balance: BalanceModel | None = None,
    faults: str | FaultPlan = "",
    baud: int = 9600,
    bits_per_char: float = 10.0,
    rate_hz: float = 10.0,
    seed: int | None = None,
) -> SimulatorServer:
    """Build a simulator for ``protocol`` with balance conditions and faults applied."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(sorted(PROTOCOLS))}")
    balance = balance or BalanceModel()
    if isinstance(faults, FaultPlan):
        plan = faults
    else:
        conditions, split, probabilities = parse_fault_spec(faults)
        plan = FaultPlan(split=split, probabilities=probabilities, seed=seed)
        if "unstable" in conditions:
            balance.set_unstable(True)
        if "busy" in conditions:
            balance.set_busy(True)
        if "overload" in conditions:
            balance.set_overload()
        if "underload" in conditions:
            balance.set_underload()
    if protocol == "aandd":
        return AandDSimulator(balance, baud=baud, bits_per_char=bits_per_char, faults=plan, rate_hz=rate_hz)
    return MtSicsSimulator(balance, baud=baud, bits_per_char=bits_per_char, faults=plan)


async def run(
    args: argparse.Namespace,
    on_ready: Callable[[SimulatorServer], None] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve as ``args`` say until interrupted, ``stop`` is set or ``args.duration`` elapses."""
    balance = BalanceModel(
        load=args.weight, unit=args.unit, decimals=args.decimals, capacity=args.capacity
    )
    sim = create_simulator(
        args.protocol,
        balance=balance,
        faults=args.faults,
        baud=args.baud,
        bits_per_char=args.bits_per_char,
        rate_hz=args.rate,
        seed=args.seed,
    )
    if args.pty:
        url = await sim.start_pty(link=args.link)
    else:
        url = await sim.start_tcp(args.tcp, host=args.host)
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        pacing = f"{args.baud} baud" if args.baud else "unpaced"
        print(f"{sim.protocol} scale simulator listening on {url} ({pacing})", flush=True)
        sim.on_url_change = lambda new: print(f"{sim.protocol} scale simulator now on {new}", flush=True)
        if on_ready is not None:
            on_ready(sim)
        try:
            await wait_for_stop(stop, args.duration)
        finally:
            await sim.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.link and not args.pty:
        parser.error("--link needs --pty")
    if args.baud < 0:
        parser.error("--baud must be >= 0")
    try:
        parse_fault_spec(args.faults)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
