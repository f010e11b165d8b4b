"""OPC UA driver: value conversion, configuration, the asyncua packaging-line simulator
(PackML, subscriptions, SignAndEncrypt, an untrusted certificate, server gone and back),
an independent node-opcua peer, and the conformance kit.

Building an asyncua server takes seconds, so one simulator serves the whole
module from a background thread; tests drive its machine through
``Line.call`` / ``Line.command`` and never assume the state another test left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from asyncua import ua
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devices.drivers.opcua import (
    OpcUaDriver,
    PackMLCommand,
    PackMLState,
    PackMLStatus,
    SecurityRejected,
    decode_datavalue,
    encode_datavalue,
    sample_from_datavalue,
    unsigned_counter,
)
from devices.errors import (
    ConfigurationError,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    ProtocolError,
)
from devices.reading import Reading, ReadingStatus
from devices.registry import BUILTIN_DRIVERS, DriverRegistry
from devices.sim import SimulatorThread
from devices.sim.opcua import (
    NAMESPACE_URI,
    CertificateFiles,
    OpcUaSimulator,
    PackMLMachine,
    build_parser,
    main,
    make_certificate,
)
from devices.sim.server import SimulatorServer
from devices.testkit import LinkedDriverConformance, check_reading
from tests.devices.helpers import closed_tcp_port, run
from tests.devices.peers.runner import LazyPeer, NodePeer

T = TypeVar("T")
S, C = PackMLState, PackMLCommand
CLIENT_URI = "urn:open-mes:test-client"


# ------------------------------------------------------------------ fixtures
@dataclass(frozen=True)
class Pki:
    server: CertificateFiles
    client: CertificateFiles
    rogue: CertificateFiles
    trust: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Test certificates made with `cryptography`; the simulator trusts `client`, not `rogue`."""
    folder = tmp_path_factory.mktemp("pki")
    server = make_certificate(folder, "sim-server", "urn:open-mes:sim:opcua-server", server=True)
    client = make_certificate(folder, "client", CLIENT_URI)
    rogue = make_certificate(folder, "rogue", CLIENT_URI)
    trust = folder / "trusted"
    trust.mkdir()
    shutil.copy(client.certificate, trust / client.certificate.name)
    return Pki(server, client, rogue, trust)


@dataclass
class Line:
    """The module's simulator, running in its own thread and event loop."""

    sim: OpcUaSimulator
    thread: SimulatorThread

    async def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn()`` in the simulator's loop, without blocking this test's loop."""
        return cast(T, await asyncio.to_thread(self.thread.call, fn, 30.0))

    async def command(self, command: PackMLCommand, reason: int = 0) -> bool:
        return await self.call(lambda: self.sim.command(command, reason))

    def fresh_machine(self, **kwargs: Any) -> PackMLMachine:
        """Give the line a new machine (thread-safe: the ticker picks it up)."""
        kwargs.setdefault("acting_s", 0.05)
        kwargs.setdefault("item_interval_s", 0.02)
        kwargs.setdefault("defect_every", 5)
        machine = PackMLMachine(**kwargs)
        self.sim.machine = machine
        return machine


@pytest.fixture(scope="module")
def line(pki: Pki) -> Iterator[Line]:
    """A packaging-line simulator with a None and a Basic256Sha256/SignAndEncrypt endpoint."""
    sim = OpcUaSimulator(
        PackMLMachine(acting_s=0.05, item_interval_s=0.02, defect_every=5),
        tick_s=0.02,
        secure=True,
        allow_none=True,
        certificate=pki.server,
        trust_dir=pki.trust,
    )
    # SimulatorThread needs only protocol/start_tcp/stop, which the OPC UA simulator has.
    thread = SimulatorThread(cast(SimulatorServer, sim), link="tcp")
    thread.start(timeout=120)
    try:
        yield Line(sim, thread)
    finally:
        thread.stop(timeout=30)


def line_config(line: Line, names: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    extra.setdefault("reconnect_initial_s", 0.1)
    extra.setdefault("reconnect_max_s", 0.5)
    extra.setdefault("timeout_s", 5.0)
    return line.sim.driver_config(names, **extra)


def secure(pki: Pki, who: CertificateFiles, **extra: Any) -> dict[str, Any]:
    return {
        "security": {
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "certificate": str(who.certificate),
            "private_key": str(who.private_key),
            "server_certificate": str(pki.server.certificate),
            **extra,
        }
    }


@contextlib.asynccontextmanager
async def connected(config: dict[str, Any], device_id: str = "LINE-1") -> AsyncIterator[OpcUaDriver]:
    async with OpcUaDriver(device_id, config) as driver:
        yield driver


async def next_matching(
    sub: Any, predicate: Callable[[str, Reading], bool], timeout: float = 20.0
) -> tuple[str, Reading]:
    """The next subscription change that satisfies ``predicate`` (event-driven)."""
    async with asyncio.timeout(timeout):
        async for name, reading in sub:
            if predicate(name, reading):
                return name, reading
    raise AssertionError("subscription ended")


async def state_reached(sub: Any, state: PackMLState) -> Reading:
    _, reading = await next_matching(sub, lambda n, r: n == "state" and r.value == int(state))
    return reading


# ---------------------------------------------------------------- conversion
def dv(value: Any, vtype: ua.VariantType, status: int = 0) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vtype), StatusCode=ua.StatusCode(status))


@pytest.mark.parametrize(
    ("value", "vtype", "expected"),
    [
        (0.1, ua.VariantType.Float, "0.1"),
        (21.5, ua.VariantType.Float, "21.5"),
        (0.1, ua.VariantType.Double, "0.1"),
        (1234.5678, ua.VariantType.Double, "1234.5678"),
        (-7, ua.VariantType.Int32, "-7"),
        (2**64 - 1, ua.VariantType.UInt64, str(2**64 - 1)),
        (200, ua.VariantType.Byte, "200"),
        (True, ua.VariantType.Boolean, "1"),
        (False, ua.VariantType.Boolean, "0"),
    ],
)
def test_numeric_variants_become_exact_decimals(value: Any, vtype: ua.VariantType, expected: str) -> None:
    sample = sample_from_datavalue(dv(value, vtype), "1")
    assert sample.status is ReadingStatus.OK
    assert isinstance(sample.value, Decimal) and str(sample.value) == expected


def test_decimals_round_half_even_and_non_finite_values() -> None:
    assert str(sample_from_datavalue(dv(12.25, ua.VariantType.Double), "°C", 1).value) == "12.2"
    assert str(sample_from_datavalue(dv(12.35, ua.VariantType.Double), "°C", 1).value) == "12.4"
    assert str(sample_from_datavalue(dv(7, ua.VariantType.Int16), "pcs", 2).value) == "7.00"
    assert sample_from_datavalue(dv(math.nan, ua.VariantType.Double), "°C").status is ReadingStatus.FAULT
    assert sample_from_datavalue(dv(math.inf, ua.VariantType.Float), "°C").status is ReadingStatus.OVERLOAD
    assert sample_from_datavalue(dv(-math.inf, ua.VariantType.Double), "°C").status is ReadingStatus.UNDERLOAD


def test_bad_and_uncertain_status_codes_are_faults_without_value() -> None:
    bad = sample_from_datavalue(dv(1.0, ua.VariantType.Double, ua.StatusCodes.BadSensorFailure), "°C")
    uncertain = sample_from_datavalue(dv(1.0, ua.VariantType.Double, ua.StatusCodes.UncertainLastUsableValue), "°C")
    assert (bad.status, bad.value) == (ReadingStatus.FAULT, None)
    assert (uncertain.status, uncertain.value) == (ReadingStatus.FAULT, None)


@pytest.mark.parametrize(
    "value",
    [
        ua.DataValue(ua.Variant("text", ua.VariantType.String)),
        ua.DataValue(ua.Variant([1, 2], ua.VariantType.Int32)),
        ua.DataValue(),
    ],
)
def test_non_numeric_values_are_protocol_errors(value: ua.DataValue) -> None:
    with pytest.raises(ProtocolError):
        sample_from_datavalue(value, "1")


def test_datavalue_encoding_round_trip_and_garbage() -> None:
    source = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    value = ua.DataValue(ua.Variant(21.5, ua.VariantType.Float), SourceTimestamp=source)
    raw = encode_datavalue(value)
    back = decode_datavalue(raw)
    assert back.Value.Value == 21.5 and back.SourceTimestamp == source
    for garbage in (b"", raw + b"\x00", raw[:-1], b"\xff\xff\xff"):
        with pytest.raises(ValueError):
            decode_datavalue(garbage)


# -------------------------------------------------------------------- PackML
def test_packml_state_numbers_are_the_packtags_ones() -> None:
    assert [(s.name, int(s)) for s in (S.STOPPED, S.IDLE, S.EXECUTE, S.HELD, S.ABORTED, S.COMPLETE)] == [
        ("STOPPED", 2), ("IDLE", 4), ("EXECUTE", 6), ("HELD", 11), ("ABORTED", 9), ("COMPLETE", 17),
    ]
    assert S.STARTING.acting and not S.EXECUTE.acting and S.UNHOLDING.label == "Unholding"
    assert (int(C.RESET), int(C.START), int(C.HOLD), int(C.ABORT)) == (1, 2, 4, 8)


def test_packml_machine_transitions_and_counters() -> None:
    machine = PackMLMachine(acting_s=0.1, item_interval_s=0.1, defect_every=3)
    assert machine.state is S.STOPPED
    assert not machine.command(C.START)  # Stopped does not accept Start
    assert machine.command(C.RESET) and machine.state is S.RESETTING
    machine.tick(0.1)
    assert machine.state is S.IDLE
    machine.command(C.START)
    machine.tick(0.1)
    assert machine.state is S.EXECUTE
    machine.tick(0.65)
    assert (machine.processed, machine.defective) == (6, 2)
    assert machine.snapshot().speed == pytest.approx(600.0)
    assert machine.command(C.HOLD, reason=42)
    assert (machine.state, machine.stop_reason) == (S.HOLDING, 42)
    machine.tick(0.1)
    machine.tick(1.0)  # no production while held
    assert (machine.state, machine.processed, machine.snapshot().speed) == (S.HELD, 6, 0.0)
    machine.command(C.UNHOLD)
    machine.tick(0.1)
    assert (machine.state, machine.stop_reason) == (S.EXECUTE, 0)
    assert machine.command(C.ABORT) and machine.state is S.ABORTING
    machine.tick(0.1)
    assert machine.state is S.ABORTED and not machine.command(C.RESET)
    machine.command(C.CLEAR)
    machine.tick(0.1)
    assert machine.state is S.STOPPED


def test_packml_machine_auto_cycle_and_batches() -> None:
    machine = PackMLMachine(acting_s=0.1, item_interval_s=0.1, auto=True, execute_s=0.5, held_s=0.2, batch_size=8)
    seen: list[PackMLState] = []
    for _ in range(200):
        machine.tick(0.05)
        if not seen or seen[-1] is not machine.state:
            seen.append(machine.state)
    for state in (S.RESETTING, S.IDLE, S.STARTING, S.EXECUTE, S.HOLDING, S.HELD, S.UNHOLDING, S.COMPLETING, S.COMPLETE):
        assert state in seen, state
    assert machine.processed >= 8


# ------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "bad",
    [
        {"url": "http://127.0.0.1:4840", "nodes": {"a": {"node_id": "i=2258", "unit": "1"}}},
        {"url": "opc.tcp://h:4840", "nodes": {"a": {"node_id": "i=2258"}}},  # no unit
        {"url": "opc.tcp://h:4840", "nodes": {"a": {"node_id": "i=1", "path": "Objects", "unit": "1"}}},
        {"url": "opc.tcp://h:4840", "nodes": {"a": {"unit": "1"}}},
        {"url": "opc.tcp://h:4840", "nodes": {"a": {"path": "Objects/nope:Line", "unit": "1"}}},
        {"url": "opc.tcp://h:4840", "nodes": {"a": {"path": "Objects//Line", "unit": "1"}}},
        {"url": "opc.tcp://h:4840", "nodes": {"a": {"node_id": "i=1", "unit": "1"}}, "primary": "b"},
        {"url": "opc.tcp://h:4840", "nodes": {"a": {"node_id": "i=1", "unit": "1"}},
         "packml": {"state": "a", "processed": "a", "defective": "zz"}},
        {"url": "opc.tcp://h:4840", "nodes": {"a": {"node_id": "i=1", "unit": "1"}},
         "security": {"certificate": "c.der"}},
        {"url": "opc.tcp://h:4840", "nodes": {"a": {"node_id": "i=1", "unit": "1"}},
         "security": {"certificate": "c", "private_key": "k", "policy": "Basic128Rsa15"}},
        {"url": "opc.tcp://h:4840", "nodes": {}},
    ],
)
def test_bad_configuration_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        OpcUaDriver("X", bad)


def test_missing_certificate_file_is_a_configuration_error(tmp_path: Path) -> None:
    config = {
        "url": f"opc.tcp://127.0.0.1:{closed_tcp_port()}",
        "nodes": {"a": {"node_id": "i=2258", "unit": "1"}},
        "security": {"certificate": str(tmp_path / "none.der"), "private_key": str(tmp_path / "none.pem")},
    }

    async def body() -> None:
        with pytest.raises(ConfigurationError):
            await OpcUaDriver("X", config).connect()

    run(body())


# ------------------------------------------------------ against the simulator
def test_read_nodes_in_one_call_with_units_raw_and_times(line: Line) -> None:
    async def body() -> None:
        async with connected(line_config(line, primary="temperature")) as drv:
            first = await drv.read()
            check_reading(first, "LINE-1")
            assert first.unit == "°C" and isinstance(first.value, Decimal)
            assert decode_datavalue(first.raw).Value.VariantType is ua.VariantType.Double
            readings = await drv.read_nodes()
            assert list(readings) == list(drv.nodes)
            assert {r.timestamp for r in readings.values()} == {readings["state"].timestamp}  # one Read call
            sequences = [r.sequence for r in readings.values()]
            assert sequences == list(range(first.sequence + 1, first.sequence + 1 + len(readings)))
            for reading in readings.values():
                check_reading(reading, "LINE-1")
            assert readings["processed"].unit == "pcs" and readings["speed"].unit == "1/min"
            assert decode_datavalue(readings["speed"].raw).Value.VariantType is ua.VariantType.Float

    run(body())


def test_node_id_browse_path_alias_and_nsu_resolve_to_the_same_node(line: Line) -> None:
    sim = line.sim
    config = {
        "url": sim.url,
        "namespaces": {"line": NAMESPACE_URI},
        "nodes": {
            "by_id": {"node_id": sim.node_id("state"), "unit": "1"},
            "by_path": {"path": sim.browse_path("state"), "unit": "1"},
            "by_alias": {"path": sim.browse_path("state", alias="line"), "unit": "1"},
            "by_nsu": {"node_id": f"nsu={NAMESPACE_URI};s=PackagingLine.Status.StateCurrent", "unit": "1"},
        },
    }

    async def body() -> None:
        async with connected(config) as drv:
            values = {name: r.value for name, r in (await drv.read_nodes()).items()}
            assert len(set(values.values())) == 1
            assert await drv.resolve(sim.browse_path("state", alias="line")) == sim.node_id("state")
            assert await drv.resolve("Root/Objects") == "i=85"
            children = await drv.browse("Objects/line:PackagingLine")
            assert [c.browse_name for c in children] == [f"{sim.namespace_index}:{n}" for n in ("Status", "Admin", "Process")]
            assert all(c.node_class == "Object" for c in children)
            leaves = await drv.browse(children[0].node_id)
            assert {c.display_name for c in leaves} >= {"StateCurrent", "UnitModeCurrent", "CurMachSpeed"}
            with pytest.raises(ProtocolError):
                await drv.resolve("Objects/line:PackagingLine/line:NoSuchThing")

    run(body())


def test_a_missing_node_fails_the_connect(line: Line) -> None:
    async def body() -> None:
        for nodes in (
            {"ghost": {"node_id": f"ns={line.sim.namespace_index};s=No.Such.Node", "unit": "1"}},
            {"ghost": {"path": "Objects/2:Nowhere", "unit": "1"}},
            {"folder": {"path": f"Objects/{line.sim.namespace_index}:PackagingLine", "unit": "1"}},
            {"ghost": {"node_id": "nsu=urn:no-such-namespace;s=X", "unit": "1"}},
        ):
            driver = OpcUaDriver("X", {"url": line.sim.url, "nodes": nodes})
            with pytest.raises(ProtocolError):
                await driver.connect()
            assert not driver.is_connected

    run(body())


def test_identify_reads_the_build_info(line: Line) -> None:
    async def body() -> None:
        async with connected(line_config(line, serial_number="LINE-SN-7")) as drv:
            identity = await drv.identify()
            assert (identity.make, identity.model, identity.serial_number) == (
                "open-mes", "Packaging line simulator", "LINE-SN-7",
            )
            assert identity.firmware == "1.0 (build 1)" and "security" not in identity.details

    run(body())


def test_subscription_delivers_changes(line: Line) -> None:
    async def body() -> None:
        machine = line.fresh_machine(state=S.STOPPED)
        async with connected(line_config(line)) as drv:
            async with drv.subscribe(["temperature"], publishing_interval_ms=20) as sub:
                name, initial = await sub.next(20)  # the current value comes first
                assert name == "temperature" and initial.unit == "°C"
                for target in ("180.125", "181.5"):
                    machine.temperature_override = float(target)
                    _, reading = await next_matching(sub, lambda n, r, t=target: r.value == Decimal(t))
                    check_reading(reading, "LINE-1")
                    assert decode_datavalue(reading.raw).Value.Value == float(target)
                assert sub.dropped == 0
            with pytest.raises(ConfigurationError):
                async with drv.subscribe(["nope"]):
                    pass

    run(body())


def test_packml_state_and_counters_for_oee(line: Line) -> None:
    async def body() -> None:
        line.fresh_machine(state=S.STOPPED)
        async with connected(line_config(line)) as drv:
            async with drv.subscribe(["state", "processed"], publishing_interval_ms=20) as sub:
                await line.command(C.RESET)
                await state_reached(sub, S.IDLE)
                status = await drv.read_packml()
                assert isinstance(status, PackMLStatus) and status.state is S.IDLE
                assert await line.command(C.START)
                await state_reached(sub, S.EXECUTE)
                await next_matching(sub, lambda n, r: n == "processed" and r.value is not None and r.value >= 12)
                running = await drv.read_packml()
                assert running.state is S.EXECUTE and running.processed >= 12
                assert running.defective == running.processed // 5 and running.good == running.processed - running.defective
                assert running.stop_reason == 0 and running.timestamp.tzinfo is not None
                assert set(running.readings) == {"state", "processed", "defective", "stop_reason"}
                assert await line.command(C.HOLD, reason=42)
                await state_reached(sub, S.HELD)
                held = await drv.read_packml()
                assert (held.state, held.stop_reason) == (S.HELD, 42)
                assert held.processed >= running.processed
                again = await drv.read_packml()  # nothing is produced while held
                assert (again.processed, again.defective) == (held.processed, held.defective)
                assert not await line.command(C.START)  # Held does not accept Start
                await line.command(C.UNHOLD)
                await state_reached(sub, S.EXECUTE)
                assert (await drv.read_packml()).stop_reason == 0

    run(body(), timeout=60)


def test_a_wrapped_int32_counter_is_read_as_the_unsigned_count(line: Line) -> None:
    """Issue 16: PackTags counters are Int32; past 2^31 - 1 the PLC's counter reads negative
    while it goes on counting. It is the unsigned count, not a protocol error."""

    async def body() -> None:
        machine = line.fresh_machine(state=S.STOPPED)
        machine.processed, machine.defective = 2**31 + 5, 7
        async with connected(line_config(line)) as drv:
            deadline = time.monotonic() + 10
            while (status := await drv.read_packml()).processed != 2**31 + 5:
                assert time.monotonic() < deadline, f"the wrapped counter was never published: {status}"
                await asyncio.sleep(0.02)
            assert status.defective == 7 and status.readings["processed"].value == Decimal(-(2**31) + 5)

    run(body())


def test_unsigned_counter_only_for_signed_integer_types() -> None:
    def raw(value: Any, vtype: ua.VariantType) -> bytes:
        return encode_datavalue(ua.DataValue(ua.Variant(value, vtype)))

    assert unsigned_counter(-1, raw(-1, ua.VariantType.Int32), "processed") == 2**32 - 1
    assert unsigned_counter(-(2**31), raw(-(2**31), ua.VariantType.Int32), "processed") == 2**31
    assert unsigned_counter(-2, raw(-2, ua.VariantType.Int16), "processed") == 2**16 - 2
    with pytest.raises(ProtocolError, match="negative"):
        unsigned_counter(-5, raw(-5.0, ua.VariantType.Double), "processed")
    with pytest.raises(ProtocolError, match="negative"):
        unsigned_counter(-5, b"junk", "defective")


def test_read_packml_refuses_what_is_not_packml(line: Line) -> None:
    async def body() -> None:
        config = line_config(line)
        async with connected({k: v for k, v in config.items() if k != "packml"}) as drv:
            with pytest.raises(ConfigurationError):
                await drv.read_packml()
        bogus = line_config(line)
        bogus["packml"]["state"] = "temperature"  # a Double around 175 °C is no PackML state
        async with connected(bogus) as drv:
            with pytest.raises(ProtocolError):
                await drv.read_packml()

    run(body())


def test_sign_and_encrypt_works(line: Line, pki: Pki) -> None:
    async def body() -> None:
        async with connected(line_config(line, **secure(pki, pki.client)), "LINE-SEC") as drv:
            reading = await drv.read()
            check_reading(reading, "LINE-SEC")
            assert (await drv.identify()).details["security"] == "Basic256Sha256/SignAndEncrypt"
            assert drv._client is not None
            policy = drv._client.security_policy
            assert policy.URI.endswith("#Basic256Sha256") and policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
            status = await drv.read_packml()
            assert isinstance(status.state, PackMLState)

    run(body())


def test_untrusted_client_certificate_is_refused(line: Line, pki: Pki) -> None:
    async def body() -> None:
        driver = OpcUaDriver("LINE-ROGUE", line_config(line, **secure(pki, pki.rogue)))
        with pytest.raises(SecurityRejected) as info:
            await driver.connect()
        error = info.value
        assert isinstance(error, DeviceFault) and not error.retryable
        assert error.status == "BadCertificateUntrusted"
        assert "trust list" in str(error) and "CN=rogue" in str(error) and error.device_id == "LINE-ROGUE"
        assert not driver.is_connected

    run(body())


def test_a_wrong_pinned_server_certificate_is_named(line: Line, pki: Pki) -> None:
    async def body() -> None:
        config = line_config(line, **secure(pki, pki.client), timeout_s=1.5)
        config["security"]["server_certificate"] = str(pki.rogue.certificate)  # not the server's
        with pytest.raises(SecurityRejected, match="pinned server certificate") as info:
            await OpcUaDriver("LINE-PIN", config).connect()
        assert "CN=sim-server" in str(info.value) and not info.value.retryable

    run(body())


def test_application_uri_must_match_the_certificate(line: Line, pki: Pki) -> None:
    async def body() -> None:
        config = line_config(line, **secure(pki, pki.client, application_uri="urn:somebody:else"))
        with pytest.raises(SecurityRejected) as info:
            await OpcUaDriver("LINE-URI", config).connect()
        assert info.value.status == "BadCertificateUriInvalid"

    run(body())


def test_server_gone_and_back_reconnects_with_backoff(line: Line) -> None:
    async def body() -> None:
        machine = line.fresh_machine(state=S.STOPPED)
        config = line_config(line, primary="temperature", reconnect_initial_s=0.2, reconnect_max_s=0.8)
        async with connected(config) as drv:
            async with drv.subscribe(["temperature"], publishing_interval_ms=20) as sub:
                await sub.next(20)
                assert sub.attachments == 1
                await line.call(line.sim.go_away)
                try:
                    loop = asyncio.get_running_loop()
                    with pytest.raises(DeviceUnavailable):
                        await drv.read()  # the drop, or the fail-fast while reconnecting
                    t0 = loop.time()
                    with pytest.raises(DeviceUnavailable, match="reconnecting"):
                        await drv.read()
                    assert loop.time() - t0 < 1.0
                    with pytest.raises(DeviceTimeout):
                        await drv.wait_connected(timeout=1.0)  # nobody listening: stays down
                    assert not drv.link_up and drv._backoff.attempts >= 2  # backing off
                    assert isinstance(drv.last_error, DeviceUnavailable)
                finally:
                    await line.call(line.sim.come_back)
                await drv.wait_connected(timeout=30)
                assert drv.reconnects == 1 and drv.last_error is None
                check_reading(await drv.read(), "LINE-1")
                # The subscription was re-created on the new session and keeps delivering.
                await asyncio.wait_for(sub.attached.wait(), 20)
                assert sub.attachments == 2
                machine.temperature_override = 190.75
                _, reading = await next_matching(sub, lambda n, r: r.value == Decimal("190.75"))
                check_reading(reading, "LINE-1")

    run(body(), timeout=90)


def test_closing_ends_subscriptions(line: Line) -> None:
    async def body() -> None:
        drv = OpcUaDriver("LINE-C", line_config(line))
        await drv.connect()
        async with drv.subscribe(["state"]) as sub:
            await sub.next(20)
            await drv.close()
            assert [item async for item in sub] == []
            with pytest.raises(DeviceUnavailable):
                await sub.next(1)
        with pytest.raises(DeviceUnavailable):
            await drv.read_nodes()

    run(body())


def test_unreachable_server_is_unavailable() -> None:
    async def body() -> None:
        driver = OpcUaDriver("X", {"url": f"opc.tcp://127.0.0.1:{closed_tcp_port()}", "nodes": {"a": {"node_id": "i=2258", "unit": "1"}}})
        with pytest.raises(DeviceUnavailable) as info:
            await driver.connect()
        assert info.value.retryable

    run(body())


# --------------------------------------------------------------- conformance
class TestOpcUaConformance(LinkedDriverConformance):
    """The device conformance kit against the simulator (primary node: seal temperature)."""

    garbage_frames = (b"", b"\r\n", b"\x00\xff\xfe\x13\r\n", b"~~ not a frame ~~\r\n", b"\x01\x0c\x04abcd")

    @pytest.fixture
    def driver_factory(self, line: Line) -> Any:
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[OpcUaDriver]:
            config = line_config(line, primary="temperature", heartbeat_s=0.05)
            async with OpcUaDriver("CONF-UA", config) as driver:
                yield driver

        return factory

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        return {"url": f"opc.tcp://127.0.0.1:{closed_tcp_port()}", "nodes": {"a": {"node_id": "i=2258", "unit": "1"}}}


def test_registered_like_the_built_in_drivers() -> None:
    registry = DriverRegistry(builtins={**BUILTIN_DRIVERS, "opcua": "devices.drivers.opcua:OpcUaDriver"})
    assert registry.load("opcua") is OpcUaDriver
    assert not registry.create("opcua", "L", OpcUaDriver.example_config).is_connected


# ------------------------------------------------------------------------ CLI
def test_simulator_cli_arguments() -> None:
    args = build_parser().parse_args([])
    assert (args.port, args.host, args.secure) == (4840, "127.0.0.1", False)
    for bad in (["--trust", "/tmp"], ["--port", "-1"], ["--secure-only"], ["--tick", "0"]):
        with pytest.raises(SystemExit):
            main(bad)


def test_simulator_main_wires_arguments_and_prints_the_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI plumbing, with a stand-in simulator (the real one is the module fixture's)."""
    made: list[dict[str, Any]] = []

    class FakeSimulator:
        namespace_index = 2
        server_certificate = tmp_path / "sim-server.der"
        url = "opc.tcp://127.0.0.1:4999/open-mes/sim"

        def __init__(self, machine: PackMLMachine, **kwargs: Any) -> None:
            made.append({"machine": machine, **kwargs})

        async def start(self, port: int, host: str) -> str:
            made[-1]["bound"] = (host, port)
            return self.url

        async def stop(self) -> None:
            made[-1]["stopped"] = True

        def node_id(self, name: str) -> str:
            return f"ns=2;s=PackagingLine.Status.{name}"

    monkeypatch.setattr("devices.sim.opcua.OpcUaSimulator", FakeSimulator)
    argv = ["--port", "0", "--secure", "--pki", str(tmp_path), "--trust", str(tmp_path / "t"), "--duration", "0.01", "--no-auto"]
    assert main(argv) == 0
    (made_one,) = made
    assert made_one["secure"] and made_one["allow_none"] and made_one["stopped"]
    assert (made_one["pki_dir"], made_one["trust_dir"], made_one["bound"]) == (tmp_path, tmp_path / "t", ("127.0.0.1", 0))
    assert not made_one["machine"].auto
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"opcua simulator listening on {FakeSimulator.url} (security: None + Basic256Sha256/SignAndEncrypt)"
    assert NAMESPACE_URI in out[1] and "server certificate" in out[2] and "trust list" in out[2]


# -------------------------------------------------- independent peer (node)
@dataclass
class Peer:
    node: NodePeer
    url: str
    server_certificate: Path
    client: CertificateFiles
    rogue: CertificateFiles


@pytest.fixture(scope="module")
def peer_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LazyPeer, Path]]:
    """node-opcua with our certificate; it trusts `client` (its trust list), not `rogue`."""
    folder = tmp_path_factory.mktemp("uapeer")
    server = make_certificate(folder, "peer-server", "urn:open-mes:test:peer-server", server=True)
    client = make_certificate(folder, "client", CLIENT_URI)
    make_certificate(folder, "rogue", CLIENT_URI)
    server_pem = folder / "peer-server.crt.pem"
    cert = x509.load_der_x509_certificate(server.certificate.read_bytes())
    server_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    trusted = folder / "pki" / "trusted" / "certs"
    trusted.mkdir(parents=True)
    shutil.copy(client.certificate, trusted / "client.der")
    lazy = LazyPeer(
        "opcua_server.js", "0", str(folder / "pki"), str(server_pem), str(server.private_key),
        packages=("node-opcua-server",), workdir=folder,
    )
    yield lazy, folder
    lazy.close()


@pytest.fixture
def opcua_peer(peer_process: tuple[LazyPeer, Path]) -> Callable[[], Peer]:
    """Call it in the test: the running peer (a missing install fails the test, never skips)."""
    lazy, folder = peer_process

    def get() -> Peer:
        node = lazy.get()
        return Peer(
            node,
            f"opc.tcp://127.0.0.1:{node.port}/peer",
            folder / "peer-server.crt.pem",
            CertificateFiles(folder / "client.der", folder / "client.pem", CLIENT_URI),
            CertificateFiles(folder / "rogue.der", folder / "rogue.pem", CLIENT_URI),
        )

    return get


PEER_NS = "urn:open-mes:test:peer"


def peer_config(peer: Peer, **extra: Any) -> dict[str, Any]:
    return {
        "url": peer.url,
        "namespaces": {"peer": PEER_NS},
        "nodes": {
            "speed": {"path": "Objects/peer:Line/peer:Speed", "unit": "m/min"},
            "temperature": {"node_id": f"nsu={PEER_NS};s=Line.Temperature", "unit": "°C"},
            "state": {"path": "Objects/peer:Line/peer:State", "unit": "1"},
            "running": {"path": "Objects/peer:Line/peer:Running", "unit": "1"},
            "count": {"node_id": f"nsu={PEER_NS};s=Line.Count", "unit": "pcs"},
            "name": {"path": "Objects/peer:Line/peer:Name", "unit": "1"},
        },
        "timeout_s": 10.0,
        **extra,
    }


def test_peer_values_browse_and_identity(opcua_peer: Callable[[], Peer]) -> None:
    peer = opcua_peer()

    async def body() -> None:
        async with connected(peer_config(peer), "PEER") as drv:
            readings = await drv.read_nodes(["speed", "temperature", "state", "running"])
            assert {k: r.value for k, r in readings.items()} == {
                "speed": Decimal("12.5"), "temperature": Decimal("21.5"), "state": Decimal(6), "running": Decimal(1),
            }
            assert PackMLState(int(readings["state"].value)) is S.EXECUTE
            with pytest.raises(ProtocolError, match="not numeric"):
                await drv.read_nodes(["name"])
            children = {c.display_name for c in await drv.browse("Objects/peer:Line")}
            assert children >= {"Speed", "Temperature", "Count", "State", "Running", "Name"}
            identity = await drv.identify()
            assert (identity.make, identity.model) == ("node-opcua", "open-mes test peer")

    run(body(), timeout=60)


def test_peer_subscription_delivers_increasing_counts(opcua_peer: Callable[[], Peer]) -> None:
    peer = opcua_peer()

    async def body() -> None:
        async with connected(peer_config(peer), "PEER") as drv:
            async with drv.subscribe(["count"], publishing_interval_ms=50) as sub:
                values: list[Decimal] = []
                while len(values) < 4:
                    _, reading = await sub.next(20)
                    assert reading.value is not None
                    values.append(reading.value)
                assert values == sorted(values) and len(set(values)) == 4

    run(body(), timeout=60)


def test_peer_sign_and_encrypt_and_untrusted_certificate(opcua_peer: Callable[[], Peer]) -> None:
    peer = opcua_peer()

    def with_security(who: CertificateFiles) -> dict[str, Any]:
        return peer_config(
            peer,
            security={
                "certificate": str(who.certificate),
                "private_key": str(who.private_key),
                "server_certificate": str(peer.server_certificate),
            },
        )

    async def body() -> None:
        async with connected(with_security(peer.client), "PEER-SEC") as drv:
            check_reading(await drv.read(), "PEER-SEC")
            assert (await drv.read_nodes(["temperature"]))["temperature"].value == Decimal("21.5")
        with pytest.raises(SecurityRejected) as info:
            await OpcUaDriver("PEER-ROGUE", with_security(peer.rogue)).connect()
        assert not info.value.retryable and "CN=rogue" in str(info.value)

    run(body(), timeout=60)
