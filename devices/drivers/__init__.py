"""Built-in device drivers (registered in the ``mes.devices`` entry-point group).

* :mod:`devices.drivers.mtsics` – Mettler-Toledo balances speaking MT-SICS.
* :mod:`devices.drivers.aandd` – A&D balances in stream mode (A&D standard format).
* :mod:`devices.drivers.virtual` – an in-memory scale for tests and demos.

Nothing is imported here: the registry loads each driver lazily.
"""
