"""The MES side of witnessing: send checkpoints, keep the cosignatures (filled in below)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def state_dir(al: Any) -> Path:
    """Where the newest cosigned note of each witness is kept: beside the signing key,
    outside the database."""
    return Path(al.key_path).parent / "witness-state"


def witnessed_checkpoints(al: Any) -> list[tuple[str, str]]:
    """``(witness name, newest cosigned checkpoint note)`` for every witness heard from."""
    folder = state_dir(al)
    if not folder.is_dir():
        return []
    return [(p.stem, p.read_text("utf-8")) for p in sorted(folder.glob("*.note"))]


def submit_in_background(al: Any, note: str) -> None:
    """Send a freshly signed checkpoint to the configured witnesses (never blocks)."""
    return None
