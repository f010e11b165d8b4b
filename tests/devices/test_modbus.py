"""Modbus TCP driver: decoding, configuration, the pymodbus simulator with every fault,
an independent peer (modbus-serial), the conformance kit and the cycle bench."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.drivers.modbus import (
    DataType,
    ModbusDeviceBusy,
    ModbusDeviceFailure,
    ModbusExceptionResponse,
    ModbusGatewayError,
    ModbusIllegalRequest,
    ModbusTcpDriver,
    Table,
    TagSpec,
    decode_registers,
    encode_value,
    exception_from_code,
    float_to_decimal,
    parse_tags,
    plan_blocks,
)
from devices.errors import (
    ConfigurationError,
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    ProtocolError,
)
from devices.reading import ReadingStatus
from devices.registry import BUILTIN_DRIVERS, DriverRegistry
from devices.sim.modbus import ModbusSimulator, RegisterMap, build_parser, main
from devices.testkit import LinkedDriverConformance, check_reading
from tests.devices.helpers import closed_tcp_port, run
from tests.devices.peers.runner import LazyPeer, NodePeer, require_peers

HR, IR, CO, DI = "holding_registers", "input_registers", "coils", "discrete_inputs"


def tag(function: str, address: int, type_: str, **extra: Any) -> dict[str, Any]:
    """A tag config; numeric tags get unit "1" unless given."""
    spec: dict[str, Any] = {"function": function, "address": address, "type": type_, **extra}
    if type_ != "bool":
        spec.setdefault("unit", "1")
    return spec


@contextlib.asynccontextmanager
async def served(
    regmap: RegisterMap | None = None, *, tags: dict[str, Any], **config: Any
) -> AsyncIterator[tuple[ModbusSimulator, ModbusTcpDriver]]:
    """A simulator on an ephemeral loopback port and a connected driver."""
    sim = ModbusSimulator(regmap or RegisterMap(200))
    async with sim.serve():
        config.setdefault("timeout_s", 2.0)
        config.setdefault("reconnect_initial_s", 0.05)
        config.setdefault("reconnect_max_s", 0.2)
        driver = ModbusTcpDriver("PLC-1", sim.driver_config(tags=tags, **config))
        await driver.connect()
        try:
            yield sim, driver
        finally:
            await driver.close()


# ------------------------------------------------------------------ decoding
ORDERS = [("big", "big"), ("little", "big"), ("big", "little"), ("little", "little")]


@pytest.mark.parametrize(("word_order", "byte_order"), ORDERS)
@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        ("int16", -1234),
        ("uint16", 65000),
        ("int32", -123456789),
        ("uint32", 4_000_000_000),
        ("int64", -(2**62) + 7),
        ("uint64", 2**64 - 1),
        ("float32", 21.5),
        ("float64", 1234.5678),
    ],
)
def test_encode_decode_round_trip(dtype: str, value: float, word_order: str, byte_order: str) -> None:
    words = encode_value(value, dtype, word_order=word_order, byte_order=byte_order)
    assert len(words) == DataType(dtype).registers
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    assert decode_registers(raw, dtype, word_order=word_order, byte_order=byte_order) == value


def test_word_and_byte_order_layouts() -> None:
    """ABCD, CDAB, BADC, DCBA for 0x11223344."""
    value = 0x11223344
    layouts = {
        ("big", "big"): [0x1122, 0x3344],
        ("little", "big"): [0x3344, 0x1122],
        ("big", "little"): [0x2211, 0x4433],
        ("little", "little"): [0x4433, 0x2211],
    }
    for (word, byte), words in layouts.items():
        assert encode_value(value, "uint32", word_order=word, byte_order=byte) == words


def test_decode_refuses_wrong_length() -> None:
    with pytest.raises(ValueError, match="2 register"):
        decode_registers(b"\x00\x01", "float32")
    with pytest.raises(ValueError):
        decode_registers(b"\x00\x01", "bool")


@pytest.mark.parametrize(
    ("value", "single", "text"),
    [
        (0.1, True, "0.1"),
        (struct.unpack(">f", struct.pack(">f", 0.1))[0], True, "0.1"),
        (21.5, True, "21.5"),
        (-0.1, True, "-0.1"),
        (1e10, True, "10000000000"),
        (0.1, False, "0.1"),
        (1234.5678, False, "1234.5678"),
        (1e16, False, "10000000000000000"),
    ],
)
def test_float_to_decimal_is_the_shortest_round_trip(value: float, single: bool, text: str) -> None:
    result = float_to_decimal(value, single=single)
    assert isinstance(result, Decimal) and str(result) == text


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_decimal_round_trips(value: float) -> None:
    result = float_to_decimal(value, single=True)
    assert struct.pack(">f", float(result)) == struct.pack(">f", value)


@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["1", "0.001", "1000"]), st.integers(0, 6))
def test_float64_scaling_never_rounds_silently(value: float, factor: str, decimals: int) -> None:
    base = float_to_decimal(value, single=False)
    assert float(base) == value
    exact = spec("float64", factor=Decimal(factor)).decode(struct.pack(">d", value)).value
    assert exact == base * Decimal(factor)  # exact product (the Decimal context is wide enough)
    rounded = spec("float64", factor=Decimal(factor), decimals=decimals).decode(struct.pack(">d", value)).value
    assert rounded is not None and rounded.as_tuple().exponent == -decimals


def test_float_to_decimal_refuses_nan() -> None:
    with pytest.raises(ValueError):
        float_to_decimal(math.nan, single=False)


def spec(dtype: str = "int16", table: Table = Table.HOLDING_REGISTERS, **kw: Any) -> TagSpec:
    return TagSpec(name="t", table=table, address=0, data_type=DataType(dtype), unit=kw.pop("unit", "1"), **kw)


def test_scaling_is_exact_decimal() -> None:
    raw = b"\x04\xd2"  # 1234
    assert spec(factor=Decimal("0.1")).decode(raw).value == Decimal("123.4")
    assert spec(factor=Decimal("0.01"), offset=Decimal("-5")).decode(raw).value == Decimal("7.34")
    assert spec(factor=Decimal("3")).decode(raw).value == Decimal("3702")
    # float32 0.1 scaled by 3: the shortest form first, so 0.3, not 0.3000000044703484
    raw_f = struct.pack(">f", 0.1)
    assert spec("float32", factor=Decimal("3")).decode(raw_f).value == Decimal("0.3")


@given(st.integers(-32768, 32767), st.decimals("-1000", "1000", places=4), st.decimals("-1000", "1000", places=3))
def test_scaling_matches_decimal_arithmetic(raw: int, factor: Decimal, offset: Decimal) -> None:
    sample = spec(factor=factor, offset=offset).decode(struct.pack(">h", raw))
    assert sample.value == Decimal(raw) * factor + offset


def test_decimals_round_half_even() -> None:
    tenths = spec(factor=Decimal("0.01"), decimals=1)
    assert tenths.decode(struct.pack(">h", 1235)).value == Decimal("12.4")
    assert tenths.decode(struct.pack(">h", 1225)).value == Decimal("12.2")
    assert str(spec(decimals=2).decode(struct.pack(">h", 7)).value) == "7.00"
    assert str(spec("float32", decimals=3).decode(struct.pack(">f", 21.5)).value) == "21.500"


def test_non_finite_floats_are_statuses_not_values() -> None:
    f32 = spec("float32", unit="°C")
    assert f32.decode(struct.pack(">f", math.nan)).status is ReadingStatus.FAULT
    assert f32.decode(struct.pack(">f", math.inf)).status is ReadingStatus.OVERLOAD
    low = f32.decode(struct.pack(">f", -math.inf))
    assert low.status is ReadingStatus.UNDERLOAD and low.value is None


def test_bit_decoding() -> None:
    bit = spec("bool", table=Table.COILS)
    assert bit.decode(b"\x01").value == Decimal(1)
    assert bit.decode(b"\x00").value == Decimal(0)
    for bad in (b"\x02", b"", b"\x00\x00"):
        with pytest.raises(ProtocolError):
            bit.decode(bad)


# ------------------------------------------------------------- configuration
BASE = {"host": "127.0.0.1"}


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"x": tag(HR, 0, "int32", count=1)}, "int32 occupies 2 register"),
        ({"x": tag(HR, 0, "float64", count=2)}, "float64 occupies 4 register"),
        ({"x": tag(HR, 0, "int16", count=2)}, "int16 occupies 1 register"),
        ({"x": tag(CO, 0, "bool", count=2)}, "occupies 1 bit"),
        ({"x": tag(HR, 0, "bool")}, "bool needs coils or discrete_inputs"),
        ({"x": tag(CO, 0, "int16")}, "hold bits"),
        ({"x": tag(HR, 65535, "int32")}, "passes 65535"),
    ],
)
def test_inconsistent_tags_are_refused(tags: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ModbusTcpDriver("X", {**BASE, "tags": tags})


@pytest.mark.parametrize(
    "bad",
    [
        {"tags": {"x": {"function": HR, "address": 0, "type": "int16"}}},  # numeric tag without unit
        {"tags": {"x": tag(HR, 0, "int16", factor=0.1)}},  # a JSON float factor
        {"tags": {"x": tag(HR, 0, "int16", factor="1.2.3")}},
        {"tags": {"x": tag(HR, 0, "int8")}},
        {"tags": {"x": tag("registers", 0, "int16")}},
        {"tags": {"x": tag(CO, 0, "bool", factor="2")}},
        {"tags": {"x": tag(HR, 0, "int16", word_order="middle")}},
        {"tags": {"x": tag(HR, -1, "int16")}},
        {"tags": {"x": {**tag(HR, 0, "int16"), "colour": "red"}}},
        {"tags": {}},
        {"tags": {"x": tag(HR, 0, "int16")}, "primary": "y"},
        {"tags": {"x": tag(HR, 0, "int16")}, "reconnect_initial_s": 5, "reconnect_max_s": 1},
        {"tags": {"x": tag(HR, 0, "int16")}, "unit_id": 256},
    ],
)
def test_bad_configuration_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ModbusTcpDriver("X", {**BASE, **bad})


def test_parse_tags_applies_defaults() -> None:
    tags = parse_tags(
        {
            "word_order": "little",
            "tags": {"a": tag(HR, 3, "float32", unit="bar"), "b": tag(HR, 5, "float32", word_order="big")},
        }
    )
    assert tags["a"].word_order == "little" and tags["b"].word_order == "big"
    assert (tags["a"].count, tags["a"].end, tags["a"].unit, tags["a"].factor) == (2, 5, "bar", Decimal(1))


# -------------------------------------------------------------------- blocks
def specs(*items: tuple[str, int, str]) -> list[TagSpec]:
    return list(parse_tags({"tags": {f"t{i}": tag(f, a, t) for i, (f, a, t) in enumerate(items)}}).values())


def test_plan_coalesces_contiguous_tags_per_table() -> None:
    blocks = plan_blocks(specs((HR, 0, "int16"), (HR, 1, "float32"), (HR, 3, "int16"), (IR, 0, "int16"), (HR, 10, "int16")))
    assert [(b.table, b.address, b.count, len(b.tags)) for b in blocks] == [
        (Table.HOLDING_REGISTERS, 0, 4, 3),
        (Table.HOLDING_REGISTERS, 10, 1, 1),
        (Table.INPUT_REGISTERS, 0, 1, 1),
    ]


def test_plan_gap_overlap_and_limits() -> None:
    tags = specs((HR, 0, "int16"), (HR, 3, "int16"))
    assert len(plan_blocks(tags)) == 2
    assert [(b.address, b.count) for b in plan_blocks(tags, max_gap=2)] == [(0, 4)]
    overlapping = specs((HR, 0, "uint32"), (HR, 0, "float32"), (HR, 1, "uint16"))
    assert [(b.address, b.count) for b in plan_blocks(overlapping)] == [(0, 2)]
    many = specs(*((HR, i, "int16") for i in range(300)))
    assert [b.count for b in plan_blocks(many)] == [125, 125, 50]
    assert [b.count for b in plan_blocks(many, max_registers=100)] == [100, 100, 100]
    bits = specs(*((CO, i, "bool") for i in range(2500)))
    assert [b.count for b in plan_blocks(bits)] == [2000, 500]


# ----------------------------------------------------------------- exceptions
@pytest.mark.parametrize(
    ("code", "cls", "family", "retryable"),
    [
        (0x01, ModbusIllegalRequest, ProtocolError, False),
        (0x02, ModbusIllegalRequest, ProtocolError, False),
        (0x03, ModbusIllegalRequest, ProtocolError, False),
        (0x04, ModbusDeviceFailure, DeviceFault, False),
        (0x05, ModbusDeviceBusy, DeviceBusy, True),
        (0x06, ModbusDeviceBusy, DeviceBusy, True),
        (0x07, ModbusDeviceFailure, DeviceFault, False),
        (0x08, ModbusDeviceFailure, DeviceFault, False),
        (0x0A, ModbusGatewayError, DeviceUnavailable, True),
        (0x0B, ModbusGatewayError, DeviceUnavailable, True),
        (0x42, ModbusDeviceFailure, DeviceFault, False),
    ],
)
def test_exception_codes_map_into_the_tree(
    code: int, cls: type[DeviceError], family: type[DeviceError], retryable: bool
) -> None:
    error = exception_from_code(0x83, code, context="read x", raw=bytes([0x83, code]))
    assert type(error) is cls and isinstance(error, family) and isinstance(error, ModbusExceptionResponse)
    assert error.retryable is retryable
    assert (error.function_code, error.exception_code, error.raw) == (3, code, bytes([0x83, code]))
    assert f"{code:02X}" in str(error)


# ------------------------------------------------------- against the simulator
def test_readings_carry_value_unit_raw_times_and_sequence() -> None:
    regmap = RegisterMap(100)
    regmap.set_value(IR, 0, "int16", 215)
    regmap.set_value(HR, 10, "float32", "21.5")
    regmap.set_bits(CO, 7, [True])

    async def body() -> None:
        tags = {
            "temp": tag(IR, 0, "int16", factor="0.1", unit="°C", decimals=1),
            "flow": tag(HR, 10, "float32", unit="L/h"),
            "pump": tag(CO, 7, "bool"),
        }
        async with served(regmap, tags=tags) as (_sim, plc):
            first = await plc.read()
            check_reading(first, "PLC-1")
            assert (first.value, first.unit, first.raw, first.status) == (
                Decimal("21.5"), "°C", b"\x00\xd7", ReadingStatus.OK,
            )
            readings = await plc.read_tags()
            assert list(readings) == ["temp", "flow", "pump"]
            for reading in readings.values():
                check_reading(reading, "PLC-1")
            assert [r.sequence for r in readings.values()] == [2, 3, 4]
            assert readings["flow"].value == Decimal("21.5") and readings["flow"].raw == struct.pack(">f", 21.5)
            assert (readings["pump"].value, readings["pump"].unit, readings["pump"].raw) == (Decimal(1), "1", b"\x01")
            assert all(isinstance(r.value, Decimal) for r in readings.values())

    run(body())


def test_word_order_both_ways_and_byte_order() -> None:
    regmap = RegisterMap(100)
    regmap.set_value(HR, 0, "float32", "-0.1", word_order="big")
    regmap.set_value(HR, 2, "float32", "-0.1", word_order="little")
    regmap.set_value(HR, 4, "int32", -123456, word_order="big")
    regmap.set_value(HR, 6, "int32", -123456, word_order="little")
    regmap.set_value(HR, 8, "float64", "1234.5678", word_order="little")
    regmap.set_value(HR, 12, "uint16", 1234, byte_order="little")
    regmap.set_value(HR, 13, "uint32", 4_000_000_000, word_order="little", byte_order="little")

    async def body() -> None:
        tags = {
            "f_abcd": tag(HR, 0, "float32"),
            "f_cdab": tag(HR, 2, "float32", word_order="little"),
            "i_abcd": tag(HR, 4, "int32"),
            "i_cdab": tag(HR, 6, "int32", word_order="little"),
            "d_little": tag(HR, 8, "float64", word_order="little"),
            "u_ba": tag(HR, 12, "uint16", byte_order="little"),
            "u_dcba": tag(HR, 13, "uint32", word_order="little", byte_order="little"),
            "wrong": tag(HR, 2, "float32"),  # CDAB data read as ABCD: a different number
        }
        async with served(regmap, tags=tags) as (_sim, plc):
            values = {k: r.value for k, r in (await plc.read_tags()).items()}
            assert values["f_abcd"] == values["f_cdab"] == Decimal("-0.1")
            assert values["i_abcd"] == values["i_cdab"] == Decimal(-123456)
            assert values["d_little"] == Decimal("1234.5678")
            assert values["u_ba"] == Decimal(1234)
            assert values["u_dcba"] == Decimal(4_000_000_000)
            assert values["wrong"] != Decimal("-0.1")

    run(body())


def test_many_tags_are_read_in_few_requests() -> None:
    regmap = RegisterMap(400)
    tags: dict[str, Any] = {}
    address = 0
    for i in range(100):
        dtype = ("int16", "uint16", "int32", "float32")[i % 4]
        regmap.set_value(HR, address, dtype, i)
        tags[f"t{i:03d}"] = tag(HR, address, dtype)
        address += DataType(dtype).registers
    for i in range(20):
        regmap.set_bits(CO, i, [i % 2 == 0])
        tags[f"c{i:02d}"] = tag(CO, i, "bool")

    async def body() -> None:
        async with served(regmap, tags=tags) as (sim, plc):
            before = sim.stats.requests
            cycle = await plc.poll()
            assert cycle.ok and cycle.requests == 3  # 150 registers → 125 + 25; 20 coils → 1
            assert sim.stats.requests - before == 3
            assert [cycle.readings[f"t{i:03d}"].value for i in range(100)] == [Decimal(i) for i in range(100)]
            assert [cycle.readings[f"c{i:02d}"].value for i in range(20)] == [Decimal(1 - i % 2) for i in range(20)]
            sequences = [r.sequence for r in cycle.readings.values()]
            assert sequences == list(range(sequences[0], sequences[0] + 120))
            subset = await plc.read_tags(["t005", "c03"])
            assert list(subset) == ["t005", "c03"]

    run(body())


@pytest.mark.parametrize(
    ("code", "error", "retryable"),
    [
        (0x02, ModbusIllegalRequest, False),
        (0x03, ModbusIllegalRequest, False),
        (0x04, ModbusDeviceFailure, False),
        (0x05, ModbusDeviceBusy, True),
        (0x06, ModbusDeviceBusy, True),
        (0x0A, ModbusGatewayError, True),
        (0x0B, ModbusGatewayError, True),
    ],
)
def test_injected_exception_responses_are_mapped(code: int, error: type[DeviceError], retryable: bool) -> None:
    async def body() -> None:
        async with served(tags={"x": tag(HR, 0, "int16")}) as (sim, plc):
            sim.faults.inject_exception(code)
            with pytest.raises(error) as info:
                await plc.read()
            assert info.value.retryable is retryable
            assert info.value.raw == bytes([0x83, code])  # the exception PDU as received
            assert info.value.device_id == "PLC-1"
            assert (await plc.read()).value == Decimal(0)  # one-shot fault; the link is fine

    run(body())


def test_illegal_address_outside_the_map() -> None:
    async def body() -> None:
        async with served(RegisterMap(100), tags={"ok": tag(HR, 0, "int16"), "far": tag(HR, 150, "int16")}) as (_s, plc):
            with pytest.raises(ModbusIllegalRequest) as info:
                await plc.read_tags(["far"])
            assert info.value.exception_code == 2 and not info.value.retryable
            assert isinstance(info.value, ProtocolError)

    run(body())


def test_a_block_spanning_an_illegal_address_is_split_per_tag() -> None:
    async def body() -> None:
        tags = {"a": tag(HR, 97, "int16"), "b": tag(HR, 98, "int16"), "c": tag(HR, 99, "uint32")}  # c ends at 101
        async with served(RegisterMap(100), tags=tags) as (sim, plc):
            cycle = await plc.poll()
            assert set(cycle.readings) == {"a", "b"} and set(cycle.errors) == {"c"}
            assert isinstance(cycle.errors["c"], ModbusIllegalRequest)
            assert cycle.requests == 4  # the block, then a, b, c alone
            before = sim.stats.requests
            again = await plc.poll()  # the split is remembered
            assert again.requests == 3 and sim.stats.requests - before == 3
            with pytest.raises(ModbusIllegalRequest):
                await plc.read_tags()

    run(body())


def test_busy_block_is_a_per_tag_error_in_poll() -> None:
    async def body() -> None:
        tags = {"a": tag(HR, 0, "int16"), "b": tag(IR, 0, "int16")}
        async with served(tags=tags) as (sim, plc):
            sim.faults.inject_exception(6, function=IR)
            cycle = await plc.poll()
            assert set(cycle.readings) == {"a"} and isinstance(cycle.errors["b"], ModbusDeviceBusy)
            assert not cycle.ok

    run(body())


def test_timeout_is_retryable_and_a_late_reply_is_never_taken_for_the_next() -> None:
    regmap = RegisterMap(100)
    regmap.set_value(HR, 0, "int16", 11)
    regmap.set_value(HR, 1, "int16", 22)

    async def body() -> None:
        tags = {"a": tag(HR, 0, "int16"), "b": tag(HR, 1, "int16")}
        async with served(regmap, tags=tags, timeout_s=1.0) as (sim, plc):
            sim.faults.delay_next(1.5)  # "a": answered 0.5 s after the driver gave up ...
            sim.faults.delay_next(0.8)  # ... while "b" is in flight
            with pytest.raises(DeviceTimeout) as info:
                await plc.read()
            assert info.value.retryable and isinstance(info.value, DeviceUnavailable)
            assert (await plc.read_tags(["b"]))["b"].value == Decimal(22)
            assert (await plc.read()).value == Decimal(11)
            assert plc.link_up and plc.reconnects == 0

    run(body())


def test_slow_but_in_time_responses_succeed() -> None:
    async def body() -> None:
        async with served(tags={"a": tag(HR, 0, "int16")}, timeout_s=2.0) as (sim, plc):
            sim.faults.delay_s = 0.1
            assert (await plc.read()).status is ReadingStatus.OK

    run(body())


def test_disconnect_fault_then_background_reconnect() -> None:
    async def body() -> None:
        async with served(tags={"a": tag(HR, 0, "int16")}) as (sim, plc):
            sim.faults.disconnect_next()
            with pytest.raises(DeviceUnavailable) as info:
                await plc.read()
            assert info.value.retryable and not isinstance(info.value, DeviceTimeout)
            await plc.wait_connected(timeout=10)
            assert plc.reconnects == 1 and plc.link_up
            assert (await plc.read()).value == Decimal(0)

    run(body())


def test_server_gone_and_back_on_the_same_port() -> None:
    async def body() -> None:
        regmap = RegisterMap(100)
        regmap.set_value(HR, 0, "int16", 7)
        async with served(regmap, tags={"a": tag(HR, 0, "int16")}, reconnect_initial_s=0.05) as (sim, plc):
            port = sim.port
            first = await plc.read()
            await sim.stop()
            loop = asyncio.get_running_loop()
            for _ in range(2):  # the drop, then the fail-fast while reconnecting
                t0 = loop.time()
                with pytest.raises(DeviceUnavailable):
                    await plc.read()
                assert loop.time() - t0 < 0.5  # no time-out wait
            assert not plc.link_up
            with pytest.raises(DeviceTimeout):
                await plc.wait_connected(timeout=0.3)  # nobody listening: stays down
            with pytest.raises(DeviceUnavailable, match="reconnecting"):
                await plc.read()
            await sim.start(port)
            await plc.wait_connected(timeout=15)
            again = await plc.read()
            assert again.value == Decimal(7) and again.sequence == first.sequence + 1
            assert plc.reconnects == 1 and plc.last_error is None

    run(body(), timeout=40)


def test_identify_from_device_identification() -> None:
    async def body() -> None:
        async with served(tags={"a": tag(HR, 0, "int16")}, serial_number="SN-42") as (_sim, plc):
            identity = await plc.identify()
            assert (identity.make, identity.model, identity.firmware, identity.serial_number) == (
                "open-mes", "SIM-MODBUS", "1.0", "SN-42",
            )
            assert identity.details["source"].startswith("device identification")

    run(body())


def test_close_stops_everything_and_connect_again_works() -> None:
    async def body() -> None:
        async with served(tags={"a": tag(HR, 0, "int16")}) as (sim, plc):
            await plc.close()
            await plc.close()
            with pytest.raises(DeviceUnavailable):
                await plc.read()
            with pytest.raises(DeviceUnavailable):
                await plc.wait_connected(1)
            await plc.connect()
            assert (await plc.read()).status is ReadingStatus.OK
            assert sim.client_count() == 1

    run(body())


def test_probe_on_connect_reports_a_bad_primary_tag() -> None:
    async def body() -> None:
        sim = ModbusSimulator(RegisterMap(100))
        async with sim.serve():
            plc = ModbusTcpDriver("PLC", sim.driver_config(tags={"far": tag(HR, 500, "int16")}))
            with pytest.raises(ModbusIllegalRequest):
                await plc.connect()
            assert not plc.is_connected
            lazy = ModbusTcpDriver("PLC", sim.driver_config(tags={"far": tag(HR, 500, "int16")}, probe=False))
            async with lazy:
                with pytest.raises(ModbusIllegalRequest):
                    await lazy.read()

    run(body())


def test_cycles_poll_at_a_fixed_rate() -> None:
    async def body() -> None:
        async with served(tags={"a": tag(HR, 0, "int16"), "b": tag(HR, 1, "int16")}) as (_sim, plc):
            cycles = []
            async with contextlib.aclosing(plc.cycles(0.02)) as stream:
                async for cycle in stream:
                    cycles.append(cycle)
                    if len(cycles) == 3:
                        break
            assert all(c.ok and set(c.readings) == {"a", "b"} for c in cycles)
            assert cycles[0].started < cycles[1].started < cycles[2].started
            with pytest.raises(ValueError):
                async for _ in plc.cycles(0):
                    pass

    run(body())


# ----------------------------------------------------------------- simulator
def test_register_map_from_spec_and_typed_values(tmp_path: Path) -> None:
    spec_ = {
        "size": 64,
        "holding_registers": {"0": [1, 2, 3]},
        "coils": {"4": [True, False, True]},
        "values": [{"function": IR, "address": 10, "type": "float32", "value": "21.5", "word_order": "little"}],
    }
    regmap = RegisterMap.from_spec(spec_)
    assert regmap.registers(HR, 0, 3) == [1, 2, 3]
    assert regmap.bits(CO, 4, 3) == [True, False, True]
    assert regmap.value(IR, 10, "float32", word_order="little") == 21.5
    with pytest.raises(ValueError):
        RegisterMap.from_spec({"colour": 1})
    with pytest.raises(ValueError):
        regmap.set_registers(HR, 63, [1, 2])
    with pytest.raises(ValueError):
        regmap.set_registers(CO, 0, [1])


def test_simulator_cli_arguments(tmp_path: Path) -> None:
    args = build_parser().parse_args([])
    assert (args.port, args.host, args.unit) == (5020, "127.0.0.1", 0)
    for bad in (["--port", "70000"], ["--exception", "99"], ["--map", str(tmp_path / "none.json")], ["--delay", "-1"]):
        with pytest.raises(SystemExit):
            main(bad)


def test_simulator_main_serves_a_map_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mapfile = tmp_path / "map.json"
    mapfile.write_text(json.dumps({"values": [{"function": HR, "address": 0, "type": "int16", "value": -5}]}))
    assert main(["--port", "0", "--map", str(mapfile), "--duration", "0.05"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("modbus simulator listening on tcp://127.0.0.1:") and line.endswith("(unit any)")


# --------------------------------------------------------------- conformance
class TestModbusConformance(LinkedDriverConformance):
    """The device conformance kit, with frames of the wrong size for an int16 primary tag."""

    garbage_frames = (b"", b"\x00", b"\x00\x01\x02", b"\x00\x01\x02\x03", b"\r\n\r\n")

    @pytest.fixture
    def driver_factory(self) -> Any:
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[ModbusTcpDriver]:
            regmap = RegisterMap(100)
            regmap.set_value(HR, 0, "int16", 1234)
            sim = ModbusSimulator(regmap)
            async with sim.serve():
                config = sim.driver_config(
                    tags={"level": tag(HR, 0, "int16", factor="0.01", unit="m")}, stream_interval_s=0.01
                )
                async with ModbusTcpDriver("CONF-MB", config) as driver:
                    yield driver

        return factory

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": closed_tcp_port(), "tags": {"level": tag(HR, 0, "int16")}}


def test_registered_like_the_built_in_drivers() -> None:
    registry = DriverRegistry(builtins={**BUILTIN_DRIVERS, "modbus": "devices.drivers.modbus:ModbusTcpDriver"})
    assert registry.load("modbus") is ModbusTcpDriver
    driver = registry.create("modbus", "PLC", ModbusTcpDriver.example_config)
    assert isinstance(driver, ModbusTcpDriver) and not driver.is_connected


# ----------------------------------------------------- independent peer (node)
@pytest.fixture(scope="module")
def peer_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LazyPeer]:
    lazy = LazyPeer("modbus_server.js", "0", packages=("modbus-serial",), workdir=tmp_path_factory.mktemp("mbpeer"))
    yield lazy
    lazy.close()


@pytest.fixture
def modbus_peer(peer_process: LazyPeer) -> Callable[[], NodePeer]:
    """Call it in the test: modbus-serial's ServerTCP with the map in peers/modbus_server.js.

    Started inside the test body, so a missing install fails the test (never skips it).
    """
    return peer_process.get


def test_missing_peers_fail_with_the_install_hint() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"npm ci --prefix tests/devices/peers"):
        require_peers("no-such-peer-package")


PEER_TAGS = {
    "i16": tag(HR, 0, "int16"),
    "u16": tag(HR, 1, "uint16"),
    "i32": tag(HR, 2, "int32"),
    "u32_cdab": tag(HR, 4, "uint32", word_order="little"),
    "f32": tag(HR, 6, "float32", unit="°C"),
    "f32_cdab": tag(HR, 8, "float32", word_order="little"),
    "f64": tag(HR, 10, "float64", unit="kg"),
    "i16_ba": tag(HR, 14, "int16", byte_order="little"),
    "scaled": tag(HR, 0, "int16", factor="0.1", offset="100", decimals=2, unit="bar"),
    "in3": tag(IR, 3, "uint16"),
    "coil4": tag(CO, 4, "bool"),
    "coil5": tag(CO, 5, "bool"),
    "di9": tag(DI, 9, "bool"),
    "di10": tag(DI, 10, "bool"),
}
PEER_VALUES = {
    "i16": Decimal(-1234),
    "u16": Decimal(65000),
    "i32": Decimal(-123456),
    "u32_cdab": Decimal(4_000_000_000),
    "f32": Decimal("21.5"),
    "f32_cdab": Decimal("-0.1"),
    "f64": Decimal("1234.5678"),
    "i16_ba": Decimal(1234),
    "scaled": Decimal("-23.40"),
    "in3": Decimal(103),
    "coil4": Decimal(1),
    "coil5": Decimal(0),
    "di9": Decimal(1),
    "di10": Decimal(0),
}


def peer_driver(peer: NodePeer, tags: dict[str, Any], **config: Any) -> ModbusTcpDriver:
    return ModbusTcpDriver("PEER", {"host": "127.0.0.1", "port": peer.port, "tags": tags, "timeout_s": 3.0, **config})


def test_peer_values_word_orders_and_scaling(modbus_peer: Callable[[], NodePeer]) -> None:
    peer = modbus_peer()

    async def body() -> None:
        async with peer_driver(peer, PEER_TAGS) as plc:
            cycle = await plc.poll()
            assert cycle.ok, cycle.errors
            assert {k: r.value for k, r in cycle.readings.items()} == PEER_VALUES
            assert cycle.requests == 4  # holding 0-14, input 3, coils 4-5, discrete 9-10
            assert cycle.readings["f32"].raw == struct.pack(">f", 21.5)
            assert cycle.readings["i16_ba"].raw == struct.pack("<h", 1234)

    run(body())


@pytest.mark.parametrize(
    ("address", "error", "code"),
    [(500, ModbusDeviceBusy, 6), (501, ModbusDeviceFailure, 4), (502, ModbusGatewayError, 11), (30, ModbusIllegalRequest, 2)],
)
def test_peer_exception_responses(
    modbus_peer: Callable[[], NodePeer], address: int, error: type[DeviceError], code: int
) -> None:
    peer = modbus_peer()

    async def body() -> None:
        async with peer_driver(peer, {"x": tag(HR, address, "int16")}, probe=False) as plc:
            with pytest.raises(error) as info:
                await plc.read()
            assert isinstance(info.value, ModbusExceptionResponse) and info.value.exception_code == code
            assert info.value.raw == bytes([0x83, code])

    run(body())


def test_peer_timeout_and_identity_fallback(modbus_peer: Callable[[], NodePeer]) -> None:
    peer = modbus_peer()

    async def body() -> None:
        tags = {"slow": tag(HR, 600, "int16"), "fast": tag(HR, 1, "uint16")}
        async with peer_driver(peer, tags, probe=False, timeout_s=0.5, make="ACME", model="PLC-9") as plc:
            with pytest.raises(DeviceTimeout):
                await plc.read()
            assert (await plc.read_tags(["fast"]))["fast"].value == Decimal(65000)
            identity = await plc.identify()  # modbus-serial answers FC 43 with exception 01
            assert (identity.make, identity.model, identity.details["source"]) == ("ACME", "PLC-9", "configuration")

    run(body())


# --------------------------------------------------------------------- bench
def test_bench_measure_modbus_cycle_short_run() -> None:
    from tests.bench.devices_modbus import measure_modbus_cycle

    result = measure_modbus_cycle(tags=40, cycles=5)
    assert result["tags"] == 40 and result["cycles"] == 5 and result["requests_per_cycle"] == 1
    assert result["cycle_p50_ms"] > 0 and result["single_read_p50_ms"] > 0
    assert result["ratio_p50"] == pytest.approx(result["cycle_p50_ms"] / result["single_read_p50_ms"], rel=0.05)
    with pytest.raises(ValueError):
        measure_modbus_cycle(tags=0)
