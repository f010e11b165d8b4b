"""Fixtures shared by the device tests (found by pytest here, never imported by name)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture
def forget_plugin_modules() -> Iterator[None]:
    """Drop plugin modules imported during a test from ``sys.modules``."""
    before = set(sys.modules)
    yield
    for module in set(sys.modules) - before:
        if module.startswith(("mes_example_scale", "mes_broken_scale")):
            del sys.modules[module]
    importlib.invalidate_caches()
