"""Builds valid audit logs and exports for tests, and re-signs tampered ones."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mes.audit import checkpoint as cpm
from mes.audit.canonical import ZERO_HASH, build_entry, canonical_bytes, format_at
from mes.audit.merkle import MerkleTree, leaf_hash

SITE = "test-site.example"
NAME = cpm.key_name(SITE)
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def signing_key(seed: int = 7) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def vkey(key: Ed25519PrivateKey, name: str = NAME) -> str:
    return cpm.vkey_text(name, cpm.public_key_bytes(key))


def entry_dict(i: int, prev: str, *, batch: str | None = None, at: datetime | None = None) -> dict[str, Any]:
    """A varied but valid entry: flat after/before, e-signatures, escapes, arrays, nesting."""
    at = at or T0 + timedelta(seconds=i, microseconds=i)
    actor = {"id": f"u-{i % 5:04d}", "name": ["Jane Doe", "Li Wei 李伟", "Max Müller"][i % 3], "role": "operator"}
    kind = i % 7
    kw: dict[str, Any] = {"terminal": f"KIOSK-{i % 3:02d}" if i % 4 else None, "batch": batch}
    if kind == 0:
        action, entity = "batch.step.completed", {"type": "batch_step", "id": f"{batch}/{i}"}
        kw["after"] = {"device": "SCALE-01", "unit": "kg", "value": f"{i}.50"}
    elif kind == 1:
        action, entity = "material.consumed", {"type": "consumption", "id": f"C-{i}"}
        kw["after"] = {"lot": "L-1", "qty": "12.50", "unit": "kg", "count": i, "ok": True}
    elif kind == 2:
        action, entity = "deviation.raised", {"type": "deviation", "id": f"DEV-{i}"}
        kw["after"] = {"text": f"Mixing time {i} min < 15 min \"minimum\"\n(tab\there) \u0001"}
    elif kind == 3:
        action, entity = "deviation.dispositioned", {"type": "deviation", "id": f"DEV-{i - 1}"}
        kw.update(before={"status": "open"}, after={"status": "closed"}, reason="Within validated range")
    elif kind == 4:
        action, entity = "esig.signed", {"type": "deviation", "id": f"DEV-{i - 2}"}
        kw["signature"] = {"signer": actor["id"], "name": actor["name"], "meaning": "approved",
                           "record_hash": "ab" * 32, "at": format_at(at)}
    elif kind == 5:
        action, entity = "lot.hold.placed", {"type": "lot", "id": f"L-{i}"}
        kw.update(before={"holds": []}, after={"holds": ["H-9", f"H-{i}"]}, reason="QMS NCR-311")
    else:
        action, entity = "recipe.parameter.changed", {"type": "recipe", "id": f"R-{i}"}
        kw.update(before={"limits": {"max": "15.0", "min": "10.0"}}, after={"limits": {"max": "16.0", "min": "10.0"}},
                  reason="change control CC-12")
    return build_entry(seq=i, prev=prev, at=at, actor=actor, action=action, entity=entity, **kw)


def make_lines(n: int, *, batch_of: Callable[[int], str | None] = lambda i: "B-1" if i % 3 else "B-2",
               edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[bytes]:
    """``n`` chained, canonical entry lines (without newlines)."""
    prev = ZERO_HASH
    out = []
    for i in range(n):
        e = entry_dict(i, prev, batch=batch_of(i))
        if edit is not None:
            e = edit(e)
        b = canonical_bytes(e)
        out.append(b)
        prev = leaf_hash(b).hex()
    return out


def rechain(lines: Sequence[bytes]) -> list[bytes]:
    """Re-point every ``prev`` at the line before (after a deliberate change)."""
    prev = ZERO_HASH
    out = []
    for line in lines:
        e = json.loads(line)
        e["prev"] = prev
        b = json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        out.append(b)
        prev = leaf_hash(b).hex()
    return out


def note(key: Ed25519PrivateKey, size: int, root: bytes, time: datetime, name: str = NAME) -> str:
    return cpm.sign_checkpoint(cpm.checkpoint_body(name, size, root, time), name, key)


def checkpoints_for(lines: Sequence[bytes], key: Ed25519PrivateKey, sizes: Iterable[int]) -> list[str]:
    tree = MerkleTree.from_leaf_hashes(leaf_hash(b) for b in lines)
    return [note(key, s, tree.root(s), T0 + timedelta(seconds=s)) for s in sizes]


def default_sizes(n: int, every: int = 10) -> list[int]:
    return sorted(set(list(range(every, n, every)) + [n]))


def export_files(lines: Sequence[bytes], key: Ed25519PrivateKey, sizes: Iterable[int] | None = None,
                 notes: list[str] | None = None) -> dict[str, bytes]:
    """The files of a full export (§4) in memory."""
    if notes is None:
        notes = checkpoints_for(lines, key, default_sizes(len(lines)) if sizes is None else sizes)
    return {
        "entries.jsonl": b"".join(b + b"\n" for b in lines),
        "checkpoint": notes[-1].encode(),
        "checkpoints.jsonl": "".join(json.dumps(n) + "\n" for n in notes).encode(),
        "log.vkey": (vkey(key) + "\n").encode(),
    }


def batch_files(lines: Sequence[bytes], key: Ed25519PrivateKey, batch: str) -> dict[str, bytes]:
    """The files of a ``--batch`` export: that batch's entries and their proofs."""
    tree = MerkleTree.from_leaf_hashes(leaf_hash(b) for b in lines)
    cp = note(key, len(lines), tree.root(), T0 + timedelta(seconds=len(lines)))
    picked = [(i, b) for i, b in enumerate(lines) if json.loads(b)["batch"] == batch]
    proofs = {"checkpoint": cp,
              "entries": [{"seq": i, "proof": [h.hex() for h in tree.inclusion_proof(i)]} for i, _ in picked]}
    return {
        "entries.jsonl": b"".join(b + b"\n" for _, b in picked),
        "proofs.json": json.dumps(proofs, indent=1).encode(),
        "log.vkey": (vkey(key) + "\n").encode(),
    }


def write(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory
