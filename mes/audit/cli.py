"""``mes audit …``, ``mes backup`` and ``mes restore``."""

from __future__ import annotations

import click

from mes.cli import main


@main.group()
def audit() -> None:
    """Verify and export the audit log."""
