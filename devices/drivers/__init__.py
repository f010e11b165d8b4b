"""Built-in device drivers (registered in the ``mes.devices`` entry-point group).

* :mod:`devices.drivers.mtsics` – Mettler-Toledo balances speaking MT-SICS.
* :mod:`devices.drivers.aandd` – A&D balances in stream mode (A&D standard format).
* :mod:`devices.drivers.virtual` – an in-memory scale for tests and demos.
* :mod:`devices.drivers.modbus` – line equipment over Modbus TCP (tags, scaling, block reads).
* :mod:`devices.drivers.opcua` – line equipment over OPC UA (browse, subscriptions,
  Basic256Sha256, PackML state and counters).

Nothing is imported here: the registry loads each driver lazily.
"""
