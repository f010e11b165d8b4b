"""Verification of one block of consecutive entry lines (checks 1–3 of §5 within the block
and the block's complete Merkle subtrees): what a worker process of
:mod:`mes.audit.entry_stream` runs, and the parent for small inputs."""

from __future__ import annotations

import binascii
import gc
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from mes.audit.canonical import AuditValueError, parse_entry
from mes.audit.entry_pattern import _NOT_PLAIN, _NOT_PLAIN_BUT_NEWLINE, Fields, _prev_ok, _scan
from mes.audit.merkle import subtree_nodes

MAX_ERRORS = 100
"""Errors kept per verification; the first bad seq is exact regardless."""

# ------------------------------------------------------------------------ block work

# (first seq, count, packed leaf hashes, inner subtrees, first line's prev or None,
#  first known at, last known at, [(seq, message), ...])
_Block = tuple[int, int, bytes, list[bytes], "bytes | None", "bytes | None", "bytes | None", list[tuple[int, str]]]


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused meanwhile: a block's many small tuples would
    trigger it over and over, and block checks create no reference cycles."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _check_lines(lines: Sequence[bytes], start: int, max_errors: int = MAX_ERRORS, plain: bool = False) -> _Block:
    """Verify a run of consecutive entry lines that begins at ``start``: each line valid and
    canonical, ``seq`` = position, ``prev`` = leaf hash of the line before, ``at`` monotonic.
    ``plain``: no line contains a '\\' or a control byte (lets the faster pattern run)."""
    with gc_paused():
        return check_scanned(lines, _scan(lines, plain), start, max_errors)


def check_scanned(lines: Sequence[bytes], fields: Sequence[Fields | None], start: int, max_errors: int) -> _Block:
    """:func:`_check_lines` given the lines' :func:`~mes.audit.entry_pattern._scan` (which a
    caller that checks more of each line shares)."""
    sha = hashlib.sha256
    packed = b"".join([sha(b"\x00" + line).digest() for line in lines])
    n = len(lines)
    hexlify = binascii.hexlify
    if n and None not in fields:
        # The common case, checked for the whole block at C speed.
        seqs, prevs, ats, _ = zip(*fields, strict=True)
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
            seq, prev, at, _ = found
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
