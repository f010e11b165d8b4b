"""The one exception tree of the device layer.

Every failure a driver reports is a :class:`DeviceError`. Callers (the MES
gateway, a kiosk, a script) decide what to do from the class and from the
``retryable`` flag, never from the message text::

    DeviceError                      base; .device_id, .raw, .retryable
    ├── DeviceUnavailable            cannot talk to the device (retryable)
    │   └── DeviceTimeout            no (complete) reply in time (retryable)
    ├── ProtocolError                a reply we cannot understand or did not expect
    │   └── TransmissionError        the device reports a garbled command (MT-SICS ET; retryable)
    ├── DeviceFault                  the device understood but refuses or fails
    │   └── DeviceBusy               the device is busy, try again (retryable)
    ├── NotSupported                 the driver/device lacks that capability
    ├── ConfigurationError           configuration does not match the driver's schema
    └── DriverError                  the registry cannot provide a driver
        ├── DriverNotFound           no driver of that name
        └── DriverLoadError          a plugin failed to import or is not a Driver

Rules the drivers follow:

* I/O problems (port missing, socket refused, link lost mid-line) are
  :class:`DeviceUnavailable`; a partial line is discarded, never parsed.
* A frame that does not parse is :class:`ProtocolError`; it is *never* turned
  into a zero or any other value. ``.raw`` holds the bytes as received.
* A device-reported condition about the *load* (overload, underload, motion,
  busy) is not an exception on a read: it is a :class:`~devices.reading.Reading`
  with the matching status. On a command (tare, zero) it is an exception.
* ``retryable`` says whether the same call may succeed if simply repeated
  (after reconnecting, for :class:`DeviceUnavailable`).
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DeviceBusy",
    "DeviceError",
    "DeviceFault",
    "DeviceTimeout",
    "DeviceUnavailable",
    "DriverError",
    "DriverLoadError",
    "DriverNotFound",
    "NotSupported",
    "ProtocolError",
    "TransmissionError",
]


class DeviceError(Exception):
    """Base of every error raised by a device driver.

    ``device_id`` names the device (filled in by the driver base class),
    ``raw`` holds the offending bytes as received (if any) and ``retryable``
    tells whether repeating the call can succeed.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        device_id: str | None = None,
        raw: bytes | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.device_id = device_id
        self.raw = raw
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        text = self.message
        if self.device_id:
            text = f"[{self.device_id}] {text}"
        if self.raw is not None:
            text = f"{text} (raw={self.raw!r})"
        return text


class DeviceUnavailable(DeviceError):
    """The device cannot be reached: port absent, connection refused or lost."""

    retryable = True


class DeviceTimeout(DeviceUnavailable):
    """No complete reply arrived within the allowed time."""


class ProtocolError(DeviceError):
    """A reply that cannot be parsed, or is not the reply the command expects."""


class TransmissionError(ProtocolError):
    """The device says our command arrived garbled (e.g. MT-SICS ``ET``)."""

    retryable = True


class DeviceFault(DeviceError):
    """The device understood the command but cannot carry it out."""


class DeviceBusy(DeviceFault):
    """The device is busy (e.g. still taring, or not yet stable); try again."""

    retryable = True


class NotSupported(DeviceError):
    """The driver or the device does not offer the requested capability."""


class ConfigurationError(DeviceError, ValueError):
    """A driver configuration does not validate against the driver's schema."""


class DriverError(DeviceError):
    """The driver registry cannot provide the requested driver."""


class DriverNotFound(DriverError, LookupError):
    """No driver is registered under the requested name."""


class DriverLoadError(DriverError):
    """A registered driver failed to import or does not subclass ``Driver``."""
