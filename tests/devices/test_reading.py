"""Reading, Sample, Weight and DeviceIdentity validate themselves."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.reading import DeviceIdentity, Reading, ReadingStatus, Sample, Weight

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def reading(**overrides: Any) -> Reading:
    fields: dict[str, Any] = {
        "device_id": "BAL-01",
        "sequence": 1,
        "status": ReadingStatus.OK,
        "value": Decimal("12.50"),
        "unit": "g",
        "stable": True,
        "raw": b"S S      12.50 g\r\n",
        "timestamp": NOW,
        "monotonic": time.monotonic(),
    }
    fields.update(overrides)
    return Reading(**fields)


def test_valid_reading() -> None:
    r = reading()
    assert r.weight == Weight(Decimal("12.50"), "g")
    assert r.stable


@pytest.mark.parametrize(
    "overrides",
    [
        {"value": 12.5},  # float is refused
        {"value": Decimal("NaN")},
        {"value": Decimal("Infinity")},
        {"value": None},  # ok needs a value
        {"unit": ""},  # a value needs a unit
        {"stable": False},  # ok is stable
        {"status": ReadingStatus.DYNAMIC},  # dynamic is not stable
        {"status": ReadingStatus.OVERLOAD, "stable": False},  # overload carries no value
        {"timestamp": datetime(2026, 1, 2)},  # naive
        {"timestamp": NOW.astimezone(timezone(timedelta(hours=2)))},  # not UTC
        {"sequence": 0},
        {"sequence": True},
        {"device_id": ""},
        {"raw": "S S 1 g"},
        {"monotonic": 3},
        {"monotonic": float("nan")},
        {"status": "ok"},
    ],
)
def test_invalid_readings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        reading(**overrides)


@pytest.mark.parametrize(
    "status",
    [ReadingStatus.OVERLOAD, ReadingStatus.UNDERLOAD, ReadingStatus.BUSY, ReadingStatus.FAULT],
)
def test_conditions_without_value(status: ReadingStatus) -> None:
    r = reading(status=status, value=None, unit="", stable=False)
    assert r.weight is None
    assert not r.stable


def test_dynamic_reading() -> None:
    r = reading(status=ReadingStatus.DYNAMIC, stable=False)
    assert r.value == Decimal("12.50") and not r.stable


def test_to_dict_is_json_ready() -> None:
    d = reading().to_dict()
    assert d["value"] == "12.50" and d["status"] == "ok" and d["unit"] == "g"
    assert d["timestamp"] == "2026-01-02T03:04:05+00:00"
    assert d["raw"] == "S S      12.50 g\r\n"


@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-10**6, max_value=10**6))
def test_to_dict_value_round_trips_exactly(value: Decimal) -> None:
    r = reading(value=value)
    assert Decimal(r.to_dict()["value"]) == value
    assert str(Decimal(r.to_dict()["value"])) == str(value)


def test_sample_rules() -> None:
    assert Sample(ReadingStatus.OK, Decimal("1"), "g").stable
    assert not Sample(ReadingStatus.DYNAMIC, Decimal("1"), "g").stable
    with pytest.raises(ValueError):
        Sample(ReadingStatus.BUSY, Decimal("1"), "g")
    with pytest.raises(TypeError):
        Sample("ok", Decimal("1"), "g")  # type: ignore[arg-type]


def test_weight_rules() -> None:
    assert str(Weight(Decimal("0.50"), "kg")) == "0.50 kg"
    with pytest.raises(TypeError):
        Weight(0.5, "kg")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Weight(Decimal("1"), " ")


def test_identity_requires_every_field() -> None:
    ident = DeviceIdentity("Mettler-Toledo", "XS205", "1234", "1.10")
    assert ident.details == {}
    with pytest.raises(ValueError):
        DeviceIdentity("Mettler-Toledo", "", "1234", "1.10")
