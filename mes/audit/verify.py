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

Performance: check 1 ("already canonical") is the expensive part. A line is first matched
against a compiled regular expression of the canonical entry layout (fixed members in
sorted order; ``after``/``before`` flat objects of scalars or arrays of scalars, with keys
checked sorted and unique; ``signature`` null or its five strings; canonical string escapes
and integers only). Every line that the pattern accepts would also be accepted by the
reference check (``json`` parse, value-space walk, re-serialise, compare); every other line
goes to the reference check, which decides and explains. Blocks of lines are verified in
worker processes (hashing, the pattern, seq/prev/at within the block and the block's
complete Merkle subtrees); the parent joins blocks (chain and time across block borders,
remaining subtrees) in order. See :func:`verify_entry_stream`. For a file, the parent only
cuts it into byte ranges; a worker takes its block's first seq from the block's first entry,
and a block whose first seq turns out wrong (entries missing or added before it) is
verified again in the parent with the right start, so tampered files verify slower but
with the same result.
"""

from __future__ import annotations

import argparse
import binascii
import gc
import hashlib
import json
import multiprocessing
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mes.audit.canonical import ZERO_HASH, AuditValueError, is_valid_date, parse_entry
from mes.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    VerifierKey,
    parse_vkeys,
    verify_checkpoint,
)
from mes.audit.merkle import MerkleTree, subtree_nodes, verify_inclusion

__all__ = [
    "VerifyResult", "StreamResult", "verify_export", "verify_export_files", "verify_entry_stream",
    "verify_entries_file", "verify_entries_bytes", "verify_checkpoint_history", "first_unprovable",
    "fast_entry_fields", "main",
]

MAX_ERRORS = 100
"""Errors kept per verification; the first bad seq is exact regardless."""

FILE_BLOCK_BYTES = 4 << 20
STREAM_BLOCK_LINES = 8192
PARALLEL_MIN_BYTES = 16 << 20
"""Smaller inputs are verified in-process (a pool costs more than it saves)."""

# ------------------------------------------------------------------ fast path pattern

# Canonical JSON strings: raw characters except '"', '\\' and controls; escapes exactly as
# JCS / json.dumps write them. _PLAIN is the same for lines without any '\\' or control
# byte (checked with one bytes.translate per block), which the regex engine scans much
# faster. Keys of after/before are captured; that they are ASCII, sorted and unique is
# checked in Python (cached per key tuple). prev is matched as 64 non-quote bytes; it is
# proven hex either by equalling the hex of the previous leaf hash (the chain check) or by
# an explicit check (see _prev_ok).
_ESCAPED = rb'"[^"\\\x00-\x1f]*+(?:\\(?:["\\bfnrt]|u00(?:0[0-7bef]|1[0-9a-f]))[^"\\\x00-\x1f]*+)*+"'
_PLAIN = rb'"[^"]*+"'  # possessive (Python 3.11+): nothing to backtrack into, a little faster
_INT = rb"(?:0|-?[1-9][0-9]{0,14})"  # at most 15 digits: always |x| < 2**53
_AT = (rb"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
       rb"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z")
FLAT_MAX_MEMBERS = 8
"""``after``/``before`` objects with more members (or nested values) take the reference path."""


def _entry_pattern(s: bytes, key: bytes) -> re.Pattern[bytes]:
    sn = rb"(?:" + s + rb"|null)"
    scalar = rb"(?:" + s + rb"|" + _INT + rb"|true|false|null)"
    value = rb"(?:" + scalar + rb"|\[(?:" + scalar + rb"(?:," + scalar + rb")*)?\])"

    def members(k: int) -> bytes:  # k members at most, each key captured
        rest = rb"(?:," + members(k - 1) + rb")?" if k > 1 else b""
        return key + b":" + value + rest

    flat = rb"(?:\{(?:" + members(FLAT_MAX_MEMBERS) + rb")?\}|null)"
    return re.compile(
        rb'\{"action":' + s
        + rb',"actor":\{"id":' + s + rb',"name":' + s + rb',"role":' + s + rb"\}"
        + rb',"after":' + flat
        + rb',"at":"(?P<at>' + _AT + rb')"'
        + rb',"batch":' + sn
        + rb',"before":' + flat
        + rb',"entity":\{"id":' + s + rb',"type":' + s + rb"\}"
        + rb',"prev":"(?P<prev>[^"]{64})"'
        + rb',"reason":' + sn
        + rb',"seq":(?P<seq>0|[1-9][0-9]{0,15})'
        + rb',"signature":(?:null|\{"at":' + s + rb',"meaning":' + s + rb',"name":' + s
        + rb',"record_hash":' + s + rb',"signer":' + s + rb"\})"
        + rb',"terminal":' + sn
        + rb',"v":"mes\.audit\.entry/v1"\}'
    )


_PLAIN_RE = _entry_pattern(_PLAIN, rb'"([^"]*+)"')
_ENTRY_PLAIN = _PLAIN_RE.fullmatch
_ENTRY_ESCAPED = _entry_pattern(_ESCAPED, rb'"([\x20\x21\x23-\x5b\x5d-\x7e]*+)"').fullmatch
_NOT_PLAIN = bytes(range(0x20)) + b"\\"
_NOT_PLAIN_BUT_NEWLINE = _NOT_PLAIN.replace(b"\n", b"")
_HEX_DIGITS = b"0123456789abcdef"
_AFTER_KEYS = slice(0, FLAT_MAX_MEMBERS)
_I_AT = FLAT_MAX_MEMBERS
_BEFORE_KEYS = slice(FLAT_MAX_MEMBERS + 1, 2 * FLAT_MAX_MEMBERS + 1)
_I_PREV = 2 * FLAT_MAX_MEMBERS + 1
_I_SEQ = _I_PREV + 1
assert _PLAIN_RE.groupindex == {"at": _I_AT + 1, "prev": _I_PREV + 1, "seq": _I_SEQ + 1}
_SEQ_LIMIT = 2**53
_date_ok: dict[bytes, bool] = {}
_keys_ok: dict[tuple[bytes | None, ...], bool] = {}


def _keys_in_order(keys: tuple[bytes | None, ...]) -> bool:
    """Captured keys of a flat object: ASCII, strictly increasing (so sorted and unique)."""
    ks = [k for k in keys if k is not None]
    ok = all(k.isascii() for k in ks) and all(a < b for a, b in zip(ks, ks[1:], strict=False))
    if len(_keys_ok) > 4096:
        _keys_ok.clear()
    _keys_ok[keys] = ok
    return ok


def _day_ok(day: bytes) -> bool:
    ok = _date_ok[day] = is_valid_date(day.decode("ascii"))
    return ok


def _scan(lines: Sequence[bytes], plain: bool) -> list[tuple[int, bytes, bytes] | None]:
    """:func:`fast_entry_fields` for many lines, except that ``prev`` is not yet proven hex.
    ``plain``: no line holds a '\\' or a control byte. (One loop, no call per line: this is
    the hottest code of the verifier.)"""
    out: list[tuple[int, bytes, bytes] | None] = []
    add = out.append
    plain_match, escaped_match, not_plain = _ENTRY_PLAIN, _ENTRY_ESCAPED, _NOT_PLAIN
    keys_ok, date_ok, seq_limit = _keys_ok, _date_ok, _SEQ_LIMIT
    a_keys, b_keys, i_at, i_prev, i_seq = _AFTER_KEYS, _BEFORE_KEYS, _I_AT, _I_PREV, _I_SEQ
    i_b = b_keys.start
    for line in lines:
        if plain or len(line.translate(None, not_plain)) == len(line):
            m = plain_match(line)
        else:
            m = escaped_match(line)
        if m is None:
            add(None)
            continue
        g = m.groups()
        if g[0] is not None:
            keys = g[a_keys]
            if not keys_ok.get(keys) and not _keys_in_order(keys):
                add(None)
                continue
        if g[i_b] is not None:
            keys = g[b_keys]
            if not keys_ok.get(keys) and not _keys_in_order(keys):
                add(None)
                continue
        if not line.isascii():
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                add(None)
                continue
        at = g[i_at]
        if not date_ok.get(at[:10]) and not _day_ok(at[:10]):
            add(None)
            continue
        seq = int(g[i_seq])
        add((seq, g[i_prev], at) if seq < seq_limit else None)
    return out


def _prev_ok(prev: bytes) -> bool:
    return not prev.translate(None, _HEX_DIGITS)


def fast_entry_fields(line: bytes) -> tuple[int, bytes, bytes] | None:
    """``(seq, prev, at)`` (prev and at as ASCII bytes) if the fast pattern proves ``line``
    is a valid canonical entry; None means "ask :func:`mes.audit.canonical.parse_entry`",
    not "invalid"."""
    found = _scan([line], False)[0]
    return found if found is not None and _prev_ok(found[1]) else None


# ------------------------------------------------------------------------ block work

# (first seq, count, packed leaf hashes, inner subtrees, first line's prev or None,
#  first known at, last known at, [(seq, message), ...])
_Block = tuple[int, int, bytes, list[bytes], "bytes | None", "bytes | None", "bytes | None", list[tuple[int, str]]]


def _check_lines(lines: Sequence[bytes], start: int, max_errors: int = MAX_ERRORS, plain: bool = False) -> _Block:
    """Verify a run of consecutive entry lines that begins at ``start``: each line valid and
    canonical, ``seq`` = position, ``prev`` = leaf hash of the line before, ``at`` monotonic.
    ``plain``: no line contains a '\\' or a control byte (lets the faster pattern run).
    The cyclic garbage collector is paused meanwhile: the block's many small tuples would
    trigger it over and over, and nothing here creates reference cycles."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _check_lines_unpaused(lines, start, max_errors, plain)
    finally:
        if collecting:
            gc.enable()


def _check_lines_unpaused(lines: Sequence[bytes], start: int, max_errors: int, plain: bool) -> _Block:
    sha = hashlib.sha256
    packed = b"".join([sha(b"\x00" + line).digest() for line in lines])
    fields = _scan(lines, plain)
    n = len(lines)
    hexlify = binascii.hexlify
    if n and None not in fields:
        # The common case, checked for the whole block at C speed.
        seqs, prevs, ats = zip(*fields, strict=True)
        if seqs == tuple(range(start, start + n)) and b"".join(prevs[1:]) == hexlify(packed[:-32]) \
                and list(ats) == sorted(ats):
            return start, n, packed, subtree_nodes(start, packed), prevs[0], ats[0], ats[-1], []
    errors: list[tuple[int, str]] = []
    first_prev = first_at = last_at = None
    pos = start
    for i, line in enumerate(lines):
        found = fields[i]
        if found is None or not _prev_ok(found[1]):
            try:
                e = parse_entry(line)
            except AuditValueError as exc:
                if len(errors) < max_errors:
                    errors.append((pos, str(exc)))
                pos += 1
                continue
            seq, prev, at = e["seq"], e["prev"].encode("ascii"), e["at"].encode("ascii")
        else:
            seq, prev, at = found
        if seq != pos and len(errors) < max_errors:
            errors.append((pos, f"seq is {seq}, expected {pos} (an entry is missing, extra or out of order)"))
        if i == 0:
            first_prev = prev
        elif prev != hexlify(packed[(i - 1) * 32:i * 32]) and len(errors) < max_errors:
            errors.append((pos, f"prev does not match the leaf hash of the entry before (seq {pos - 1})"))
        if first_at is None:
            first_at = at
        elif at < last_at and len(errors) < max_errors:  # type: ignore[operator]
            errors.append((pos, f"at {at.decode()} is before the previous entry's at {last_at.decode()}"))  # type: ignore[union-attr]
        last_at = at
        pos += 1
    return start, n, packed, subtree_nodes(start, packed), first_prev, first_at, last_at, errors


def _check_blob(data: bytes, start: int, max_errors: int = MAX_ERRORS) -> _Block:
    """:func:`_check_lines` on newline-terminated lines; a last line without ``\\n`` is an error."""
    plain = len(data.translate(None, _NOT_PLAIN_BUT_NEWLINE)) == len(data)
    lines = data.split(b"\n")
    tail = lines.pop()
    if tail:
        lines.append(tail)
    res = _check_lines(lines, start, max_errors, plain)
    if tail:
        res[7].append((start + len(lines) - 1, "the last line does not end with a newline"))
    return res


def _check_stream_block(lines: list[bytes], start: int, max_errors: int) -> _Block:
    joined = b"".join(lines)
    return _check_lines(lines, start, max_errors, len(joined.translate(None, _NOT_PLAIN)) == len(joined))


def _read_range(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise OSError(f"{path} changed while it was being verified")
    return data


def _check_file_range(path: str, offset: int, length: int, max_errors: int) -> _Block:
    """Worker side of :func:`verify_entries_file`. The block's first seq is not known here
    (counting lines in the parent would cost a pass over the file), so it is taken from the
    block's first entry; if that is wrong the parent sees a start that does not join and
    re-verifies the block itself with the right start."""
    data = _read_range(path, offset, length)
    nl = data.find(b"\n")
    found = _scan([data if nl < 0 else data[:nl]], False)[0]
    return _check_blob(data, 0 if found is None else found[0], max_errors)


# -------------------------------------------------------------------- joining blocks


@dataclass
class StreamResult:
    """Outcome of :func:`verify_entry_stream`: checks 1–3 of §5 over a whole log."""

    entries: int
    tree: MerkleTree
    first_bad_seq: int | None
    errors: list[str]
    last_at: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None

    @property
    def root(self) -> bytes:
        """MTH over all entries (their leaf hashes are in ``tree``)."""
        return self.tree.root()


class _Joiner:
    """Joins verified blocks in order: chain and time across block borders, Merkle tree."""

    def __init__(self, max_errors: int) -> None:
        self.tree = MerkleTree()
        self.prev_hex = ZERO_HASH.encode("ascii")
        self.last_at: bytes | None = None
        self.located: list[tuple[int, str]] = []
        self.first_bad: int | None = None
        self.max_errors = max_errors

    def error(self, seq: int, message: str) -> None:
        if self.first_bad is None or seq < self.first_bad:
            self.first_bad = seq
        if len(self.located) < self.max_errors:
            self.located.append((seq, message))

    def add(self, block: _Block) -> None:
        start, count, packed, inner, first_prev, first_at, last_at, errors = block
        assert start == self.tree.size
        if count and first_prev is not None and first_prev != self.prev_hex:
            what = "the zero hash" if start == 0 else f"the leaf hash of the entry before (seq {start - 1})"
            if not _prev_ok(first_prev):
                self.error(start, "prev must be 64 lowercase hex digits")
            else:
                self.error(start, f"prev does not match {what}")
        if first_at is not None and self.last_at is not None and first_at < self.last_at:
            self.error(start, f"at {first_at.decode()} is before the previous entry's at {self.last_at.decode()}")
        for seq, message in errors:
            self.error(seq, message)
        self.tree.add_block(start, packed, inner)
        if count:
            self.prev_hex = binascii.hexlify(packed[-32:])
        if last_at is not None:
            self.last_at = last_at

    def result(self) -> StreamResult:
        located = sorted(self.located, key=lambda e: e[0])
        return StreamResult(self.tree.size, self.tree, self.first_bad, [f"seq {s}: {m}" for s, m in located],
                            None if self.last_at is None else self.last_at.decode("ascii"))


# ------------------------------------------------------------------- process pool


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _mp_context() -> Any:
    # fork is cheap and needs no re-import; forking a multi-threaded process is not safe.
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


_Call = tuple[Callable[..., _Block], tuple[Any, ...]]


def _in_order(pool: Any, calls: Iterable[_Call], depth: int) -> Iterator[tuple[tuple[Any, ...], _Block]]:
    """``(args, result)`` of ``calls`` run on ``pool``, in order, at most ``depth`` in flight."""
    pending: deque[tuple[tuple[Any, ...], Any]] = deque()
    for fn, args in calls:
        pending.append((args, pool.apply_async(fn, args)))
        if len(pending) >= depth:
            args0, res = pending.popleft()
            yield args0, res.get()
    while pending:
        args0, res = pending.popleft()
        yield args0, res.get()


# ------------------------------------------------------------------ stream entries


def verify_entry_stream(lines: Iterable[bytes], *, workers: int | None = None,
                        max_errors: int = MAX_ERRORS) -> StreamResult:
    """Checks 1–3 of §5 over every entry of a log, given their ``entry_bytes`` in seq order
    starting at seq 0 (without newlines; e.g. streamed from the database).

    Returns the entry count, the first bad seq (exact, even when more than ``max_errors``
    errors exist), the errors, and a :class:`MerkleTree` of all leaf hashes and complete
    subtrees: ``result.tree.root(size)`` checks any checkpoint, ``result.tree.get_node``
    compares with stored nodes. Leaf hashes are computed over the bytes as given, valid or
    not, so checkpoint roots can still be checked after an entry error.

    With ``workers`` > 1 (default: the CPUs available) and more than two blocks of
    :data:`STREAM_BLOCK_LINES` entries, blocks are verified in worker processes."""
    joiner = _Joiner(max_errors)
    workers = default_workers() if workers is None else workers
    it = iter(lines)

    def blocks() -> Iterator[list[bytes]]:
        while True:
            block = [bytes(b) for _, b in zip(range(STREAM_BLOCK_LINES), it, strict=False)]
            if not block:
                return
            yield block

    gen = blocks()
    head = [b for _, b in zip(range(3), gen, strict=False)]
    start = 0
    if workers <= 1 or len(head) < 3:
        for block in head:
            joiner.add(_check_stream_block(block, start, max_errors))
            start += len(block)
        for block in gen:
            joiner.add(_check_stream_block(block, start, max_errors))
            start += len(block)
        return joiner.result()

    def calls() -> Iterator[_Call]:
        nonlocal start
        for block in _chain(head, gen):
            yield _check_stream_block, (block, start, max_errors)
            start += len(block)

    with _mp_context().Pool(workers) as pool:
        for _, res in _in_order(pool, calls(), 2 * workers + 2):
            joiner.add(res)
    return joiner.result()


def _chain(first: list[list[bytes]], rest: Iterator[list[bytes]]) -> Iterator[list[bytes]]:
    yield from first
    yield from rest


def _file_ranges(path: str, block_bytes: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of blocks of about ``block_bytes`` that end after a newline (or
    at the end of the file), found by reading a little past each nominal boundary."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            end = offset + block_bytes
            while end < size:
                f.seek(end)
                chunk = f.read(1 << 16)
                nl = chunk.find(b"\n")
                if nl >= 0:
                    end += nl + 1
                    break
                end += len(chunk)
            end = min(end, size)
            yield offset, end - offset
            offset = end


def verify_entries_file(path: Path, *, workers: int | None = None, max_errors: int = MAX_ERRORS) -> StreamResult:
    """:func:`verify_entry_stream` over an ``entries.jsonl`` file (one entry per line, each
    line ending in ``\\n``). Files over :data:`PARALLEL_MIN_BYTES` use worker processes
    that read their block of the file themselves."""
    path = str(path)
    joiner = _Joiner(max_errors)
    workers = default_workers() if workers is None else workers
    ranges = _file_ranges(path, FILE_BLOCK_BYTES)
    if workers <= 1 or os.path.getsize(path) < PARALLEL_MIN_BYTES:
        for offset, length in ranges:
            joiner.add(_check_blob(_read_range(path, offset, length), joiner.tree.size, max_errors))
        return joiner.result()
    calls = ((_check_file_range, (path, offset, length, max_errors)) for offset, length in ranges)
    with _mp_context().Pool(workers) as pool:
        for (_, offset, length, _), res in _in_order(pool, calls, 2 * workers + 2):
            if res[0] != joiner.tree.size:  # the block's first entry had a wrong seq: redo here
                res = _check_blob(_read_range(path, offset, length), joiner.tree.size, max_errors)
            joiner.add(res)
    return joiner.result()


def verify_entries_bytes(data: bytes, *, max_errors: int = MAX_ERRORS) -> StreamResult:
    """:func:`verify_entries_file` over the bytes of an ``entries.jsonl`` (in-process)."""
    joiner = _Joiner(max_errors)
    if data:
        joiner.add(_check_blob(data, 0, max_errors))
    return joiner.result()


# -------------------------------------------------------------------- checkpoints


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
            entries_data: Callable[[], bytes | None], extra_vkeys: Iterable[str | VerifierKey]) -> VerifyResult:
    """Shared by folder and in-memory exports. ``entries()`` verifies ``entries.jsonl`` as a
    stream (None if missing); ``entries_data()`` returns its bytes (batch exports)."""
    report = _Report()
    vkeys: list[VerifierKey] = []
    raw = read("log.vkey")
    if raw is None:
        report.add("log.vkey is missing")
    else:
        text = _text(raw, "log.vkey", report)
        if text is not None:
            try:
                vkeys = parse_vkeys(text)
            except CheckpointError as exc:
                report.add(f"log.vkey: {exc}")
    for k in extra_vkeys:
        vkeys.extend(parse_vkeys(k) if isinstance(k, str) else [k])
    proofs_raw = read("proofs.json")
    if proofs_raw is not None:
        return _verify_batch(read, entries_data, proofs_raw, vkeys, report)

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
    if report.items and report.first_bad is None:
        report.locate(first_unprovable([*parsed, latest], stream.tree))
    return report.result(count, None, latest)


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
                  extra_vkeys: Iterable[str | VerifierKey] = ()) -> VerifyResult:
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

    return _verify(read, stream, lambda: read("entries.jsonl"), extra_vkeys)


def verify_export_files(files: Mapping[str, bytes], *, extra_vkeys: Iterable[str | VerifierKey] = ()) -> VerifyResult:
    """:func:`verify_export` over in-memory file contents (``{"entries.jsonl": b"...", ...}``)."""
    def stream() -> StreamResult | None:
        data = files.get("entries.jsonl")
        return None if data is None else verify_entries_bytes(data)

    return _verify(files.get, stream, lambda: files.get("entries.jsonl"), extra_vkeys)


# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mes.audit.verify DIR``: one line on stdout, details on stderr, exit 1 on failure."""
    ap = argparse.ArgumentParser(prog="python -m mes.audit.verify",
                                 description="Verify an MES audit export (shared/specs/audit-log.md §5).")
    ap.add_argument("directory", type=Path)
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs available)")
    ap.add_argument("--vkey", action="append", default=[], type=Path,
                    help="extra verifier key file (e.g. a rotated-out key); repeatable")
    args = ap.parse_args(argv)
    if not args.directory.is_dir():
        print(f"FAILED: {args.directory} is not a directory")
        return 2
    extra = [p.read_text("utf-8") for p in args.vkey]
    result = verify_export(args.directory, workers=args.workers, extra_vkeys=extra)
    print(result.summary())
    if not result.ok:
        for message in result.errors:
            print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
