"""Where the shared audit test vectors are (``shared/vectors/audit``)."""

from __future__ import annotations

import os
from pathlib import Path


def shared_dir() -> Path:
    """``$MES_SHARED_DIR`` if set, else the ``shared/`` folder beside the repository."""
    env = os.environ.get("MES_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared"


def vectors_dir() -> Path:
    """The audit-log test vectors; a clear failure (not a skip) if they are missing."""
    d = shared_dir() / "vectors" / "audit"
    if not (d / "expected.json").is_file():
        raise FileNotFoundError(f"audit test vectors not found in {d} (set MES_SHARED_DIR)")
    return d
