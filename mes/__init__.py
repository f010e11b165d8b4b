"""open-mes: a shop-floor Level-3 MES with electronic batch records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["create_app"]
__version__ = "0.1.0"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Application factory (see :func:`mes.app.create_app`)."""
    from mes.app import create_app as _create_app

    return _create_app(config)
