"""Issue 14: a plant adds a unit without code and an item may be counted in it; the database
keeps no closed list of units, the service layer checks each against the plant's units."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from mes.audit.log import Actor
from mes.errors import ValidationFailed
from mes.materials import operations as ops

SUP = Actor("supervisor1", "Supervisor One", "supervisor", "QA-WS-01")

PLANT_UNITS = """\
box = 12 * piece = box = boxes
cubic_metre = metre ** 3 = m3 = cubic_meter
"""

# runs with MES_UNITS_FILE naming the plant's file (the units are read once, at start)
_RECEIVE_IN_PLANT_UNITS = """
import sys
from pathlib import Path
from mes import quantities as q
from mes.app import create_app
from mes.audit.log import Actor
from mes.db import db
from mes.errors import ValidationFailed
from mes.materials import operations as ops
from tests.conftest import base_config

sup = Actor("supervisor1", "Supervisor One", "supervisor", "QA-WS-01")
app = create_app(base_config(Path(sys.argv[1]), sys.argv[2]))
with app.app_context():
    ops.create_item(sup, "CAP-BOX", "Capsules, boxed", "box", "packaging")
    ops.create_item(sup, "N2", "Nitrogen", "m3", "raw_material")
    ops.receive_lot(sup, "CAP-BOX", [ops.ContainerIn("2.5", "box", "C-BOX-1")], lot_id="L-BOX")
    ops.receive_lot(sup, "N2", [ops.ContainerIn("0.002", "m3", "C-N2-1")], lot_id="L-N2")
    for lot in ("L-BOX", "L-N2"):
        stock, uom = ops.lot_remaining(lot)
        (container,) = ops.containers_of(lot)
        print(lot, stock, uom, q.fmt(container.remaining_qty), container.storage_uom)
    try:
        ops.create_item(sup, "CAP-CRATE", "Capsules, crated", "crate", "packaging")
    except ValidationFailed as exc:
        print("refused:", exc)
    db.session.remove()
    db.engine.dispose()
"""


def test_a_plant_unit_from_its_units_file_can_be_an_items_base_unit(database_url: str, tmp_path: Path) -> None:
    """An item counted in a unit from MES_UNITS_FILE is created and received on both databases."""
    plant = tmp_path / "plant-units.txt"
    plant.write_text(PLANT_UNITS, encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "MES_UNITS_FILE": str(plant)}
    out = subprocess.run([sys.executable, "-c", _RECEIVE_IN_PLANT_UNITS, str(home), database_url], env=env,
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["L-BOX 2.5 box 30 pcs", "L-N2 0.002 m3 2000 mL"]
    assert lines[2].startswith("refused: The base unit 'crate' is not a known unit.")
    assert "box" in lines[2] and "m3" in lines[2]  # the plant's units are among those offered


def test_an_items_base_unit_is_checked_against_the_plant_units(app: Flask) -> None:
    """Unknown units and units that do not count material are refused with a sentence."""
    for unit, sentence in (
        ("crate", "The base unit 'crate' is not a known unit. An item is counted in one of mg, g, kg"),
        ("ml", "The base unit 'ml' is not a known unit. Did you mean mL?"),
        ("bar", "The base unit bar measures pressure; an item is counted in a unit of mass, volume or count"),
        ("CFU", "The base unit CFU measures colonies;"),
        ("", "The base unit is required."),
    ):
        with pytest.raises(ValidationFailed) as refused:
            ops.create_item(SUP, "X-1", "Something", unit, "raw_material")
        assert str(refused.value).startswith(sentence), str(refused.value)
    assert ops.create_item(SUP, "X-1", "Something", "kg", "raw_material").base_uom == "kg"
