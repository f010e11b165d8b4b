"""The exception tree: classes, retryable flags, messages."""

from __future__ import annotations

import pytest

from devices import errors
from devices.errors import (
    ConfigurationError,
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    DriverLoadError,
    DriverNotFound,
    NotSupported,
    ProtocolError,
    TransmissionError,
)


@pytest.mark.parametrize(
    ("cls", "parent", "retryable"),
    [
        (DeviceUnavailable, DeviceError, True),
        (DeviceTimeout, DeviceUnavailable, True),
        (ProtocolError, DeviceError, False),
        (TransmissionError, ProtocolError, True),
        (DeviceFault, DeviceError, False),
        (DeviceBusy, DeviceFault, True),
        (NotSupported, DeviceError, False),
        (ConfigurationError, DeviceError, False),
        (DriverNotFound, DeviceError, False),
        (DriverLoadError, DeviceError, False),
    ],
)
def test_tree_and_retryable(cls: type[DeviceError], parent: type[DeviceError], retryable: bool) -> None:
    assert issubclass(cls, parent)
    assert cls("x").retryable is retryable


def test_everything_public_is_a_device_error() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), DeviceError)


def test_message_names_device_and_raw_bytes() -> None:
    exc = ProtocolError("cannot parse", device_id="BAL-01", raw=b"S S ??\r\n")
    assert str(exc) == "[BAL-01] cannot parse (raw=b'S S ??\\r\\n')"
    assert exc.raw == b"S S ??\r\n"


def test_retryable_can_be_overridden_per_instance() -> None:
    assert DeviceFault("x", retryable=True).retryable is True
    assert DeviceFault("y").retryable is False


def test_configuration_and_lookup_errors_keep_builtin_bases() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(DriverNotFound, LookupError)


def test_tree_is_documented_in_module_docstring() -> None:
    doc = errors.__doc__ or ""
    for name in ("DeviceUnavailable", "DeviceTimeout", "ProtocolError", "DeviceFault", "DeviceBusy"):
        assert name in doc
