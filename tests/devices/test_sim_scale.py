"""``mes sim scale`` (devices.sim.scale): arguments, simulator factory, serving."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from devices.drivers.aandd import AandDScale
from devices.drivers.mtsics import MtSicsScale
from devices.reading import ReadingStatus
from devices.sim import AandDSimulator, FaultPlan, MtSicsSimulator
from devices.sim.faults import Fault
from devices.sim.scale import build_parser, create_simulator, main
from devices.sim.scale import run as run_sim
from devices.sim.server import SimulatorServer
from tests.devices.helpers import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "argv",
    [
        [],  # neither --pty nor --tcp
        ["--pty", "--tcp", "0"],
        ["--tcp", "0", "--link", "/tmp/x"],
        ["--tcp", "0", "--faults", "wobbly"],
        ["--tcp", "0", "--weight", "heavy"],
        ["--tcp", "0", "--baud", "-5"],
        ["--tcp", "0", "--protocol", "modbus"],
    ],
)
def test_bad_arguments_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["--pty"])
    assert (args.protocol, args.baud, args.weight, args.unit, args.host) == ("mtsics", 9600, Decimal("0"), "g", "127.0.0.1")


def test_create_simulator_applies_conditions_and_faults() -> None:
    sim = create_simulator("mtsics", faults="unstable,busy,split,garbage=0.5", seed=1)
    assert isinstance(sim, MtSicsSimulator)
    assert sim.balance.unstable and sim.balance.busy and sim.faults.split
    assert sim.faults.probabilities == {Fault.GARBAGE: 0.5}
    over = create_simulator("aandd", faults="overload", baud=2400, rate_hz=5)
    assert isinstance(over, AandDSimulator) and over.rate_hz == 5 and over.baud == 2400
    assert over.balance.snapshot().status is ReadingStatus.OVERLOAD
    plan = FaultPlan()
    assert create_simulator("mtsics", faults=plan).faults is plan
    with pytest.raises(ValueError):
        create_simulator("modbus")


def test_run_serves_a_driver_until_stopped(capsys: pytest.CaptureFixture[str]) -> None:
    async def body() -> None:
        args = build_parser().parse_args(["--tcp", "0", "--weight", "42.5", "--baud", "38400"])
        stop = asyncio.Event()
        results: list[Decimal | None] = []

        async def use(sim: SimulatorServer) -> None:
            try:
                async with MtSicsScale("BAL", {"port": sim.url, "baudrate": 38400}) as scale:
                    results.append((await scale.read()).value)
            finally:
                stop.set()

        tasks: list[asyncio.Task[None]] = []
        code = await run_sim(args, on_ready=lambda sim: tasks.append(asyncio.create_task(use(sim))), stop=stop)
        await asyncio.gather(*tasks)
        assert code == 0 and results == [Decimal("42.50")]

    run(body())
    out = capsys.readouterr().out
    assert "mtsics scale simulator listening on socket://127.0.0.1:" in out and "38400 baud" in out


def test_main_prints_the_pty_path_and_stops_after_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--pty", "--duration", "0.05", "--baud", "0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("mtsics scale simulator listening on /dev/pts/") and line.endswith("(unpaced)")


def test_module_runs_as_a_program_and_stops_on_sigint() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "devices.sim.scale", "--protocol", "aandd", "--tcp", "0", "--rate", "50", "--weight", "1.25"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = line.split(" on ", 1)[1].split(" ", 1)[0]

            async def read_once() -> Decimal | None:
                async with AandDScale("AD", {"port": url, "baudrate": 9600}) as scale:
                    return (await scale.read()).value

            assert run(read_once()) == Decimal("1.25")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
