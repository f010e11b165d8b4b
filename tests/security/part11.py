"""The rows of ``shared/specs/part11.md`` and the marker that ties a test to one.

Each row of the spec's table is proved by one test marked ``@row("<ref>")`` with the row's
``ref`` cell as written; ``test_every_part11_row_has_a_test`` fails on a row without one (a new
row in the spec needs its test) and on a marker naming no row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import SHARED_DIR

SPEC = Path(SHARED_DIR) / "specs" / "part11.md"
row = pytest.mark.part11
"""``@row("11.10(a)")``: the test proves that row of the spec."""


def spec_rows(text: str | None = None) -> list[str]:
    """The ``ref`` cell of every row of the spec's table, in order (header and rule excluded)."""
    text = SPEC.read_text(encoding="utf-8") if text is None else text
    refs = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if len(cells) < 2 or cells[0] == "ref" or re.fullmatch(r":?-+:?", cells[0]):
            continue
        refs.append(cells[0])
    return refs
