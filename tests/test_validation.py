"""The one set of input rules (mes.validation): the id pattern, required text, length caps,
and the get_or_404 lookup, each used by every feature package instead of a copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask

from mes.audit.log import Actor
from mes.equipment import operations as equipment
from mes.errors import NotFound, ValidationFailed
from mes.materials import operations as materials
from mes.materials.models import Item
from mes.oee import operations as oee
from mes.users import operations as users
from mes.validation import (
    ID_JSON_PATTERN,
    ID_MAX,
    ID_RE,
    NAME_MAX,
    SHORT_MAX,
    TEXT_MAX,
    get_or_404,
    identifier,
    optional_text,
    required_text,
)

SUP = Actor("supervisor1", "Supervisor One", "supervisor", "QA-WS-01")
MES = Path(__file__).resolve().parents[1] / "mes"


@pytest.mark.parametrize("value", ["L-1", "API-PARA", "b.2026_01", "7", "A" * ID_MAX, "  LOT-9  "])
def test_an_id_is_1_to_64_ascii_letters_digits_dots_dashes_or_underscores(value: str) -> None:
    assert identifier(value, "lot id", "id") == value.strip()
    assert re.fullmatch(ID_JSON_PATTERN, value.strip())


@pytest.mark.parametrize("value", ["", "   ", None, "-L1", ".L1", "_L1", "L 1", "L/1", "Lü", "A" * (ID_MAX + 1), 12])
def test_anything_else_is_not_an_id(value: object) -> None:
    with pytest.raises(ValidationFailed, match="A lot id is 1 to 64 letters") as refused:
        identifier(value, "lot id", "lot_id")
    assert refused.value.extra["field"] == "lot_id"
    assert not (isinstance(value, str) and ID_RE.fullmatch(value.strip()))


def test_required_text_is_required_and_stripped() -> None:
    assert required_text("  broken seal  ", "A reason", "reason") == "broken seal"
    for missing in (None, "", "   \n"):
        with pytest.raises(ValidationFailed, match="^A reason is required.$"):
            required_text(missing, "A reason", "reason")
    with pytest.raises(ValidationFailed, match="must be text"):
        required_text(42, "A reason", "reason")


def test_text_is_capped_never_cut_short() -> None:
    assert required_text("x" * TEXT_MAX, "A reason", "reason") == "x" * TEXT_MAX
    with pytest.raises(ValidationFailed, match=f"A reason is at most {TEXT_MAX} characters"):
        required_text("x" * (TEXT_MAX + 1), "A reason", "reason")
    with pytest.raises(ValidationFailed, match=f"The name is at most {NAME_MAX} characters"):
        required_text("x" * (NAME_MAX + 1), "The name", "name", NAME_MAX)
    with pytest.raises(ValidationFailed, match=f"The location is at most {SHORT_MAX} characters"):
        optional_text("x" * (SHORT_MAX + 1), "The location", "location")


def test_optional_text_blank_is_none() -> None:
    assert optional_text(None, "The location", "location") is None
    assert optional_text("  ", "The location", "location") is None
    assert optional_text(" Room 2 ", "The location", "location") == "Room 2"
    with pytest.raises(ValidationFailed, match="must be text"):
        optional_text(["Room 2"], "The location", "location")


def test_every_feature_caps_text_the_same_way(app: Flask) -> None:
    """Materials had no cap: a 201-character item name reached the database."""
    with pytest.raises(ValidationFailed, match=f"at most {NAME_MAX}"):
        materials.create_item(SUP, "X-1", "n" * (NAME_MAX + 1), "kg", "api")
    materials.create_item(SUP, "X-1", "Item X", "kg", "api")
    with pytest.raises(ValidationFailed, match=f"at most {NAME_MAX}"):
        materials.receive_lot(SUP, "X-1", [materials.ContainerIn("1", "kg")], supplier="s" * (NAME_MAX + 1))
    with pytest.raises(ValidationFailed, match=f"at most {SHORT_MAX}"):
        materials.receive_lot(SUP, "X-1", [materials.ContainerIn("1", "kg")], location="r" * (SHORT_MAX + 1))
    with pytest.raises(ValidationFailed, match=f"at most {NAME_MAX}"):
        equipment.register_equipment(SUP, "BL-1", "vessel", "blender", "d" * (NAME_MAX + 1))
    with pytest.raises(ValidationFailed, match=f"at most {TEXT_MAX}"):
        oee.assign_downtime_reason(SUP, "any", "jam", comment="c" * (TEXT_MAX + 1))
    with pytest.raises(ValidationFailed, match="A terminal id is 1 to 64"):
        users.register_terminal(SUP, "K" * (ID_MAX + 1), "kiosk")
    with pytest.raises(ValidationFailed, match="A user id is 1 to 64"):
        users.create_user(SUP, "-admin", "Someone", {"qa"}, password="An0ther-Good-One")


def test_get_or_404_finds_the_row_or_says_plainly_it_is_not_known(app: Flask) -> None:
    materials.create_item(SUP, "X-1", "Item X", "kg", "api")
    assert get_or_404(Item, "X-1", "Item").name == "Item X"
    with pytest.raises(NotFound, match=r"^Item X-2 is not known\.$"):
        get_or_404(Item, "X-2", "Item")
    with pytest.raises(NotFound, match=r"^Item None is not known\.$"):
        get_or_404(Item, None, "Item")
    with pytest.raises(NotFound, match=r"^Lot L-9 is not known to the MES\.$"):
        materials.get_lot("L-9")
    with pytest.raises(NotFound, match=r"^User nobody is not known\.$"):
        users.get_user("nobody")
    with pytest.raises(NotFound, match=r"^Equipment EQ-9 is not registered\.$"):
        equipment.get_equipment("EQ-9")


def test_the_id_rule_and_the_helpers_have_one_home() -> None:
    """No feature package keeps its own copy of the id pattern or of _id/_text/_optional."""
    copies = []
    for path in MES.rglob("*.py"):
        rel = path.relative_to(MES).as_posix()
        if rel in {"validation.py", "recipes/schema.py"}:
            continue
        source = path.read_text(encoding="utf-8")
        if "[A-Za-z0-9][A-Za-z0-9._-]{0,63}" in source or re.search(r"^def _(id|text|optional)\(value", source, re.M):
            copies.append(rel)
    assert copies == []
