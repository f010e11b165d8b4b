"""Check 5 of §5 over published checkpoints (``checkpoints.jsonl`` or the database's
checkpoint table) against the log's Merkle tree; shared by the export verifier
(:mod:`mes.audit.verify`, which re-exports the public names) and the database check."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from mes.audit.checkpoint import Checkpoint, CheckpointError, VerifierKey, verify_checkpoint
from mes.audit.merkle import MerkleTree


def _note_lines(data: bytes, fname: str, errors: list[tuple[int | None, str]]) -> list[str] | None:
    """The note texts of a ``checkpoints.jsonl``: one ``json.dumps(note)`` per line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.append((None, f"{fname}: not valid UTF-8 at byte {exc.start}"))
        return None
    if text and not text.endswith("\n"):
        errors.append((None, f"{fname}: the last line does not end with a newline"))
        return None
    notes = []
    for n, line in enumerate(text.split("\n")[:-1], 1):
        try:
            note = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append((None, f"{fname} line {n}: not a JSON string: {exc.msg}"))
            return None
        if not isinstance(note, str) or line not in (json.dumps(note), json.dumps(note, ensure_ascii=False)):
            errors.append((None, f"{fname} line {n}: must be the note text as one JSON string, "
                                 "written as json.dumps writes it"))
            return None
        notes.append(note)
    return notes


def verify_checkpoint_history(notes: Sequence[str], vkeys: Sequence[VerifierKey], tree: MerkleTree | None,
                              *, label: str = "checkpoints.jsonl") -> tuple[list[Checkpoint | None], list[str]]:
    """Check 5 of §5 over published checkpoints, oldest first: each verifies with
    ``vkeys``, times and sizes never go backwards, equal sizes have equal roots, and (given
    the ``tree`` of the log's entries) each size is covered and each root equals the MTH of
    the first ``size`` entries. Returns the parsed checkpoints (None where invalid) and the
    errors. Reusable against the database's checkpoint table."""
    errors: list[str] = []
    out: list[Checkpoint | None] = []
    last: Checkpoint | None = None
    for n, note in enumerate(notes, 1):
        where = f"{label} line {n}"
        try:
            cp = verify_checkpoint(note, vkeys)
        except CheckpointError as exc:
            errors.append(f"{where}: {exc}")
            out.append(None)
            continue
        out.append(cp)
        if last is not None:
            if cp.time < last.time:
                errors.append(f"{where}: time {cp.time:%Y-%m-%dT%H:%M:%SZ} goes back from the checkpoint before "
                              f"({last.time:%Y-%m-%dT%H:%M:%SZ})")
            if cp.size < last.size:
                errors.append(f"{where}: tree size {cp.size} is smaller than the checkpoint before ({last.size})")
            if cp.size == last.size and cp.root != last.root:
                errors.append(f"{where}: same tree size {cp.size} as the checkpoint before but a different root")
            if cp.origin != last.origin:
                errors.append(f"{where}: origin {cp.origin!r} differs from the checkpoint before")
        last = cp
        if tree is not None:
            if cp.size > tree.size:
                errors.append(f"{where}: covers {cp.size} entries but there are only {tree.size}")
            elif cp.root != tree.root(cp.size):
                errors.append(f"{where}: root is not the MTH of the first {cp.size} entries "
                              "(inconsistent with the log)")
    return out, errors


def first_unprovable(checkpoints: Iterable[Checkpoint | None], tree: MerkleTree) -> int | None:
    """When only checkpoints disagree with the entries: the first seq that no consistent
    checkpoint vouches for (the size of the largest consistent one before the first
    inconsistent one, or the entry count if a checkpoint covers missing entries). None if
    every checkpoint is consistent."""
    good = 0
    for cp in checkpoints:
        if cp is None:
            continue
        if cp.size > tree.size:
            return tree.size
        if cp.root != tree.root(cp.size):
            return good
        good = max(good, cp.size)
    return None
