"""Independent verifier of audit exports (spec §5), and its streaming core.

``python -m mes.audit.verify DIR`` prints one line and exits 1 if anything is wrong.
It needs nothing but the export folder (and ``cryptography``): no database, no MES
configuration.

Full export (no ``proofs.json``): checks 1–5 of §5 over ``entries.jsonl``, ``checkpoint``,
``checkpoints.jsonl`` and ``log.vkey``. Beyond the letter of §5 it also requires that the
last line of ``checkpoints.jsonl`` is the ``checkpoint`` file (the latest checkpoint is one
of "every checkpoint ever published"), that tree sizes never shrink from one checkpoint to
the next, and that ``checkpoints.jsonl`` lines are written exactly as ``json.dumps`` writes
them, so that no byte of any file can change unnoticed.

Batch export (``proofs.json`` present): ``entries.jsonl`` holds some entries of the log, in
seq order but with gaps. Decision (documented here because §5 leaves it open):

* check 1 applies to every line; all lines must have the same non-null ``batch``;
* check 2 becomes: ``seq`` strictly increases; where two lines have consecutive ``seq``,
  ``prev`` must equal the leaf hash of the line before, and ``seq`` 0 must have the zero
  ``prev`` (across a gap the chain cannot be checked: the proofs take over);
* check 3 applies across all lines (``at`` is monotonic in ``seq`` in the whole log);
* checks 4 and 6: the checkpoint inside ``proofs.json`` must verify with ``log.vkey`` and
  each line needs exactly one proof, in order, with the same ``seq``, ``seq < size`` and an
  RFC 9162 inclusion proof that verifies against that checkpoint's root;
* ``checkpoint`` and ``checkpoints.jsonl`` are optional; if present they must verify, be
  in order (times and sizes never go backwards, equal sizes have equal roots, the latest is
  the last line), and the proofs' checkpoint must be one of them. Their consistency with
  each other cannot be checked without the other entries.

``log.vkey`` may hold several verifier keys, one per line (after a key rotation); a
checkpoint must verify with the key its signature line names.

``first_bad_seq``: the first entry that fails a check (for a chain break, the entry whose
``prev`` no longer matches; for missing entries, the first missing seq). When only the
checkpoints disagree with otherwise valid entries, it is the first seq that no consistent
checkpoint vouches for (see :func:`first_unprovable`). A checkpoint's ``time`` is not
compared with the entries' ``at`` (different clocks may write them); only checkpoint times
among themselves must not go backwards.

Performance: see :mod:`mes.audit.entry_stream` (the streaming and parallel core, with
:mod:`mes.audit.entry_blocks` and :mod:`mes.audit.entry_pattern`); checkpoint history
checks are in :mod:`mes.audit.checkpoint_history`. This module verifies whole exports and
re-exports the public names of those modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mes.audit.canonical import ZERO_HASH, AuditValueError, parse_entry
from mes.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    VerifierKey,
    parse_vkeys,
    verify_checkpoint,
)
from mes.audit.checkpoint_history import _note_lines, first_unprovable, verify_checkpoint_history
from mes.audit.entry_pattern import fast_entry_fields
from mes.audit.entry_stream import StreamResult, verify_entries_bytes, verify_entries_file, verify_entry_stream
from mes.audit.merkle import verify_inclusion
from mes.witness.cosignature import WitnessKey, cosigned_by, parse_witness_vkeys

__all__ = [
    "VerifyResult", "StreamResult", "verify_export", "verify_export_files", "verify_entry_stream",
    "verify_entries_file", "verify_entries_bytes", "verify_checkpoint_history", "first_unprovable",
    "fast_entry_fields", "main",
]

# ------------------------------------------------------------------------ exports


@dataclass
class VerifyResult:
    """Outcome of verifying an export."""

    ok: bool
    entries: int
    first_bad_seq: int | None
    errors: list[str] = field(default_factory=list)
    batch: str | None = None
    checkpoint: Checkpoint | None = None

    def summary(self) -> str:
        """One line for people and logs."""
        kind = f"batch export of {self.batch}" if self.batch else "export"
        if self.ok:
            cp = self.checkpoint
            tail = f", checkpoint size {cp.size} root {cp.root.hex()}" if cp else ""
            return f"OK: {kind}, {self.entries} entries verified{tail}"
        where = f", first bad seq {self.first_bad_seq}" if self.first_bad_seq is not None else ""
        more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"FAILED: {kind}, {self.entries} entries{where}: {self.errors[0]}{more}"


class _Report:
    def __init__(self) -> None:
        self.items: list[tuple[int | None, str]] = []
        self.first_bad: int | None = None

    def add(self, message: str, seq: int | None = None) -> None:
        self.items.append((seq, message))
        self.locate(seq)

    def locate(self, seq: int | None) -> None:
        if seq is not None and (self.first_bad is None or seq < self.first_bad):
            self.first_bad = seq

    def result(self, entries: int, batch: str | None, cp: Checkpoint | None) -> VerifyResult:
        return VerifyResult(not self.items, entries, self.first_bad, [m for _, m in self.items], batch,
                            cp if not self.items else None)


def _text(data: bytes, fname: str, report: _Report) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add(f"{fname}: not valid UTF-8 at byte {exc.start}")
        return None


def _verify(read: Callable[[str], bytes | None], entries: Callable[[], StreamResult | None],
            entries_data: Callable[[], bytes | None], extra_vkeys: Iterable[str | VerifierKey],
            witnesses_required: int | None = None) -> VerifyResult:
    """Shared by folder and in-memory exports. ``entries()`` verifies ``entries.jsonl`` as a
    stream (None if missing); ``entries_data()`` returns its bytes (batch exports)."""
    report = _Report()
    vkeys: list[VerifierKey] = []
    raw = read("log.vkey")
    if raw is None:
        report.add("log.vkey is missing")
    else:
        text = _text(raw, "log.vkey", report)
        if text is not None and not text.endswith("\n"):
            report.add("log.vkey: every line must end with a newline")
        elif text is not None:
            try:
                vkeys = parse_vkeys(text)
            except CheckpointError as exc:
                report.add(f"log.vkey: {exc}")
    for k in extra_vkeys:
        vkeys.extend(parse_vkeys(k) if isinstance(k, str) else [k])
    witness_keys = _witness_keys(read, report)
    proofs_raw = read("proofs.json")
    if proofs_raw is not None:
        result = _verify_batch(read, entries_data, proofs_raw, vkeys, report)
        return _require_cosignatures(result, witness_keys, witnesses_required, report, read, batch=True)

    stream = entries()
    if stream is None:
        report.add("entries.jsonl is missing")
        return report.result(0, None, None)
    for message in stream.errors:
        report.add(f"entries.jsonl: {message}")
    report.locate(stream.first_bad_seq)
    count = stream.entries
    latest: Checkpoint | None = None
    cp_raw = read("checkpoint")
    cp_text = None
    if cp_raw is None:
        report.add("checkpoint is missing")
    else:
        cp_text = _text(cp_raw, "checkpoint", report)
        if cp_text is not None:
            if not vkeys:
                report.add("checkpoint: cannot be verified without a verifier key")
            else:
                try:
                    latest = verify_checkpoint(cp_text, vkeys)
                except CheckpointError as exc:
                    report.add(f"checkpoint: {exc}")
    if latest is not None:
        if latest.size > count:
            report.add(f"checkpoint covers {latest.size} entries but entries.jsonl has {count}: "
                       f"entries from seq {count} on are missing", count)
        elif latest.size < count:
            report.add(f"entries.jsonl has {count} entries but the checkpoint covers only {latest.size}",
                       latest.size)
        if latest.size <= count and latest.root != stream.tree.root(latest.size):
            report.add(f"checkpoint root is not the MTH of the first {latest.size} entries")
    hist_raw = read("checkpoints.jsonl")
    parsed: list[Checkpoint | None] = []
    if hist_raw is None:
        report.add("checkpoints.jsonl is missing")
    else:
        errs: list[tuple[int | None, str]] = []
        notes = _note_lines(hist_raw, "checkpoints.jsonl", errs)
        for seq, message in errs:
            report.add(message, seq)
        if notes is not None:
            if vkeys:
                parsed, herrs = verify_checkpoint_history(notes, vkeys, stream.tree)
                for message in herrs:
                    report.add(message)
            if cp_text is not None and (not notes or notes[-1] != cp_text):
                report.add("checkpoints.jsonl: its last line is not the checkpoint file (the latest published "
                           "checkpoint)")
    if latest is not None:
        _check_cosignatures(latest, witness_keys, witnesses_required, report)
    if report.items and report.first_bad is None:
        report.locate(first_unprovable([*parsed, latest], stream.tree))
    return report.result(count, None, latest)


def _witness_keys(read: Callable[[str], bytes | None], report: _Report) -> list[WitnessKey]:
    """The export's ``witnesses`` file (spec §6): witness verifier keys, one per line, each
    line ending in exactly one newline; an empty file lists none."""
    raw = read("witnesses")
    if raw is None or raw == b"":
        return []
    text = _text(raw, "witnesses", report)
    if text is None:
        return []
    try:
        return parse_witness_vkeys(text)
    except CheckpointError as exc:
        report.add(f"witnesses: {exc}")
        return []


def _check_cosignatures(cp: Checkpoint, witness_keys: list[WitnessKey], required: int | None,
                        report: _Report) -> None:
    """With witness keys, the latest checkpoint needs valid cosignatures from at least
    ``required`` of them (default 1); a cosignature line by a listed witness that does not
    verify is an error, not something to skip."""
    if not witness_keys:
        if required:
            report.add(f"checkpoint: {required} witness cosignature(s) required but the export lists no witnesses")
        return
    need = 1 if required is None else required
    names = {k.name for k in witness_keys}
    good = cosigned_by(cp.text, cp.body, witness_keys)
    for sig in cp.signatures[1:]:
        if sig.name in names and sig.name not in good:
            report.add(f"checkpoint: the cosignature line of witness {sig.name} does not verify")
    if len(good) < need:
        report.add(f"checkpoint: cosigned by {len(good)} of the listed witnesses, {need} required")


def _require_cosignatures(result: VerifyResult, witness_keys: list[WitnessKey], required: int | None,
                          report: _Report, read: Callable[[str], bytes | None], *, batch: bool) -> VerifyResult:
    cp = result.checkpoint
    if cp is None:
        return result
    before = len(report.items)
    _check_cosignatures(cp, witness_keys, required, report)
    if len(report.items) == before:
        return result
    return report.result(result.entries, result.batch, cp)



def _verify_batch(read: Callable[[str], bytes | None], entries_data: Callable[[], bytes | None], proofs_raw: bytes,
                  vkeys: list[VerifierKey], report: _Report) -> VerifyResult:
    data = entries_data()
    if data is None:
        report.add("entries.jsonl is missing")
        data = b""
    lines = data.split(b"\n")
    tail = lines.pop()
    if tail:
        lines.append(tail)
        report.add("entries.jsonl: the last line does not end with a newline")
    cp: Checkpoint | None = None
    proofs: list[Any] = []
    try:
        doc = json.loads(proofs_raw)
        if not isinstance(doc, dict) or set(doc) != {"checkpoint", "entries"} or not isinstance(
                doc["checkpoint"], str) or not isinstance(doc["entries"], list):
            raise ValueError("must be {\"checkpoint\": <note text>, \"entries\": [...]}")
        proofs = doc["entries"]
        try:
            cp = verify_checkpoint(doc["checkpoint"], vkeys) if vkeys else None
            if cp is None:
                report.add("proofs.json checkpoint: cannot be verified without a verifier key")
        except CheckpointError as exc:
            report.add(f"proofs.json checkpoint: {exc}")
    except (ValueError, UnicodeDecodeError) as exc:
        report.add(f"proofs.json: {exc}")
    if len(proofs) != len(lines):
        report.add(f"proofs.json has {len(proofs)} proofs for {len(lines)} entries")
    batch_ids: set[Any] = set()
    prev_seq: int | None = None
    prev_leaf: bytes | None = None
    last_at: bytes | None = None
    for i, line in enumerate(lines):
        leaf = hashlib.sha256(b"\x00" + line).digest()
        where = f"entries.jsonl line {i + 1}"
        try:
            entry = parse_entry(line)
        except AuditValueError as exc:
            claimed = proofs[i].get("seq") if i < len(proofs) and isinstance(proofs[i], dict) else None
            report.add(f"{where}: {exc}", claimed if type(claimed) is int else None)
            prev_seq, prev_leaf = None, None
            continue
        seq, at = entry["seq"], entry["at"].encode("ascii")
        batch_ids.add(entry["batch"])
        if prev_seq is not None and seq <= prev_seq:
            report.add(f"{where} (seq {seq}): seq does not increase (previous line has seq {prev_seq})", seq)
        if seq == 0 and entry["prev"] != ZERO_HASH:
            report.add(f"{where} (seq 0): prev is not the zero hash", 0)
        if prev_seq is not None and seq == prev_seq + 1 and prev_leaf is not None \
                and entry["prev"] != prev_leaf.hex():
            report.add(f"{where} (seq {seq}): prev does not match the leaf hash of seq {prev_seq}", seq)
        if last_at is not None and at < last_at:
            report.add(f"{where} (seq {seq}): at {at.decode()} is before the previous line's at {last_at.decode()}",
                       seq)
        last_at = at
        if i < len(proofs):
            p = proofs[i]
            if not isinstance(p, dict) or set(p) != {"seq", "proof"} or type(p["seq"]) is not int \
                    or not isinstance(p["proof"], list) \
                    or not all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in p["proof"]):
                report.add(f"proofs.json entry {i}: must be {{\"seq\": n, \"proof\": [64 hex digits, ...]}}", seq)
            elif p["seq"] != seq:
                report.add(f"proofs.json entry {i}: is for seq {p['seq']}, the entry line has seq {seq}", seq)
            elif cp is not None:
                if seq >= cp.size:
                    report.add(f"{where} (seq {seq}): not covered by the proofs' checkpoint (size {cp.size})", seq)
                elif not verify_inclusion(leaf, seq, cp.size, [bytes.fromhex(h) for h in p["proof"]], cp.root):
                    report.add(f"{where} (seq {seq}): inclusion proof does not verify against the checkpoint", seq)
        prev_seq, prev_leaf = seq, leaf
    batch_id = None
    if len(batch_ids) == 1:
        batch_id = next(iter(batch_ids))
        if batch_id is None:
            report.add("entries.jsonl: the entries belong to no batch (batch is null)")
    elif len(batch_ids) > 1:
        report.add(f"entries.jsonl: entries of several batches: {sorted(map(str, batch_ids))}")
    _check_optional_checkpoints(read, vkeys, cp, report)
    return report.result(len(lines), batch_id if isinstance(batch_id, str) else None, cp)


def _check_optional_checkpoints(read: Callable[[str], bytes | None], vkeys: list[VerifierKey],
                                proof_cp: Checkpoint | None, report: _Report) -> None:
    latest_text = None
    raw = read("checkpoint")
    if raw is not None:
        latest_text = _text(raw, "checkpoint", report)
        if latest_text is not None:
            try:
                latest = verify_checkpoint(latest_text, vkeys)
                if proof_cp is not None and latest.size < proof_cp.size:
                    report.add("checkpoint is older than the checkpoint in proofs.json")
            except CheckpointError as exc:
                report.add(f"checkpoint: {exc}")
    raw = read("checkpoints.jsonl")
    if raw is None:
        return
    errs: list[tuple[int | None, str]] = []
    notes = _note_lines(raw, "checkpoints.jsonl", errs)
    for seq, message in errs:
        report.add(message, seq)
    if notes is None:
        return
    _, herrs = verify_checkpoint_history(notes, vkeys, None)
    for message in herrs:
        report.add(message)
    if proof_cp is not None and proof_cp.text not in notes:
        report.add("checkpoints.jsonl does not contain the checkpoint of proofs.json")
    if latest_text is not None and (not notes or notes[-1] != latest_text):
        report.add("checkpoints.jsonl: its last line is not the checkpoint file")


def verify_export(directory: Path, *, workers: int | None = None,
                  extra_vkeys: Iterable[str | VerifierKey] = (), witnesses_required: int | None = None) -> VerifyResult:
    """Verify an export folder written by ``mes audit export`` (full or ``--batch``), per
    §5 and the decisions in this module's docstring. ``extra_vkeys`` adds verifier keys
    (e.g. of rotated-out signing keys) to those in ``log.vkey``."""
    directory = Path(directory)

    def read(name: str) -> bytes | None:
        p = directory / name
        return p.read_bytes() if p.is_file() else None

    entries_path = directory / "entries.jsonl"

    def stream() -> StreamResult | None:
        return verify_entries_file(entries_path, workers=workers) if entries_path.is_file() else None

    return _verify(read, stream, lambda: read("entries.jsonl"), extra_vkeys, witnesses_required)


def verify_export_files(files: Mapping[str, bytes], *, extra_vkeys: Iterable[str | VerifierKey] = (),
                        witnesses_required: int | None = None) -> VerifyResult:
    """:func:`verify_export` over in-memory file contents (``{"entries.jsonl": b"...", ...}``)."""
    def stream() -> StreamResult | None:
        data = files.get("entries.jsonl")
        return None if data is None else verify_entries_bytes(data)

    return _verify(files.get, stream, lambda: files.get("entries.jsonl"), extra_vkeys, witnesses_required)


# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mes.audit.verify DIR``: one line on stdout, details on stderr, exit 1 on failure."""
    ap = argparse.ArgumentParser(prog="python -m mes.audit.verify",
                                 description="Verify an MES audit export (shared/specs/audit-log.md §5).")
    ap.add_argument("directory", type=Path)
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs available)")
    ap.add_argument("--vkey", action="append", default=[], type=Path,
                    help="extra verifier key file (e.g. a rotated-out key); repeatable")
    ap.add_argument("--witnesses-required", type=int, default=None,
                    help="cosignatures required on the latest checkpoint (default 1 when the export lists witnesses)")
    args = ap.parse_args(argv)
    if not args.directory.is_dir():
        print(f"FAILED: {args.directory} is not a directory")
        return 2
    extra = [p.read_text("utf-8") for p in args.vkey]
    result = verify_export(args.directory, workers=args.workers, extra_vkeys=extra,
                           witnesses_required=args.witnesses_required)
    print(result.summary())
    if not result.ok:
        for message in result.errors:
            print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())