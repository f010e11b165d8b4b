"""RFC 9162 §2.1 Merkle tree hashes and proofs, naive and from stored subtree hashes.

Two ways to get the same hashes:

* from a list of leaf hashes: :func:`mth`, :func:`inclusion_proof`, :func:`consistency_proof`
  (O(n); used on exports and in tests);
* from stored *complete perfect subtrees* (the ``audit_tree_nodes`` rows): a node
  ``(level, index)`` covers leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0
  is the leaf hash itself. Every root or proof needs O(log n) of them. The caller asks
  which nodes are needed (``nodes_needed_for_*``), fetches them in one query, and passes
  the resulting dict (or any *node source*, see :data:`NodeSource`) to the
  ``*_from_nodes`` function. Appending leaf ``n`` completes ``1 + trailing_ones(n)`` nodes
  (two per leaf on average): :func:`nodes_completed_by_append` returns those rows.

:class:`MerkleTree` keeps all complete subtrees in memory (packed per level) and offers
the same reads; the verifier builds one while it streams the entries.

Why the subtree decomposition works: RFC 9162 splits ``n`` leaves at the largest power of
two ``k < n``; the left part is a perfect subtree and the right part recurses, so
``MTH(D[0:n])`` is the right-to-left fold of the perfect subtrees given by the binary
digits of ``n``. Every other range the RFC algorithms hash (a proof sibling) is a node of
that recursion and decomposes the same way.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Union

NodeKey = tuple[int, int]
"""``(level, index)`` of a complete perfect subtree."""

NodeRow = tuple[int, int, bytes]
"""``(level, index, hash)``: one row of the node store."""

NodeSource = Union[Mapping[NodeKey, bytes], Callable[[int, int], bytes],
                   Callable[[list[NodeKey]], Mapping[NodeKey, bytes]], "MerkleTree"]
"""Where ``*_from_nodes`` functions read subtree hashes: a mapping ``{(level, index): hash}``
(typically the result of one query for ``nodes_needed_for_*``), a :class:`MerkleTree`,
a function ``get_node(level, index) -> bytes`` or a batched function
``get_nodes([(level, index), ...]) -> {(level, index): hash}`` (called once).
Pass a dict itself, not ``dict.__getitem__``."""

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""MTH of the empty tree."""

_sha256 = hashlib.sha256


class MissingNodeError(KeyError):
    """A node source did not have a subtree hash that a computation needs."""

    def __init__(self, key: NodeKey) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        level, index = self.key
        return f"missing Merkle node (level {level}, index {index})"


# --------------------------------------------------------------------------- hashes


def leaf_hash(entry_bytes: bytes) -> bytes:
    """SHA-256(0x00 || entry_bytes)."""
    return _sha256(b"\x00" + entry_bytes).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _pair_hashes(packed: bytes | bytearray | memoryview, start: int, count: int) -> bytes:
    """Parents of ``count`` adjacent pairs in packed hashes, starting at byte ``start``."""
    sha = _sha256
    return b"".join([sha(b"\x01" + packed[o:o + 64]).digest() for o in range(start, start + 64 * count, 64)])


def mth(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 9162 MTH over leaf hashes, bottom-up (pair neighbours, carry an odd last node up).

    Equivalent to the RFC's recursive definition and linear time; 1,000,000 leaves take
    about a second in CPython."""
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    sha = _sha256
    while len(level) > 1:
        it = iter(level)
        nxt = [sha(b"\x01" + a + b).digest() for a, b in zip(it, it, strict=False)]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


# --------------------------------------------------------------------- index algebra


def frontier(size: int) -> list[NodeKey]:
    """The perfect subtrees that make up a tree of ``size`` leaves, left to right (one per
    set bit of ``size``). Their right-to-left fold is the root."""
    if size < 0:
        raise ValueError("size must be >= 0")
    return [(lv, (size >> lv) - 1) for lv in range(size.bit_length() - 1, -1, -1) if size >> lv & 1]


def range_nodes(lo: int, hi: int) -> list[NodeKey]:
    """Perfect subtrees, left to right and strictly shrinking, whose fold is MTH(D[lo:hi]).

    Only defined for ranges that are nodes of the RFC recursion (``lo`` a multiple of a
    power of two >= ``hi - lo``); raises ValueError otherwise."""
    if not 0 <= lo < hi:
        raise ValueError(f"empty or negative range [{lo}, {hi})")
    out: list[NodeKey] = []
    pos = lo
    last = None
    while pos < hi:
        lv = (hi - pos).bit_length() - 1
        if pos & ((1 << lv) - 1) or (last is not None and lv >= last):
            raise ValueError(f"[{lo}, {hi}) is not a subtree of an RFC 9162 tree")
        out.append((lv, pos >> lv))
        pos += 1 << lv
        last = lv
    return out


def _fold(hashes: Sequence[bytes]) -> bytes:
    r = hashes[-1]
    for h in reversed(hashes[:-1]):
        r = node_hash(h, r)
    return r


def inclusion_proof_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form the inclusion proof of ``index`` (RFC 9162 §2.1.3.1),
    in proof order (nearest the leaf first)."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not in a tree of size {size}")
    out = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_proof_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form the consistency proof from ``old_size`` to ``new_size``
    (RFC 9162 §2.1.4.1), in proof order. Empty when ``old_size`` is 0 or equals ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    out = []
    m, lo, hi, whole = old_size, 0, new_size, True
    while True:
        n = hi - lo
        if m == n:
            if not whole:
                out.append((lo, hi))
            break
        k = _split(n)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            m -= k
            whole = False
    out.reverse()
    return out


# ----------------------------------------------------------------- proofs over leaves


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 inclusion proof (audit path) of leaf ``index`` in the tree of all leaves."""
    tree = MerkleTree.from_leaf_hashes(leaf_hashes)
    return tree.inclusion_proof(index)


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 consistency proof from the first ``old_size`` leaves to all of them."""
    tree = MerkleTree.from_leaf_hashes(leaf_hashes)
    return tree.consistency_proof(old_size)


def _check_hash(value: Any, what: str) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2, step by step: True iff ``proof`` shows that ``leaf`` (a leaf
    hash) is entry ``index`` of the tree of ``size`` with hash ``root``. Malformed input
    (wrong hash lengths, ``index >= size``) gives False, never an exception."""
    if type(index) is not int or type(size) is not int or not 0 <= index < size:
        return False
    try:
        _check_hash(leaf, "leaf")
        _check_hash(root, "root")
        for p in proof:
            _check_hash(p, "proof element")
    except ValueError:
        return False
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: True iff ``proof`` shows the tree of ``old_size`` with
    ``old_root`` is a prefix of the tree of ``new_size`` with ``new_root``.

    As in common practice (RFC 9162 leaves these cases to the caller): equal sizes need an
    empty proof and equal roots; old size 0 needs an empty proof."""
    if type(old_size) is not int or type(new_size) is not int or not 0 <= old_size <= new_size:
        return False
    try:
        _check_hash(old_root, "old root")
        _check_hash(new_root, "new root")
        for p in proof:
            _check_hash(p, "proof element")
    except ValueError:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


# ---------------------------------------------------------------- reading node stores


def _wants_list(fn: Callable[..., Any]) -> bool:
    """Whether a callable node source is batched (one argument) rather than get_node(level, index)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(0, 0)
    except TypeError:
        return True
    return False


def _fetch(source: NodeSource, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
    """``{key: hash}`` for ``keys`` from any node source (one batched call if batched)."""
    wanted = list(dict.fromkeys(keys))
    if isinstance(source, MerkleTree):
        return {k: source.get_node(*k) for k in wanted}
    if isinstance(source, Mapping):
        found = source
    elif callable(source):
        if _wants_list(source):
            found = source(wanted) if wanted else {}
        else:
            out = {}
            for k in wanted:
                try:
                    out[k] = source(*k)
                except KeyError:
                    raise MissingNodeError(k) from None
            found = out
    else:
        raise TypeError(f"not a node source: {type(source).__name__}")
    out = {}
    for k in wanted:
        try:
            h = found[k]
        except KeyError:
            raise MissingNodeError(k) from None
        out[k] = bytes(h)
    return out


def nodes_needed_for_root(size: int) -> list[NodeKey]:
    """Subtree keys :func:`root_from_nodes` reads: the frontier of ``size``."""
    return frontier(size)


def root_from_nodes(size: int, nodes: NodeSource) -> bytes:
    """MTH of the first ``size`` leaves from O(log n) stored subtree hashes."""
    keys = frontier(size)
    if not keys:
        return EMPTY_ROOT
    got = _fetch(nodes, keys)
    return _fold([got[k] for k in keys])


def _ranges_nodes(ranges: Iterable[tuple[int, int]]) -> list[NodeKey]:
    out: dict[NodeKey, None] = {}
    for lo, hi in ranges:
        for k in range_nodes(lo, hi):
            out[k] = None
    return list(out)


def _ranges_hashes(ranges: Sequence[tuple[int, int]], nodes: NodeSource) -> list[bytes]:
    per_range = [range_nodes(lo, hi) for lo, hi in ranges]
    got = _fetch(nodes, (k for keys in per_range for k in keys))
    return [_fold([got[k] for k in keys]) for keys in per_range]


def nodes_needed_for_inclusion(index: int, size: int) -> list[NodeKey]:
    """Subtree keys :func:`inclusion_proof_from_nodes` reads (at most about 2·log2 n)."""
    return _ranges_nodes(inclusion_proof_ranges(index, size))


def inclusion_proof_from_nodes(index: int, size: int, nodes: NodeSource) -> list[bytes]:
    """RFC 9162 inclusion proof of ``index`` in the tree of ``size`` from stored subtrees."""
    return _ranges_hashes(inclusion_proof_ranges(index, size), nodes)


def nodes_needed_for_consistency(old_size: int, new_size: int) -> list[NodeKey]:
    """Subtree keys :func:`consistency_proof_from_nodes` reads."""
    return _ranges_nodes(consistency_proof_ranges(old_size, new_size))


def consistency_proof_from_nodes(old_size: int, new_size: int, nodes: NodeSource) -> list[bytes]:
    """RFC 9162 consistency proof from ``old_size`` to ``new_size`` from stored subtrees."""
    return _ranges_hashes(consistency_proof_ranges(old_size, new_size), nodes)


# --------------------------------------------------------------- writing node stores


def nodes_needed_for_append(size_before: int, count: int = 1) -> list[NodeKey]:
    """Existing subtree keys that appending ``count`` leaves to a tree of ``size_before``
    reads: the frontier nodes that the new leaves complete into bigger subtrees."""
    if size_before < 0 or count < 0:
        raise ValueError("sizes must be >= 0")
    new_size = size_before + count
    return [(lv, i) for lv, i in frontier(size_before) if new_size >= (i + 2) << lv]


def nodes_completed_by_append(size_before: int, new_leaf: bytes, get_node: NodeSource) -> list[NodeRow]:
    """Rows ``(level, index, hash)`` to insert when leaf number ``size_before`` is appended:
    the leaf itself at level 0 and every perfect subtree it completes (``1 +
    trailing_ones(size_before)`` rows; 2 on average). ``get_node`` supplies the left
    siblings, i.e. :func:`nodes_needed_for_append` ``(size_before)``."""
    return nodes_completed_by_batch(size_before, [new_leaf], get_node)


def nodes_completed_by_batch(size_before: int, new_leaves: Sequence[bytes], get_node: NodeSource) -> list[NodeRow]:
    """Rows to insert when ``new_leaves`` are appended in order to a tree of
    ``size_before`` leaves: all new complete subtrees (about ``2 * len(new_leaves)`` rows),
    in bottom-up order per leaf. Reads only :func:`nodes_needed_for_append` ``(size_before,
    len(new_leaves))`` from ``get_node`` (fetched in one batch)."""
    for leaf in new_leaves:
        _check_hash(leaf, "leaf hash")
    old = _fetch(get_node, nodes_needed_for_append(size_before, len(new_leaves)))
    pending: dict[int, tuple[int, bytes]] = {}  # per level: newest new node that is a left child
    rows: list[NodeRow] = []
    for t, leaf in enumerate(new_leaves):
        idx, lv, cur = size_before + t, 0, bytes(leaf)
        rows.append((0, idx, cur))
        while idx & 1:
            mine = pending.get(lv)
            left = mine[1] if mine is not None and mine[0] == idx - 1 else old[(lv, idx - 1)]
            cur = node_hash(left, cur)
            lv += 1
            idx >>= 1
            rows.append((lv, idx, cur))
        pending[lv] = (idx, cur)
    return rows


# ------------------------------------------------------------------ in-memory store


class MerkleTree:
    """Every complete perfect subtree of a growing tree, packed per level in memory.

    ``levels[L]`` holds the hashes of nodes ``0 .. (size >> L) - 1`` of level L, 32 bytes
    each (level 0: the leaf hashes). About 64 bytes per leaf in all. It is a node source
    for the ``*_from_nodes`` functions, and answers roots and proofs for any earlier size.
    """

    __slots__ = ("_levels", "size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self.size = 0

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MerkleTree:
        tree = cls()
        tree.extend(leaf_hashes)
        return tree

    # -- growing

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash (amortised O(1): one parent hash per append on average)."""
        _check_hash(leaf, "leaf hash")
        levels = self._levels
        levels[0] += leaf
        idx, lv = self.size, 0
        while idx & 1:
            below = levels[lv]
            if len(levels) == lv + 1:
                levels.append(bytearray())
            levels[lv + 1] += _sha256(b"\x01" + below[-64:]).digest()
            idx >>= 1
            lv += 1
        self.size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add leaf hashes (computing the subtrees they complete in bulk)."""
        leaves = [bytes(h) for h in leaf_hashes]
        for h in leaves:
            _check_hash(h, "leaf hash")
        self.add_block(self.size, b"".join(leaves), ())

    def add_block(self, start: int, packed_leaves: bytes, inner: Sequence[bytes]) -> None:
        """Append packed leaf hashes that begin at leaf ``start`` (== ``size``).

        ``inner`` may carry subtrees already computed for this block (elsewhere, e.g. in a
        worker process) by :func:`subtree_nodes`: element ``L - 1`` holds the level-L nodes
        lying entirely inside the block. The few nodes that straddle the block's start are
        computed here."""
        if start != self.size:
            raise ValueError(f"block starts at {start}, tree has {self.size} leaves")
        if len(packed_leaves) % HASH_SIZE:
            raise ValueError("packed leaf hashes must be a multiple of 32 bytes")
        end = start + len(packed_leaves) // HASH_SIZE
        levels = self._levels
        levels[0] += packed_leaves
        lv = 1
        while end >> lv:
            if len(levels) == lv:
                levels.append(bytearray())
            below, here = levels[lv - 1], levels[lv]
            have, want = len(here) // HASH_SIZE, end >> lv
            w_lo = -(-start >> lv)
            given = inner[lv - 1] if lv - 1 < len(inner) else b""
            w_hi = w_lo + len(given) // HASH_SIZE
            i = have
            while i < want:
                if w_lo <= i < w_hi:
                    stop = min(w_hi, want)
                    here += given[(i - w_lo) * HASH_SIZE:(stop - w_lo) * HASH_SIZE]
                else:
                    stop = want if i >= w_hi else min(w_lo, want)
                    here += _pair_hashes(below, 2 * i * HASH_SIZE, stop - i)
                i = stop
            lv += 1
        self.size = end

    # -- reading

    def get_node(self, level: int, index: int) -> bytes:
        """Hash of the complete subtree ``(level, index)``; MissingNodeError if incomplete."""
        if 0 <= level < len(self._levels) and 0 <= index and (index + 1) << level <= self.size:
            o = index * HASH_SIZE
            return bytes(self._levels[level][o:o + HASH_SIZE])
        raise MissingNodeError((level, index))

    def __getitem__(self, key: NodeKey) -> bytes:
        return self.get_node(*key)

    def __len__(self) -> int:
        return self.size

    def leaf(self, index: int) -> bytes:
        """Leaf hash ``index``."""
        return self.get_node(0, index)

    def packed_leaves(self) -> bytes:
        """All leaf hashes, concatenated."""
        return bytes(self._levels[0])

    def node_rows(self) -> Iterable[NodeRow]:
        """Every complete subtree as ``(level, index, hash)``, level by level (e.g. to
        compare with or rebuild the database's node table)."""
        for lv, packed in enumerate(self._levels):
            for i in range(len(packed) // HASH_SIZE):
                yield lv, i, bytes(packed[i * HASH_SIZE:(i + 1) * HASH_SIZE])

    def _size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} is not in 0..{self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        return root_from_nodes(self._size(size), self)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the tree of the first ``size`` leaves."""
        return inclusion_proof_from_nodes(index, self._size(size), self)

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """Consistency proof from ``old_size`` to ``size`` leaves (default: all)."""
        return consistency_proof_from_nodes(old_size, self._size(size), self)


def subtree_nodes(start: int, packed_leaves: bytes) -> list[bytes]:
    """Complete subtrees lying entirely inside a block of leaves that begins at leaf
    ``start``: element ``L - 1`` packs the level-L nodes from index ``ceil(start / 2**L)``
    on. For :meth:`MerkleTree.add_block`, so a worker process can do the hashing."""
    n = len(packed_leaves) // HASH_SIZE
    end = start + n
    out: list[bytes] = []
    cur, cur_first = packed_leaves, start
    lv = 1
    while True:
        first, last = -(-start >> lv), end >> lv
        if first >= last:
            return out
        cur = _pair_hashes(cur, (2 * first - cur_first) * HASH_SIZE, last - first)
        cur_first = first
        out.append(cur)
        lv += 1
