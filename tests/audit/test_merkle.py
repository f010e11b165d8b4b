"""RFC 9162 Merkle hashes and proofs, checked against a literal transcription of the RFC's
recursive definitions, and the stored-subtree variants against both."""

from __future__ import annotations

import hashlib
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mes.audit import merkle as m

MAX = 300


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


LEAVES = [H(b"\x00" + i.to_bytes(4, "big")) for i in range(MAX + 1)]


# ----------------------------------------------- RFC 9162 §2.1, transcribed literally


def k_of(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) over LEAVES (leaf hashes), as in §2.1.1."""
    n = hi - lo
    if n == 0:
        return H(b"")
    if n == 1:
        return LEAVES[lo]
    k = k_of(n)
    return H(b"\x01" + ref_mth(lo, lo + k) + ref_mth(lo + k, hi))


def ref_path(mm: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi]), §2.1.3.1."""
    n = hi - lo
    if n == 1:
        return []
    k = k_of(n)
    if mm < k:
        return ref_path(mm, lo, lo + k) + [ref_mth(lo + k, hi)]
    return ref_path(mm - k, lo + k, hi) + [ref_mth(lo, lo + k)]


def ref_subproof(mm: int, lo: int, hi: int, b: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b), §2.1.4.1."""
    n = hi - lo
    if mm == n:
        return [] if b else [ref_mth(lo, hi)]
    k = k_of(n)
    if mm <= k:
        return ref_subproof(mm, lo, lo + k, b) + [ref_mth(lo + k, hi)]
    return ref_subproof(mm - k, lo + k, hi, False) + [ref_mth(lo, lo + k)]


def ref_proof(mm: int, n: int) -> list[bytes]:
    return ref_subproof(mm, 0, n, True)


def all_complete_nodes(size: int) -> dict[tuple[int, int], bytes]:
    """Every complete perfect subtree of a tree of ``size`` leaves, computed naively."""
    out = {}
    level = 0
    while (1 << level) <= size:
        for i in range(size >> level):
            out[(level, i)] = ref_mth(i << level, (i + 1) << level)
        level += 1
    return out


FULL = all_complete_nodes(MAX)


# ------------------------------------------------------------------------ hashes


def test_leaf_and_node_hash() -> None:
    assert m.leaf_hash(b"abc") == H(b"\x00abc")
    assert m.node_hash(b"a" * 32, b"b" * 32) == H(b"\x01" + b"a" * 32 + b"b" * 32)
    assert m.EMPTY_ROOT == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_mth_every_size() -> None:
    for n in range(MAX + 1):
        assert m.mth(LEAVES[:n]) == ref_mth(0, n), n


def test_mth_large() -> None:
    leaves = [H(i.to_bytes(4, "big")) for i in range((1 << 16) + 5)]
    tree = m.MerkleTree.from_leaf_hashes(leaves)
    assert m.mth(leaves) == tree.root() == m.root_from_nodes(len(leaves), tree)
    assert m.mth(leaves[:1 << 16]) == tree.get_node(16, 0)


# ------------------------------------------------------------ inclusion proofs


def test_inclusion_every_size_and_index() -> None:
    """Every size 0..300 and every index: proofs from O(log n) stored subtrees (fetched as
    one dict of exactly the announced keys) equal the RFC's PATH and verify."""
    for n in range(MAX + 1):
        needed = m.nodes_needed_for_root(n)
        assert len(needed) == bin(n).count("1")
        assert m.root_from_nodes(n, {k: FULL[k] for k in needed}) == ref_mth(0, n)
        root = ref_mth(0, n)
        for i in range(n):
            proof = ref_path(i, 0, n)
            needed = m.nodes_needed_for_inclusion(i, n)
            assert len(needed) <= 2 * n.bit_length()
            assert all((idx + 1) << lv <= n for lv, idx in needed)  # only complete subtrees
            assert m.inclusion_proof_from_nodes(i, n, {k: FULL[k] for k in needed}) == proof, (i, n)
            assert m.verify_inclusion(LEAVES[i], i, n, proof, root)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=MAX), st.binary(min_size=1, max_size=8))
def test_inclusion_with_random_leaves(n: int, salt: bytes) -> None:
    leaves = [H(salt + i.to_bytes(2, "big")) for i in range(n)]
    tree = m.MerkleTree.from_leaf_hashes(leaves)
    root = m.mth(leaves)
    for i in range(n):
        proof = m.inclusion_proof(i, leaves) if i % 17 == 0 else tree.inclusion_proof(i)
        assert m.verify_inclusion(leaves[i], i, n, proof, root)
        assert not m.verify_inclusion(leaves[i], i, n, proof, H(root))


def test_verify_inclusion_refuses_bad_proofs() -> None:
    n, i = 13, 6
    root, proof, leaf = ref_mth(0, n), ref_path(i, 0, n), LEAVES[i]
    assert m.verify_inclusion(leaf, i, n, proof, root)
    assert not m.verify_inclusion(LEAVES[i + 1], i, n, proof, root)
    assert not m.verify_inclusion(leaf, i + 1, n, proof, root)
    assert not m.verify_inclusion(leaf, i, 7, proof, root)  # another tree shape
    assert not m.verify_inclusion(leaf, n, n, proof, root)  # index >= size
    assert not m.verify_inclusion(leaf, -1, n, proof, root)
    assert not m.verify_inclusion(leaf, i, n, proof[:-1], root)  # sn != 0 at the end
    assert not m.verify_inclusion(leaf, i, n, proof + [root], root)  # sn == 0 before the end
    assert not m.verify_inclusion(leaf, i, n, [proof[0][:31]] + proof[1:], root)
    assert not m.verify_inclusion(leaf, i, n, list(reversed(proof)), root)
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = H(bad[k])
        assert not m.verify_inclusion(leaf, i, n, bad, root)
    # a single-leaf tree: empty proof, root is the leaf
    assert m.verify_inclusion(LEAVES[0], 0, 1, [], LEAVES[0])
    assert not m.verify_inclusion(LEAVES[0], 0, 1, [LEAVES[1]], LEAVES[0])


# ---------------------------------------------------------- consistency proofs


def test_consistency_all_pairs_up_to_64() -> None:
    for n in range(0, 65):
        for old in range(0, n + 1):
            proof = m.consistency_proof_from_nodes(old, n, FULL)
            if 0 < old < n:
                assert proof == ref_proof(old, n), (old, n)
            else:
                assert proof == []
            assert m.verify_consistency(old, n, ref_mth(0, old), ref_mth(0, n), proof), (old, n)
            if 0 < old < n:
                assert not m.verify_consistency(old, n, H(ref_mth(0, old)), ref_mth(0, n), proof)
                assert not m.verify_consistency(old, n, ref_mth(0, old), H(ref_mth(0, n)), proof)
                assert not m.verify_consistency(old, n, ref_mth(0, old), ref_mth(0, n), proof[:-1])


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=MAX).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_consistency_up_to_300(pair: tuple[int, int]) -> None:
    old, n = pair
    proof = m.consistency_proof(old, LEAVES[:n])
    assert proof == (ref_proof(old, n) if old < n else [])
    assert m.verify_consistency(old, n, ref_mth(0, old), ref_mth(0, n), proof)


def test_consistency_edge_cases() -> None:
    r3, r7 = ref_mth(0, 3), ref_mth(0, 7)
    assert m.verify_consistency(7, 7, r7, r7, [])
    assert not m.verify_consistency(7, 7, r7, r3, [])
    assert not m.verify_consistency(7, 7, r7, r7, [r3])
    assert m.verify_consistency(0, 7, m.EMPTY_ROOT, r7, [])
    assert not m.verify_consistency(7, 3, r7, r3, [])
    assert not m.verify_consistency(3, 7, r3, r7, [])
    with pytest.raises(ValueError):
        m.consistency_proof_ranges(8, 7)


# ----------------------------------------------------------- stored subtrees


class CountingStore(dict):
    """A node store that records which keys were read."""

    def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        self.reads.append(key)
        return super().__getitem__(key)


def test_append_one_by_one_builds_every_complete_subtree() -> None:
    store = CountingStore()
    for n in range(MAX):
        store.reads.clear()
        rows = m.nodes_completed_by_append(n, LEAVES[n], store)
        trailing_ones = (n ^ (n + 1)).bit_length() - 1
        assert len(rows) == 1 + trailing_ones
        assert rows[0] == (0, n, LEAVES[n])
        assert sorted(set(store.reads)) == sorted(m.nodes_needed_for_append(n))
        for lv, idx, h in rows:
            assert (lv, idx) not in store
            store[(lv, idx)] = h
        assert m.root_from_nodes(n + 1, store) == ref_mth(0, n + 1)
    assert dict(store) == FULL
    assert len(FULL) < 2 * MAX


def test_append_reads_through_every_kind_of_node_source() -> None:
    n = 23  # 0b10111: three trailing ones
    expected = m.nodes_completed_by_append(n, LEAVES[n], FULL)
    calls: list[list[tuple[int, int]]] = []

    def get_nodes(wanted: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:  # batched, one query
        calls.append(list(wanted))
        return {k: FULL[k] for k in wanted}

    assert m.nodes_completed_by_append(n, LEAVES[n], get_nodes) == expected
    assert calls == [m.nodes_needed_for_append(n)]
    assert m.nodes_completed_by_append(n, LEAVES[n], lambda lv, i: FULL[(lv, i)]) == expected
    assert m.nodes_completed_by_append(n, LEAVES[n], m.MerkleTree.from_leaf_hashes(LEAVES[:n])) == expected
    with pytest.raises(m.MissingNodeError, match="level 2, index 4"):
        m.nodes_completed_by_append(n, LEAVES[n], {})
    calls.clear()
    m.nodes_completed_by_append(8, LEAVES[8], get_nodes)
    assert calls == []  # nothing to read: no call at all


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=20))
def test_batch_append_equals_one_by_one(batch_sizes: list[int]) -> None:
    store: dict[tuple[int, int], bytes] = {}
    size = 0
    for k in batch_sizes:
        k = min(k, MAX - size)
        if k <= 0:
            break
        needed = m.nodes_needed_for_append(size, k)
        rows = m.nodes_completed_by_batch(size, LEAVES[size:size + k], {key: store[key] for key in needed})
        for lv, idx, h in rows:
            assert (lv, idx) not in store
            store[(lv, idx)] = h
        size += k
        assert store == all_complete_nodes(size)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=MAX), st.data())
def test_proofs_from_nodes_hypothesis(n: int, data: st.DataObject) -> None:
    assert m.root_from_nodes(n, FULL) == m.mth(LEAVES[:n])
    if n:
        i = data.draw(st.integers(min_value=0, max_value=n - 1))
        assert m.inclusion_proof_from_nodes(i, n, FULL) == m.inclusion_proof(i, LEAVES[:n])
        old = data.draw(st.integers(min_value=0, max_value=n))
        needed = m.nodes_needed_for_consistency(old, n)
        proof = m.consistency_proof_from_nodes(old, n, {k: FULL[k] for k in needed})
        assert m.verify_consistency(old, n, m.mth(LEAVES[:old]), m.mth(LEAVES[:n]), proof)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=70), min_size=1, max_size=12))
def test_tree_blocks_with_worker_subtrees_equal_extend(blocks: list[int]) -> None:
    tree, plain, start = m.MerkleTree(), m.MerkleTree(), 0
    for k in blocks:
        chunk = LEAVES[start:start + k]
        if not chunk:
            break
        packed = b"".join(chunk)
        tree.add_block(start, packed, m.subtree_nodes(start, packed))
        plain.extend(chunk)
        start += len(chunk)
    assert list(tree.node_rows()) == list(plain.node_rows())
    assert {(lv, i): h for lv, i, h in tree.node_rows()} == all_complete_nodes(start)
    assert tree.root() == ref_mth(0, start)


def test_tree_reads() -> None:
    tree = m.MerkleTree.from_leaf_hashes(LEAVES[:10])
    assert len(tree) == 10 and tree.leaf(9) == LEAVES[9]
    assert tree[(3, 0)] == ref_mth(0, 8)
    with pytest.raises(m.MissingNodeError):
        tree.get_node(1, 5)  # covers leaves 10..11: not complete
    with pytest.raises(ValueError):
        tree.root(11)
    assert tree.root(5) == ref_mth(0, 5)
    assert tree.consistency_proof(5) == ref_proof(5, 10)
    with pytest.raises(ValueError):
        tree.add_block(3, b"", [])
    with pytest.raises(ValueError):
        tree.extend([b"short"])


def test_range_algebra() -> None:
    assert m.frontier(13) == [(3, 0), (2, 2), (0, 12)]
    assert m.frontier(0) == []
    assert m.range_nodes(8, 13) == [(2, 2), (0, 12)]
    with pytest.raises(ValueError):
        m.range_nodes(3, 9)
    with pytest.raises(ValueError):
        m.inclusion_proof_ranges(5, 5)


def test_append_one_by_one_equals_extend() -> None:
    tree = m.MerkleTree()
    for n, leaf in enumerate(LEAVES):
        tree.append(leaf)
        if n % 37 == 0 or n == MAX:
            assert tree.root() == ref_mth(0, n + 1)
    assert {(lv, i): h for lv, i, h in tree.node_rows()} == FULL_PLUS_LAST
    with pytest.raises(ValueError):
        tree.append(b"short")


FULL_PLUS_LAST = all_complete_nodes(MAX + 1)
