"""BalanceModel: the weighing rules behind the simulators and the virtual scale."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from devices.reading import ReadingStatus
from devices.sim.model import BalanceModel, to_decimal


def test_display_rounds_half_up_to_the_resolution() -> None:
    balance = BalanceModel(load="1.005")
    assert balance.snapshot().net == Decimal("1.01")
    balance.set_weight("-1.005")
    assert balance.snapshot().net == Decimal("-1.01")


def test_range_limits() -> None:
    balance = BalanceModel(capacity="100", underload_below="-5")
    balance.set_weight("100")
    assert balance.snapshot().status is ReadingStatus.OK
    balance.set_weight("100.01")
    assert balance.snapshot().status is ReadingStatus.OVERLOAD
    balance.set_weight("-5.01")
    snap = balance.snapshot()
    assert snap.status is ReadingStatus.UNDERLOAD and snap.net is None
    balance.set_overload()
    assert balance.snapshot().status is ReadingStatus.OVERLOAD
    balance.set_underload()
    assert balance.snapshot().status is ReadingStatus.UNDERLOAD


def test_conditions_take_precedence_in_order_fault_busy_range() -> None:
    balance = BalanceModel()
    balance.set_overload()
    balance.set_busy()
    assert balance.snapshot().status is ReadingStatus.BUSY
    balance.set_fault()
    assert balance.snapshot().status is ReadingStatus.FAULT


def test_unstable_with_deterministic_noise() -> None:
    a = BalanceModel(load="10", noise="0.5", seed=7)
    b = BalanceModel(load="10", noise="0.5", seed=7)
    a.set_unstable()
    b.set_unstable()
    values = [a.snapshot().net for _ in range(5)]
    assert values == [b.snapshot().net for _ in range(5)]
    assert all(Decimal("9.5") <= v <= Decimal("10.5") for v in values)
    assert a.snapshot().status is ReadingStatus.DYNAMIC


def test_tare_and_zero_rules() -> None:
    balance = BalanceModel(load="50", capacity="200")
    assert balance.tare() == ("ok", Decimal("50.00"))
    balance.set_weight("70")
    assert balance.snapshot().net == Decimal("20.00")
    assert balance.zero() == "above"  # 70 g is outside 2 % of 200 g
    balance.set_weight("2")
    assert balance.zero() == "ok"
    assert balance.tare_value == Decimal("0.00")  # zeroing clears the tare
    balance.set_weight("-4.1")
    assert balance.zero() == "below"
    assert balance.tare() == ("below", None)
    balance.set_overload()
    assert balance.tare() == ("above", None)
    balance.set_unstable()
    assert balance.tare() == ("unstable", None) and balance.zero() == "unstable"
    balance.set_busy()
    assert balance.tare() == ("busy", None) and balance.zero() == "busy"


def test_preset_and_clear_tare() -> None:
    balance = BalanceModel(capacity="100")
    assert balance.preset_tare("12.345") and balance.tare_value == Decimal("12.35")
    assert not balance.preset_tare("-1") and not balance.preset_tare("101")
    balance.clear_tare()
    assert balance.tare_value == Decimal("0.00")


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError):
        to_decimal(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        BalanceModel(load=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        to_decimal("NaN")


def test_thread_safe_under_concurrent_updates() -> None:
    balance = BalanceModel()

    def hammer(n: int) -> None:
        for i in range(500):
            balance.set_weight(n * 1000 + i)
            balance.snapshot()

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert balance.load % 1000 == 499
