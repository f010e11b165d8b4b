"""The shared test vectors (``shared/vectors/audit``): every value in ``expected.json`` is
reproduced from ``entries.jsonl``, and the verifier accepts the folder and rejects every
one-byte change of ``entries.jsonl``, ``checkpoint`` and ``checkpoints.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mes.audit import canonical, merkle, verify
from mes.audit import checkpoint as cpm

from .vectors import vectors_dir


@pytest.fixture(scope="module")
def vdir() -> Path:
    return vectors_dir()


@pytest.fixture(scope="module")
def expected(vdir: Path) -> dict:
    return json.loads((vdir / "expected.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def lines(vdir: Path) -> list[bytes]:
    data = (vdir / "entries.jsonl").read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


@pytest.fixture(scope="module")
def key(expected: dict) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(expected["test_private_key_seed_hex"]))


@pytest.fixture(scope="module")
def files(vdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in vdir.iterdir() if p.name != "expected.json"}


def test_entries_are_canonical_and_rebuild_byte_for_byte(lines: list[bytes]) -> None:
    assert len(lines) == 7
    for seq, line in enumerate(lines):
        entry = canonical.parse_entry(line)
        assert entry["seq"] == seq
        assert canonical.canonical_bytes(entry) == line
        assert canonical.is_canonical(line)


def test_fast_path_agrees_with_reference_on_vectors(lines: list[bytes]) -> None:
    for line in lines:
        entry = canonical.parse_entry(line)
        assert verify.fast_entry_fields(line) == (entry["seq"], entry["prev"].encode(), entry["at"].encode())


def test_leaf_hashes_and_chain(lines: list[bytes], expected: dict) -> None:
    leaves = [merkle.leaf_hash(b) for b in lines]
    assert [h.hex() for h in leaves] == expected["leaf_hashes"]
    prev = canonical.ZERO_HASH
    for line, leaf in zip(lines, leaves, strict=True):
        assert json.loads(line)["prev"] == prev
        prev = leaf.hex()


def test_roots_for_every_size(lines: list[bytes], expected: dict) -> None:
    leaves = [merkle.leaf_hash(b) for b in lines]
    tree = merkle.MerkleTree.from_leaf_hashes(leaves)
    assert set(expected["roots_by_size"]) == {str(n) for n in range(8)}
    for size, root in expected["roots_by_size"].items():
        n = int(size)
        assert merkle.mth(leaves[:n]).hex() == root
        assert tree.root(n).hex() == root
        assert merkle.root_from_nodes(n, tree).hex() == root


def test_inclusion_proofs_at_size_7(lines: list[bytes], expected: dict) -> None:
    leaves = [merkle.leaf_hash(b) for b in lines]
    tree = merkle.MerkleTree.from_leaf_hashes(leaves)
    root = bytes.fromhex(expected["roots_by_size"]["7"])
    assert set(expected["inclusion_proofs_at_size_7"]) == {str(i) for i in range(7)}
    for index, proof_hex in expected["inclusion_proofs_at_size_7"].items():
        i = int(index)
        proof = [bytes.fromhex(h) for h in proof_hex]
        assert merkle.inclusion_proof(i, leaves) == proof
        assert merkle.inclusion_proof_from_nodes(i, 7, tree) == proof
        assert merkle.verify_inclusion(leaves[i], i, 7, proof, root)


def test_key_name_id_and_vkey_from_the_seed(vdir: Path, expected: dict, key: Ed25519PrivateKey) -> None:
    name = cpm.key_name("plant-01.example")
    assert name == expected["key_name"]
    pub = cpm.public_key_bytes(key)
    vkey_file = (vdir / "log.vkey").read_text("utf-8")
    assert vkey_file == cpm.vkey_text(name, pub) + "\n"
    assert vkey_file.split("+")[1] == cpm.key_id(name, pub).hex()
    parsed = cpm.parse_vkey(vkey_file)
    assert (parsed.name, parsed.key_id, parsed.public_key) == (name, cpm.key_id(name, pub), pub)


def test_both_checkpoints_byte_for_byte_from_the_seed(vdir: Path, lines: list[bytes], expected: dict,
                                                      key: Ed25519PrivateKey) -> None:
    leaves = [merkle.leaf_hash(b) for b in lines]
    history = (vdir / "checkpoints.jsonl").read_text("utf-8")
    published = [json.loads(line) for line in history.splitlines()]
    assert len(published) == 2
    rebuilt = []
    for text in published:
        cp = cpm.parse_checkpoint(text)  # only for size and time; the root is recomputed
        body = cpm.checkpoint_body(expected["key_name"], cp.size, merkle.mth(leaves[:cp.size]), cp.time)
        rebuilt.append(cpm.sign_checkpoint(body, expected["key_name"], key))
    assert rebuilt == published
    assert [cpm.parse_checkpoint(t).size for t in rebuilt] == [3, 7]
    assert "".join(json.dumps(t) + "\n" for t in rebuilt) == history
    assert (vdir / "checkpoint").read_text("utf-8") == rebuilt[-1]
    for text in rebuilt:
        cpm.verify_checkpoint(text, (vdir / "log.vkey").read_text("utf-8"))


def test_verifier_accepts_the_folder(vdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = verify.verify_export(vdir)
    assert result.ok, result.errors
    assert result.entries == 7 and result.first_bad_seq is None
    assert verify.main([str(vdir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK:") and out.count("\n") == 1


@pytest.mark.parametrize("name", ["entries.jsonl", "checkpoint", "checkpoints.jsonl", "log.vkey"])
def test_verifier_rejects_any_one_byte_change(files: dict[str, bytes], name: str) -> None:
    assert verify.verify_export_files(files).ok
    data = files[name]
    accepted = []
    for pos in range(len(data)):
        for mask in (0x01, 0x20):  # low bit (hex digits, base64 padding bits) and ASCII case
            changed = bytearray(data)
            changed[pos] ^= mask
            result = verify.verify_export_files({**files, name: bytes(changed)})
            if result.ok:
                accepted.append((pos, mask))
    assert not accepted, f"one-byte changes of {name} accepted at (position, xor mask) {accepted[:10]}"


@pytest.mark.parametrize("name", ["entries.jsonl", "checkpoint", "checkpoints.jsonl", "log.vkey"])
def test_verifier_rejects_any_newline_change(files: dict[str, bytes], name: str) -> None:
    """Exact newlines: each newline dropped, doubled or made CRLF, and a missing or extra final
    newline, are all refused (notes, keys and lines are compared byte for byte)."""
    data = files[name]
    variants = [data[:-1], data + b"\n", data + b"\r\n"]
    for pos in [i for i, b in enumerate(data) if b == 0x0A]:
        variants += [data[:pos] + data[pos + 1:], data[:pos] + b"\n" + data[pos:], data[:pos] + b"\r" + data[pos:]]
    accepted = [v for v in variants if verify.verify_export_files({**files, name: v}).ok]
    assert not accepted, f"newline changes of {name} accepted: {accepted[:2]}"


def test_changed_entry_is_located(files: dict[str, bytes]) -> None:
    data = files["entries.jsonl"]
    changed = data.replace(b'"qty":"12.50"', b'"qty":"12.60"')
    assert changed != data
    result = verify.verify_export_files({**files, "entries.jsonl": changed})
    assert not result.ok
    assert result.first_bad_seq == 3  # seq 2 changed: seq 3's prev no longer matches
    assert "seq 2" in result.errors[0]
