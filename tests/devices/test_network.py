"""The one base of networked drivers (issue 16): link state, backoff reconnect and the float ->
Decimal conversion live once, in devices.network; Modbus and OPC UA keep no copy."""

from __future__ import annotations

from decimal import Decimal

import pytest

from devices.drivers.modbus import ModbusTcpDriver
from devices.drivers.opcua import OpcUaDriver
from devices.errors import ConfigurationError
from devices.network import NetworkDriver, float_to_decimal

SHARED = ("link_up", "wait_connected", "_mark_down", "_reconnect_loop", "_down_error", "_start_link", "_stop_link",
          "reconnect_initial_s", "reconnect_max_s")


@pytest.mark.parametrize("driver", [ModbusTcpDriver, OpcUaDriver])
def test_networked_drivers_share_one_link_handling(driver: type[NetworkDriver]) -> None:
    assert issubclass(driver, NetworkDriver) and driver.reconnects_itself
    assert not [name for name in SHARED if name in vars(driver)], "a copy of the shared link handling"
    config = {**driver.example_config, "reconnect_initial_s": 0.25, "reconnect_max_s": 4}
    spare = driver("NET-1", config)
    assert (spare.reconnect_initial_s, spare.reconnect_max_s) == (0.25, 4.0)
    assert not spare.link_up
    with pytest.raises(ConfigurationError, match="reconnect_max_s must be >= reconnect_initial_s"):
        driver("NET-2", {**driver.example_config, "reconnect_initial_s": 5, "reconnect_max_s": 1})


@pytest.mark.parametrize(
    ("value", "single", "expected"),
    [(0.1, False, "0.1"), (0.1, True, "0.1"), (1e21, False, "1000000000000000000000"), (-2.5, True, "-2.5"),
     (3.4028234663852886e38, True, "340282350000000000000000000000000000000")],
)
def test_float_to_decimal_is_the_value_the_device_meant(value: float, single: bool, expected: str) -> None:
    assert float_to_decimal(value, single=single) == Decimal(expected)
    assert str(float_to_decimal(value, single=single)) == expected


def test_float_to_decimal_refuses_non_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        float_to_decimal(float("nan"), single=False)
