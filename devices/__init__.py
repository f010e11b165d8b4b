"""Device drivers for the shop floor: balances today, other instruments later.

Usable on its own (it never imports ``mes`` or ``kiosk``)::

    from devices import create_driver

    async with create_driver("mtsics", "BAL-01", {"port": "/dev/ttyUSB0"}) as scale:
        identity = await scale.identify()
        reading = await scale.read(stable=True)      # Reading(value=Decimal, unit, ...)

Public API: :class:`Driver` (the template-method base), :class:`Reading`,
:class:`ReadingStatus`, :class:`Weight`, :class:`Sample`,
:class:`DeviceIdentity`, :class:`Capability`, the exception tree in
:mod:`devices.errors`, and the registry functions :func:`create_driver`,
:func:`load_driver`, :func:`available_drivers` (entry-point group
``mes.devices``). Simulators live in :mod:`devices.sim`, the plugin
conformance kit in :mod:`devices.testkit`; see ``devices/README.md``.
"""

from devices.base import Capability, Driver, Frame, utc_now
from devices.errors import (
    ConfigurationError,
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    DriverError,
    DriverLoadError,
    DriverNotFound,
    NotSupported,
    ProtocolError,
    TransmissionError,
)
from devices.reading import CANONICAL_UNITS, DeviceIdentity, Reading, ReadingStatus, Sample, Weight
from devices.registry import (
    ENTRY_POINT_GROUP,
    DriverRegistry,
    available_drivers,
    create_driver,
    load_driver,
)

__all__ = [
    "CANONICAL_UNITS",
    "ENTRY_POINT_GROUP",
    "Capability",
    "ConfigurationError",
    "DeviceBusy",
    "DeviceError",
    "DeviceFault",
    "DeviceIdentity",
    "DeviceTimeout",
    "DeviceUnavailable",
    "Driver",
    "DriverError",
    "DriverLoadError",
    "DriverNotFound",
    "DriverRegistry",
    "Frame",
    "NotSupported",
    "ProtocolError",
    "Reading",
    "ReadingStatus",
    "Sample",
    "TransmissionError",
    "Weight",
    "available_drivers",
    "create_driver",
    "load_driver",
    "utc_now",
]
