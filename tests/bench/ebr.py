"""Benchmark the signed eBR of a released batch beside rendering the same content unsigned.

Runs a batch of ``--steps`` steps (the packing recipe with in-process checks added, two of
them corrected) through the service layer to release, which generates, signs and stores the
eBR once. Then it times, ``--repeats`` times each in the same run: the whole generation as
release does it (audit proof bundle, JSON eBR, PDF/A-3b with the embedded files, PAdES
signature) against the baseline, printing the same JSON content to PDF without bundle or
signature. Prints ONE JSON object. Target: generation and signing <= 3 s at 300 steps.

    python -m tests.bench.ebr [--db sqlite|postgresql] [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.bench.common import bench_database, parser, ratio

TARGET_S = 3.0


def recipe(steps: int) -> str:
    """The packing recipe with ``steps`` steps in all (in-process checks added before the output)."""
    from tests.execution_helpers import PACK_RECIPE

    checks = "".join(f"""          - id: check_{i:03d}
            kind: numeric
            title: In-process check {i}
            instruction: Record the tablet hardness of sample {i} (称量 check).
            unit: N
            precision: 0
            low: "80"
            target: "100"
            high: "120"
""" for i in range(max(0, steps - 3)))
    return PACK_RECIPE.replace("          - id: packed_out\n", checks + "          - id: packed_out\n")


def released(steps: int) -> tuple[str, float]:
    """Run a batch of ``steps`` steps to release; the batch id and the release call's time."""
    from mes.execution import operations as ex
    from mes.execution import recipes_store as store
    from tests.execution_helpers import effective_recipe, independent_signer, make_world, review_exceptions, run_until, start, stock

    mp = pytest.MonkeyPatch()
    world = make_world(mp)
    rv = effective_recipe(world, recipe(steps), "bench-ebr.yaml")
    stock(world, store.master_of(store.get_version(rv)))
    batch_id = start(world, rv, "10.000", "kg")
    values = {f"check_{i:03d}": {"value": str(95 + i % 10)} for i in range(steps)}
    values["packed_out"] = {"quantity": "9.900", "unit": "kg", "lot_id": "LOT-FG-BENCH-001"}
    run_until(world, batch_id, overrides=values)
    for i in range(min(2, max(0, steps - 3))):
        rec = [r for r in ex.records_of(batch_id) if r.batch_step_id == f"{batch_id}:check_{i:03d}" and r.kind == "value"][0]
        ex.correct_value(world.actor("operator"), batch_id, rec.id, "101", "transcription error")
    from mes.audit.review import review_trail

    review_exceptions(world, batch_id)  # the corrections are exceptions QA reviews by exception
    review_trail(*independent_signer(world, batch_id), batch_id, "trail reviewed", "QA-WS-01")
    ex.review_batch(*independent_signer(world, batch_id), batch_id, terminal="QA-WS-01")
    t = time.perf_counter()
    ex.release_batch(*independent_signer(world, batch_id), batch_id, "released", terminal="QA-WS-01")
    took = time.perf_counter() - t
    mp.undo()
    return batch_id, took


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from mes.app import create_app
    from mes.cli import upgrade_database
    from mes.db import db
    from mes.ebr import content, operations, render

    with bench_database(args.db) as url, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "MES_HOME": str(home), "SECRET_KEY": "bench",
                          "MES_AUDIT_KEY_PATH": str(home / "audit-signing.key"), "SESSION_COOKIE_SECURE": False,
                          "MES_LOG_LEVEL": "ERROR", "MES_ARGON2_TIME_COST": 1, "MES_ARGON2_MEMORY_KIB": 8,
                          "MES_ARGON2_PARALLELISM": 1})
        upgrade_database(app)
        with app.app_context():
            t = time.perf_counter()
            batch_id, release_s = released(args.steps)
            setup_s = time.perf_counter() - t
            signed, parts = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                made = operations.generate(batch_id)
                signed.append(time.perf_counter() - t)
                parts.append(made.timings)
                db.session.rollback()
            font = render.find_font()
            doc = json.loads(made.json_bytes)
            unsigned = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                render.render(doc, {}, font=font, created=operations.ex.clock())
                unsigned.append(time.perf_counter() - t)
            stored = operations.stored(batch_id).pdf
            pages = subprocess.run(["pdfinfo", "-"], input=stored, capture_output=True, timeout=60).stdout.decode()
            n_pages = next((int(line.split()[-1]) for line in pages.splitlines() if line.startswith("Pages:")), None)
            steps = len(doc["steps"])
            content.to_bytes(doc)
    med = {k: round(statistics.median(p[k] for p in parts), 3) for k in parts[0]}
    signed_s, unsigned_s = statistics.median(signed), statistics.median(unsigned)
    print(json.dumps({
        "benchmark": "ebr", "db": args.db, "steps": steps, "pages": n_pages, "pdf_bytes": len(stored),
        "repeats": args.repeats,
        "signed_generation_s": round(signed_s, 3), "unsigned_render_s": round(unsigned_s, 3),
        "ratio_signed_to_unsigned": ratio(signed_s, unsigned_s), "parts_s": med,
        "release_call_s": round(release_s, 3), "setup_s": round(setup_s, 1),
        "target_s": TARGET_S, "within_target": signed_s <= TARGET_S,
    }))


if __name__ == "__main__":
    main()
