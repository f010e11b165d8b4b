"""Throughput of the export verifier on realistic entries (not collected by pytest).

    .venv/bin/python -m tests.audit.bench_verify --entries 1000000 --dir /tmp/audit-bench

Writes (once) a full export of ``--entries`` entries of about 450 bytes each, with a signed
checkpoint every 1000 entries, then times ``verify_export`` on it ``--runs`` times and
prints entries/s, wall and CPU seconds (parent and workers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mes.audit import checkpoint as cpm
from mes.audit.canonical import ZERO_HASH, format_at
from mes.audit.merkle import MerkleTree
from mes.audit.verify import verify_export

ACTIONS = ["batch.step.completed", "material.consumed", "lot.hold.placed", "deviation.raised", "batch.started"]
NAMES = ["Jane Doe", "Li Wei 李伟", "Max Müller"]


def generate(directory: Path, n: int) -> None:
    rnd = random.Random(1)
    directory.mkdir(parents=True, exist_ok=True)
    prev, t = ZERO_HASH, datetime(2026, 11, 23, 10, tzinfo=UTC)
    tree = MerkleTree()
    leaves: list[bytes] = []
    with open(directory / "entries.jsonl", "wb") as f:
        for i in range(n):
            t += timedelta(microseconds=rnd.randint(1, 5_000_000))
            e = {"v": "mes.audit.entry/v1", "seq": i, "prev": prev, "at": format_at(t),
                 "actor": {"id": f"u-{rnd.randint(1, 200):04d}", "name": rnd.choice(NAMES), "role": "operator"},
                 "terminal": f"KIOSK-{rnd.randint(1, 20):02d}", "action": rnd.choice(ACTIONS),
                 "entity": {"type": "batch_step", "id": f"B-2026-{rnd.randint(1, 999):04d}/{rnd.randint(1, 30)}"},
                 "batch": f"B-2026-{rnd.randint(1, 999):04d}", "before": None,
                 "after": {"device": "SCALE-01", "lot": f"L-API-{rnd.randint(1, 999):04d}", "unit": "kg",
                           "value": f"{rnd.randint(0, 99)}.{rnd.randint(0, 99):02d}"},
                 "reason": None, "signature": None}
            b = json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            leaf = hashlib.sha256(b"\x00" + b).digest()
            leaves.append(leaf)
            prev = leaf.hex()
            f.write(b + b"\n")
            if len(leaves) == 65536:
                tree.extend(leaves)
                leaves.clear()
    tree.extend(leaves)
    key = Ed25519PrivateKey.from_private_bytes(b"\x42" * 32)
    name = cpm.key_name("bench.example")
    notes = []
    sizes = sorted(set(range(1000, n, 1000)) | {n})
    for k, size in enumerate(sizes):
        body = cpm.checkpoint_body(name, size, tree.root(size), datetime(2026, 11, 23, tzinfo=UTC)
                                   + timedelta(seconds=60 * k))
        notes.append(cpm.sign_checkpoint(body, name, key))
    (directory / "checkpoints.jsonl").write_text("".join(json.dumps(x) + "\n" for x in notes))
    (directory / "checkpoint").write_text(notes[-1])
    (directory / "log.vkey").write_text(cpm.vkey_text(name, cpm.public_key_bytes(key)) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/audit-bench"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    marker = args.dir / f".generated-{args.entries}"
    if not marker.exists():
        t = time.perf_counter()
        generate(args.dir, args.entries)
        marker.touch()
        print(f"generated {args.entries} entries in {time.perf_counter() - t:.1f}s "
              f"({(args.dir / 'entries.jsonl').stat().st_size / args.entries:.0f} bytes/entry)")
    for _ in range(args.runs):
        t, c, before = time.perf_counter(), time.process_time(), os.times()
        result = verify_export(args.dir, workers=args.workers)
        wall, after = time.perf_counter() - t, os.times()
        children = (after.children_user + after.children_system) - (before.children_user + before.children_system)
        assert result.ok, result.errors[:3]
        print(f"{result.entries} entries in {wall:.2f}s = {result.entries / wall:,.0f} entries/s "
              f"(cpu: parent {time.process_time() - c:.2f}s, workers {children:.2f}s; "
              f"load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
