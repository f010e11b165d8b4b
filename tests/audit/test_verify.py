"""The independent export verifier (spec §5) on generated exports, tampered in every way
the spec cares about, and its fast path against the reference check."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mes.audit import canonical, entry_stream, verify
from mes.audit.merkle import MerkleTree, leaf_hash

from .factory import (
    T0,
    batch_files,
    checkpoints_for,
    default_sizes,
    entry_dict,
    export_files,
    make_lines,
    note,
    signing_key,
    vkey,
    write,
)

KEY = signing_key()
N = 40


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return make_lines(N)


@pytest.fixture(scope="module")
def files(lines: list[bytes]) -> dict[str, bytes]:
    return export_files(lines, KEY)


def entries(lines: list[bytes]) -> bytes:
    return b"".join(b + b"\n" for b in lines)


def check(files: dict[str, bytes], **changes: bytes) -> verify.VerifyResult:
    result = verify.verify_export_files({**files, **changes})
    assert not result.ok and result.errors
    return result


# ------------------------------------------------------------------------ valid


def test_generated_export_verifies(tmp_path: Path, files: dict[str, bytes], lines: list[bytes],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    result = verify.verify_export_files(files)
    assert result.ok, result.errors
    assert (result.entries, result.first_bad_seq, result.batch) == (N, None, None)
    tree = MerkleTree.from_leaf_hashes(leaf_hash(b) for b in lines)
    assert result.checkpoint is not None and result.checkpoint.root == tree.root()
    assert verify.verify_export(write(tmp_path / "x", files)).ok
    assert verify.main([str(tmp_path / "x")]) == 0
    assert capsys.readouterr().out == result.summary() + "\n"


def test_every_entry_takes_the_fast_path_except_nested_ones(lines: list[bytes]) -> None:
    for line in lines:
        nested = b'"limits":{' in line
        assert (verify.fast_entry_fields(line) is None) == nested


# ---------------------------------------------------------------- tampered entries


def test_edited_entry(files: dict[str, bytes], lines: list[bytes]) -> None:
    changed = list(lines)
    changed[14] = changed[14].replace(b'"14.50"', b'"14.60"')
    assert changed[14] != lines[14] and canonical.is_canonical(changed[14])
    result = check(files, **{"entries.jsonl": entries(changed)})
    assert result.first_bad_seq == 15
    assert "seq 15: prev does not match the leaf hash of the entry before (seq 14)" in result.errors[0]
    assert any("checkpoint root is not the MTH" in e for e in result.errors)


def test_edited_last_entry_is_caught_by_the_checkpoint(files: dict[str, bytes], lines: list[bytes]) -> None:
    changed = list(lines)
    changed[-1] = changed[-1].replace(b"KIOSK-", b"KIOSQ-")
    result = check(files, **{"entries.jsonl": entries(changed)})
    assert "checkpoint root is not the MTH of the first 40 entries" in result.errors[0]
    assert result.first_bad_seq == 30  # no longer vouched for: after the last consistent checkpoint


def test_non_canonical_entry(files: dict[str, bytes], lines: list[bytes]) -> None:
    changed = list(lines)
    changed[7] = changed[7].replace(b'","', b'", "', 1)
    result = check(files, **{"entries.jsonl": entries(changed)})
    assert result.first_bad_seq == 7
    assert "seq 7: not in canonical form" in result.errors[0]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda e: {**e, "after": {"qty": 12.5}}, "after.qty is a float"),
    (lambda e: {k: v for k, v in e.items() if k != "terminal"}, "missing terminal"),
    (lambda e: {**e, "v": "mes.audit.entry/v0"}, "v must be"),
    (lambda e: {**e, "prev": e["prev"].upper()}, "prev must be 64 lowercase hex"),
    (lambda e: {**e, "at": "2026-11-23T10:00:05Z"}, "at:"),
    (lambda e: {**e, "actor": "u-1"}, "actor must be an object"),
    (lambda e: {**e, "seq": str(e["seq"])}, "seq must be"),
])
def test_invalid_entry_members(files: dict[str, bytes], lines: list[bytes], edit: Any, message: str) -> None:
    changed = list(lines)
    changed[5] = json.dumps(edit(json.loads(lines[5])), sort_keys=True, separators=(",", ":"),
                            ensure_ascii=False).encode()
    result = check(files, **{"entries.jsonl": entries(changed)})
    assert result.first_bad_seq == 5
    assert message in result.errors[0]


def test_deleted_entry(files: dict[str, bytes], lines: list[bytes]) -> None:
    result = check(files, **{"entries.jsonl": entries(lines[:20] + lines[21:])})
    assert result.first_bad_seq == 20
    assert "seq 20: seq is 21, expected 20" in result.errors[0]


def test_reordered_entries(files: dict[str, bytes], lines: list[bytes]) -> None:
    changed = list(lines)
    changed[11], changed[12] = changed[12], changed[11]
    result = check(files, **{"entries.jsonl": entries(changed)})
    assert result.first_bad_seq == 11
    assert result.errors[0].startswith("entries.jsonl: seq 11: seq is 12")


def test_truncated_tail(files: dict[str, bytes], lines: list[bytes]) -> None:
    result = check(files, **{"entries.jsonl": entries(lines[:35])})
    assert result.first_bad_seq == 35
    assert "checkpoint covers 40 entries but entries.jsonl has 35: entries from seq 35 on are missing" \
        in result.errors
    # a historical checkpoint that covers entries that are not there is named too
    result = check(files, **{"entries.jsonl": entries(lines[:25])})
    assert result.first_bad_seq == 25
    assert any("covers 30 entries but there are only 25" in e for e in result.errors)


def test_extra_entries_beyond_the_checkpoint(lines: list[bytes]) -> None:
    files = export_files(lines[:30], KEY)
    result = check(files, **{"entries.jsonl": entries(lines)})
    assert result.first_bad_seq == 30
    assert "entries.jsonl has 40 entries but the checkpoint covers only 30" in result.errors[0]


def test_time_going_backwards_in_entries() -> None:
    back = lambda e: {**e, "at": canonical.format_at(T0 + timedelta(seconds=3))} if e["seq"] == 17 else e  # noqa: E731
    tampered = make_lines(N, edit=back)  # chained and signed: only the clock is wrong
    result = check(export_files(tampered, KEY))
    assert result.first_bad_seq == 17
    assert result.errors == ["entries.jsonl: seq 17: at 2026-11-23T10:00:03.000000Z is before the previous "
                             "entry's at 2026-11-23T10:00:16.000016Z"]
    equal = lambda e: {**e, "at": canonical.format_at(T0 + timedelta(seconds=16, microseconds=16))} \
        if e["seq"] == 17 else e  # noqa: E731
    assert verify.verify_export_files(export_files(make_lines(N, edit=equal), KEY)).ok  # equal times are fine


def test_missing_final_newline_and_blank_lines(files: dict[str, bytes], lines: list[bytes]) -> None:
    result = check(files, **{"entries.jsonl": entries(lines)[:-1]})
    assert result.first_bad_seq == 39 and "does not end with a newline" in result.errors[0]
    result = check(files, **{"entries.jsonl": entries(lines[:10]) + b"\n" + entries(lines[10:])})
    assert result.first_bad_seq == 10 and "not valid JSON" in result.errors[0]
    result = check(files, **{"entries.jsonl": entries(lines).replace(b"\n", b"\r\n")})
    assert result.first_bad_seq == 0 and "canonical" in result.errors[0]


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_with_mismatching_root(lines: list[bytes], files: dict[str, bytes]) -> None:
    forged = note(KEY, N, leaf_hash(b"other"), T0 + timedelta(seconds=N))
    notes = [json.loads(x) for x in files["checkpoints.jsonl"].decode().splitlines()][:-1] + [forged]
    result = check(files, checkpoint=forged.encode(),
                   **{"checkpoints.jsonl": "".join(json.dumps(n) + "\n" for n in notes).encode()})
    assert "checkpoint root is not the MTH of the first 40 entries" in result.errors
    assert result.first_bad_seq == 30


def test_checkpoint_signed_by_another_key(files: dict[str, bytes]) -> None:
    result = check(files, **{"log.vkey": (vkey(signing_key(9)) + "\n").encode()})
    assert result.errors[0].startswith("checkpoint: checkpoint is signed by key id")
    assert len(result.errors) == 1 + 4  # the checkpoint and every historical one
    other = vkey(signing_key(9), "other.example/mes/audit")
    assert "key name" in check(files, **{"log.vkey": (other + "\n").encode()}).errors[0]


def test_log_vkey_may_hold_rotated_keys(lines: list[bytes]) -> None:
    old, new = signing_key(1), signing_key(2)
    tree = MerkleTree.from_leaf_hashes(leaf_hash(b) for b in lines)
    notes = [note(old, s, tree.root(s), T0 + timedelta(seconds=s)) for s in (10, 20)] + \
            [note(new, s, tree.root(s), T0 + timedelta(seconds=s)) for s in (30, 40)]
    files = export_files(lines, new, notes=notes)
    assert not verify.verify_export_files(files).ok
    both = (vkey(new) + "\n" + vkey(old) + "\n").encode()
    assert verify.verify_export_files({**files, "log.vkey": both}).ok
    assert verify.verify_export_files(files, extra_vkeys=[vkey(old)]).ok


def test_historical_checkpoint_time_going_backwards(lines: list[bytes]) -> None:
    tree = MerkleTree.from_leaf_hashes(leaf_hash(b) for b in lines)
    times = {10: 100, 20: 50, 30: 200, 40: 300}
    notes = [note(KEY, s, tree.root(s), T0 + timedelta(seconds=t)) for s, t in times.items()]
    result = check(export_files(lines, KEY, notes=notes))
    assert result.errors == ["checkpoints.jsonl line 2: time 2026-11-23T10:00:50Z goes back from the checkpoint "
                             "before (2026-11-23T10:01:40Z)"]


def test_inconsistent_historical_checkpoint(lines: list[bytes]) -> None:
    fork = make_lines(N, batch_of=lambda i: "B-FORK")
    notes = checkpoints_for(fork, KEY, [10]) + checkpoints_for(lines, KEY, [20, 30, 40])
    result = check(export_files(lines, KEY, notes=notes))
    assert result.errors == ["checkpoints.jsonl line 1: root is not the MTH of the first 10 entries "
                             "(inconsistent with the log)"]
    assert result.first_bad_seq == 0


def test_checkpoint_history_structure(lines: list[bytes], files: dict[str, bytes]) -> None:
    notes = checkpoints_for(lines, KEY, [10, 30, 20, 40])
    assert any("tree size 20 is smaller" in e for e in check(export_files(lines, KEY, notes=notes)).errors)
    history = files["checkpoints.jsonl"]
    without_latest = b"".join(history.splitlines(keepends=True)[:-1])
    assert "its last line is not the checkpoint file" in check(files, **{"checkpoints.jsonl": without_latest}).errors[0]
    spaced = history.replace(b'"\n', b'" \n', 1)
    assert "json.dumps" in check(files, **{"checkpoints.jsonl": spaced}).errors[0]
    assert "newline" in check(files, **{"checkpoints.jsonl": history[:-1]}).errors[0]
    same_size_other_root = notes[:1] + [note(KEY, 10, leaf_hash(b"x"), T0 + timedelta(seconds=11))]
    errors = check(export_files(lines, KEY, notes=same_size_other_root + checkpoints_for(lines, KEY, [40]))).errors
    assert any("same tree size 10 as the checkpoint before but a different root" in e for e in errors)


@pytest.mark.parametrize("name", ["checkpoint", "checkpoints.jsonl", "log.vkey", "entries.jsonl"])
def test_missing_files(files: dict[str, bytes], name: str) -> None:
    result = verify.verify_export_files({k: v for k, v in files.items() if k != name})
    assert not result.ok and f"{name} is missing" in result.errors


# ------------------------------------------------------------------- batch export


@pytest.fixture(scope="module")
def batch(lines: list[bytes]) -> dict[str, bytes]:
    return batch_files(lines, KEY, "B-1")


def test_batch_export_verifies(tmp_path: Path, batch: dict[str, bytes]) -> None:
    result = verify.verify_export_files(batch)
    assert result.ok, result.errors
    assert (result.batch, result.entries) == ("B-1", 26)
    assert verify.verify_export(write(tmp_path / "b", batch)).ok
    assert verify.main([str(tmp_path / "b")]) == 0


def proofs_of(batch: dict[str, bytes]) -> dict[str, Any]:
    return json.loads(batch["proofs.json"])


def test_batch_export_with_a_bad_proof(batch: dict[str, bytes]) -> None:
    doc = proofs_of(batch)
    target = doc["entries"][9]
    h = target["proof"][2]
    target["proof"][2] = h[:10] + ("0" if h[10] != "0" else "1") + h[11:]
    result = check(batch, **{"proofs.json": json.dumps(doc).encode()})
    seq = target["seq"]
    assert result.first_bad_seq == seq
    assert result.errors == [f"entries.jsonl line 10 (seq {seq}): inclusion proof does not verify against the "
                             "checkpoint"]
    target["proof"] = target["proof"][:-1]
    assert check(batch, **{"proofs.json": json.dumps(doc).encode()}).first_bad_seq == seq


def test_batch_export_proof_shape_and_seq(batch: dict[str, bytes]) -> None:
    doc = proofs_of(batch)
    doc["entries"][3]["seq"] += 1
    result = check(batch, **{"proofs.json": json.dumps(doc).encode()})
    assert "is for seq" in result.errors[0]
    doc = proofs_of(batch)
    del doc["entries"][-1]
    assert "25 proofs for 26 entries" in check(batch, **{"proofs.json": json.dumps(doc).encode()}).errors[0]
    assert "proofs.json" in check(batch, **{"proofs.json": b"{}"}).errors[0]
    doc = proofs_of(batch)
    doc["entries"][0]["proof"][0] = doc["entries"][0]["proof"][0].upper()
    assert "64 hex" in check(batch, **{"proofs.json": json.dumps(doc).encode()}).errors[0]


def test_batch_export_entry_beyond_the_checkpoint(lines: list[bytes]) -> None:
    full = batch_files(lines, KEY, "B-1")
    small = batch_files(lines[:20], KEY, "B-1")
    doc = proofs_of(full)
    doc["checkpoint"] = proofs_of(small)["checkpoint"]
    result = check(full, **{"proofs.json": json.dumps(doc).encode()})
    assert "not covered by the proofs' checkpoint (size 20)" in " ".join(result.errors)


def test_batch_export_chain_where_seq_is_consecutive(batch: dict[str, bytes], lines: list[bytes]) -> None:
    body = batch["entries.jsonl"].split(b"\n")[:-1]
    seqs = [json.loads(b)["seq"] for b in body]
    k = next(i for i in range(1, len(seqs)) if seqs[i] == seqs[i - 1] + 1)
    e = json.loads(body[k])
    e["prev"] = "f" * 64
    body[k] = json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    result = check(batch, **{"entries.jsonl": entries(body)})
    assert f"entries.jsonl line {k + 1} (seq {seqs[k]}): prev does not match the leaf hash of seq {seqs[k - 1]}" \
        in result.errors
    assert result.first_bad_seq == seqs[k]


def test_batch_export_order_batches_and_time(batch: dict[str, bytes], lines: list[bytes]) -> None:
    body = batch["entries.jsonl"].split(b"\n")[:-1]
    swapped = body[:4] + [body[5], body[4]] + body[6:]
    assert "seq does not increase" in " ".join(check(batch, **{"entries.jsonl": entries(swapped)}).errors)
    mixed = batch_files(lines, KEY, "B-2")
    other = {**batch, "entries.jsonl": batch["entries.jsonl"] + mixed["entries.jsonl"]}
    assert any("several batches" in e for e in check(other).errors)


def test_batch_export_optional_checkpoints(batch: dict[str, bytes], lines: list[bytes]) -> None:
    cp = proofs_of(batch)["checkpoint"]
    history = checkpoints_for(lines, KEY, default_sizes(N))
    assert history[-1] == cp
    good = {**batch, "checkpoint": cp.encode(), "checkpoints.jsonl": "".join(json.dumps(n) + "\n" for n in history)
            .encode()}
    assert verify.verify_export_files(good).ok
    result = check(good, **{"checkpoints.jsonl": "".join(json.dumps(n) + "\n" for n in history[:-1]).encode()})
    assert "checkpoints.jsonl does not contain the checkpoint of proofs.json" in result.errors
    result = check(good, checkpoint=history[0].encode())
    assert "checkpoint is older than the checkpoint in proofs.json" in result.errors


# --------------------------------------------------------------- parallel paths


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry_stream, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(entry_stream, "FILE_BLOCK_BYTES", 3000)
    monkeypatch.setattr(entry_stream, "STREAM_BLOCK_LINES", 7)


@pytest.fixture(scope="module")
def many() -> list[bytes]:
    return make_lines(300)


@pytest.mark.usefixtures("small_blocks")
def test_parallel_file_verification(tmp_path: Path, many: list[bytes]) -> None:
    files = export_files(many, KEY, sizes=default_sizes(300, 64))
    d = write(tmp_path / "ok", files)
    seq_result = verify.verify_entries_file(d / "entries.jsonl", workers=1)
    par_result = verify.verify_entries_file(d / "entries.jsonl", workers=2)
    assert par_result.ok and seq_result.ok
    assert list(par_result.tree.node_rows()) == list(seq_result.tree.node_rows())
    assert verify.verify_export(d, workers=2).ok
    # a deleted entry shifts every later block: each is redone with the right start
    d2 = write(tmp_path / "deleted", {**files, "entries.jsonl": entries(many[:150] + many[151:])})
    broken = verify.verify_export(d2, workers=2)
    assert broken.first_bad_seq == 150
    assert broken.errors[0].startswith("entries.jsonl: seq 150: seq is 151, expected 150")
    assert broken.errors == verify.verify_export(d2, workers=1).errors
    d3 = write(tmp_path / "edited", {**files, "entries.jsonl": entries(many).replace(b'"210.50"', b'"210.51"')})
    assert verify.verify_export(d3, workers=2).first_bad_seq == 211


@pytest.mark.usefixtures("small_blocks")
def test_parallel_stream_verification(many: list[bytes]) -> None:
    one = verify.verify_entry_stream(iter(many), workers=1)
    two = verify.verify_entry_stream(iter(many), workers=2)
    assert one.ok and two.ok and one.entries == two.entries == 300
    assert one.root == two.root == MerkleTree.from_leaf_hashes(leaf_hash(b) for b in many).root()
    assert two.last_at == json.loads(many[-1])["at"]
    bad = list(many)
    bad[101] = bad[101].replace(b"KIOSK", b"KIOSQ")
    bad[200] = b"not json"
    result = verify.verify_entry_stream(bad, workers=2)
    assert result.first_bad_seq == 102
    assert result.errors == ["seq 102: prev does not match the leaf hash of the entry before (seq 101)",
                             "seq 200: not valid JSON: Expecting value at character 0",
                             "seq 201: prev does not match the leaf hash of the entry before (seq 200)"]
    assert result.tree.leaf(200) == leaf_hash(b"not json")  # every line is hashed as given


def test_error_cap_keeps_the_first_bad_seq(many: list[bytes]) -> None:
    shifted = many[:5] + many[6:]
    result = verify.verify_entry_stream(shifted, workers=1, max_errors=3)
    assert result.first_bad_seq == 5 and len(result.errors) == 3 and not result.ok


def test_cli_failure(tmp_path: Path, files: dict[str, bytes], lines: list[bytes],
                     capsys: pytest.CaptureFixture[str]) -> None:
    d = write(tmp_path / "bad", {**files, "entries.jsonl": entries(lines[:39])})
    assert verify.main([str(d)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("FAILED: export, 39 entries, first bad seq 39: ")
    assert captured.out.count("\n") == 1 and captured.err
    assert verify.main([str(tmp_path / "nowhere")]) == 2


# ------------------------------------------------- fast path against reference


flat_values = st.one_of(
    st.text(max_size=8), st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1), st.booleans(), st.none(),
    st.lists(st.one_of(st.text(max_size=4), st.integers(-5, 5), st.none()), max_size=3),
)
ascii_keys = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=6)
after_values = st.one_of(st.none(), st.dictionaries(ascii_keys, flat_values, max_size=9),
                         st.dictionaries(ascii_keys, st.dictionaries(ascii_keys, flat_values, max_size=2), max_size=2))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(after=after_values, before=after_values, i=st.integers(0, 6), text=st.text(max_size=10))
def test_fast_path_accepts_what_reference_accepts(after: Any, before: Any, i: int, text: str) -> None:
    e = entry_dict(i, canonical.ZERO_HASH, batch="B-1")
    e.update(after=after, before=before, reason=text or None, terminal=text)
    line = json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        reference = canonical.parse_entry(line)
    except canonical.AuditValueError:
        assume(False)  # lone surrogates in generated text
    fast = verify.fast_entry_fields(line)
    assert fast is None or fast == (reference["seq"], reference["prev"].encode(), reference["at"].encode())
    plain_key = lambda k: all(0x20 <= ord(ch) <= 0x7E and ch not in '"\\' for ch in k)  # noqa: E731
    flat = all(x is None or (len(x) <= 8 and all(map(plain_key, x))
                             and not any(isinstance(v, dict) for v in x.values()))
               for x in (after, before))
    if flat:
        assert fast is not None  # the common shapes do take the fast path


@settings(max_examples=1500, deadline=None)
@given(i=st.integers(0, 6), data=st.data())
def test_fast_path_never_accepts_what_reference_refuses(i: int, data: st.DataObject) -> None:
    line = bytearray(canonical.canonical_bytes(entry_dict(i, "a" * 64, batch="B-1")))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "replace"]))
        pos = data.draw(st.integers(0, len(line) - 1))
        byte = data.draw(st.sampled_from([0x00, 0x09, 0x0A, 0x20, 0x22, 0x2C, 0x2E, 0x2F, 0x30, 0x31, 0x3A, 0x45,
                                          0x5C, 0x5B, 0x5D, 0x61, 0x65, 0x6E, 0x75, 0x7B, 0x7D, 0x7F, 0x80, 0xC3,
                                          0xE2, 0xFF]))
        if op == "flip":
            line[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            line.insert(pos, byte)
        elif op == "delete" and len(line) > 1:
            del line[pos]
        else:
            line[pos] = byte
    line_b = bytes(line)
    fast = verify.fast_entry_fields(line_b)
    if fast is not None:
        reference = canonical.parse_entry(line_b)  # must not raise
        assert fast == (reference["seq"], reference["prev"].encode(), reference["at"].encode())
