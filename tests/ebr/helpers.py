"""A small released batch for the eBR tests (the packing recipe, with a Chinese instruction
and an in-process check that gets corrected), and the outside tools that check its PDF."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from mes.execution import operations as ex
from mes.execution import recipes_store as store
from tests.execution_helpers import PACK_RECIPE, effective_recipe, make_world, review_and_release, run_until, start, stock

CJK_INSTRUCTION = "称量散装片剂并倒入料斗。 Weigh the bulk tablets into the hopper."
CHECK_STEP = """          - id: hopper_temp
            kind: numeric
            title: Hopper temperature
            instruction: Record the hopper temperature.
            unit: °C
            precision: 0
            low: "15"
            target: "20"
            high: "25"
"""
RECIPE = PACK_RECIPE.replace("Weigh the bulk tablets into the hopper.", CJK_INSTRUCTION).replace(
    "          - id: packed_out\n", CHECK_STEP + "          - id: packed_out\n")
OUTPUT = {"packed_out": {"quantity": "9.900", "unit": "kg", "lot_id": "LOT-FG-EBR-001"},
          "hopper_temp": {"value": "21"}}


def released_batch(monkeypatch: Any) -> tuple[Any, str]:
    """A packing batch run to release through the service layer, with one corrected value."""
    world = make_world(monkeypatch)
    rv = effective_recipe(world, RECIPE, "pack-ebr.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    run_until(world, batch_id, stop_before="packed_out", overrides=OUTPUT)
    old = [r for r in ex.records_of(batch_id) if r.batch_step_id == f"{batch_id}:hopper_temp" and r.kind == "value"][0]
    ex.correct_value(world.actor("operator"), batch_id, old.id, "22", "transcription error: display showed 22")
    run_until(world, batch_id, overrides=OUTPUT)
    review_and_release(world, batch_id)
    return world, batch_id


def nss_db(directory: Path, ca_pem: Path) -> str:
    """An NSS database made here with certutil that trusts only the plant CA; its pdfsig spec."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = f"sql:{directory}"
    subprocess.run(["certutil", "-N", "-d", spec, "--empty-password"], check=True, capture_output=True, timeout=60)
    subprocess.run(["certutil", "-A", "-d", spec, "-n", "plant-ca", "-t", "CT,C,C", "-i", str(ca_pem)], check=True,
                   capture_output=True, timeout=60)
    return spec


def pdfsig(pdf: Path, nss: str) -> str:
    """poppler's own verdict on the PDF's signatures."""
    done = subprocess.run(["pdfsig", "-nssdir", nss, str(pdf)], capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def one_byte_changed(pdf: bytes) -> bytes:
    """The PDF with a single byte of its first page's content stream changed."""
    at = pdf.index(b"stream", pdf.index(b"/Contents")) + 40
    return pdf[:at] + bytes([pdf[at] ^ 0x01]) + pdf[at + 1:]
