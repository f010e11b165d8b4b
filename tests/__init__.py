"""Test suite package (lets tests/devices be imported as tests.devices, not as the devices package)."""
