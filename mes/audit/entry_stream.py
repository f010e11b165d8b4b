"""The streaming (and parallel) core of the export verifier: checks 1–3 of §5 over a
whole log, from an iterable of entries, an ``entries.jsonl`` file or its bytes. Shared by
the export verifier (:mod:`mes.audit.verify`, which re-exports the public names) and
``mes audit verify`` on the database.

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

import binascii
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mes.audit.canonical import ZERO_HASH
from mes.audit.entry_blocks import (
    MAX_ERRORS,
    _Block,
    _check_blob,
    _check_file_range,
    _check_stream_block,
    _read_range,
)
from mes.audit.entry_pattern import _prev_ok
from mes.audit.merkle import MerkleTree

FILE_BLOCK_BYTES = 4 << 20
STREAM_BLOCK_LINES = 8192
PARALLEL_MIN_BYTES = 16 << 20
"""Smaller inputs are verified in-process (a pool costs more than it saves)."""

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


_Call = tuple[Callable[..., Any], tuple[Any, ...]]


def _in_order(pool: Any, calls: Iterable[_Call], depth: int) -> Iterator[tuple[tuple[Any, ...], Any]]:
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
    it = iter(lines)

    def blocks() -> Iterator[list[bytes]]:
        while True:
            block = [bytes(b) for _, b in zip(range(STREAM_BLOCK_LINES), it, strict=False)]
            if not block:
                return
            yield block

    run_blocks(blocks(), _check_stream_block, (max_errors,), workers, joiner.add)
    return joiner.result()


def run_blocks(blocks: Iterable[Sequence[Any]], check: Callable[..., Any], args: tuple[Any, ...],
               workers: int | None, take: Callable[[Any], None], *, local: Callable[..., Any] | None = None,
               init: tuple[Callable[..., None], tuple[Any, ...]] | None = None) -> None:
    """``take(check(block, start, *args))`` for consecutive ``blocks`` in order, ``start``
    being the position of the block's first item. With ``workers`` > 1 (default: the CPUs
    available) and more than two blocks, the checks run in worker processes, each of which
    first runs ``init`` (function, args); otherwise ``local`` (default ``check``) runs here."""
    workers = default_workers() if workers is None else workers
    gen = iter(blocks)
    head = [b for _, b in zip(range(3), gen, strict=False)]
    start = 0
    if workers <= 1 or len(head) < 3:
        here = check if local is None else local
        for block in _chain(head, gen):
            take(here(block, start, *args))
            start += len(block)
        return

    def calls() -> Iterator[_Call]:
        nonlocal start
        for block in _chain(head, gen):
            yield check, (block, start, *args)
            start += len(block)

    initializer, initargs = init if init is not None else (None, ())
    pool = _mp_context().Pool(workers, initializer, initargs)
    try:
        for _, res in _in_order(pool, calls(), 2 * workers + 2):
            take(res)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()  # the workers exit on their own (and close what init opened)
    finally:
        pool.join()


def _chain(first: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
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
