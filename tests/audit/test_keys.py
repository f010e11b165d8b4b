"""The signing key file and verifier keys across rotation."""

from __future__ import annotations

import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from mes.audit import checkpoint as cpm
from mes.audit import keys

SITE = "plant-07.example"
NAME = cpm.key_name(SITE)
TIME = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "instance" / "audit-signing.key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        key = keys.load_or_create_signing_key(path)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = keys.load_or_create_signing_key(path)
    assert keys.public_bytes(again) == keys.public_bytes(key)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o660, 0o644, 0o602])
def test_refuses_a_key_others_can_access(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "k.pem"
    keys.load_or_create_signing_key(path)
    path.chmod(bad_mode)
    with pytest.raises(keys.KeyFileError, match=f"mode {bad_mode:04o}.*chmod 600"):
        keys.load_or_create_signing_key(path)
    path.chmod(0o400)
    keys.load_signing_key(path)


def test_refuses_what_is_not_an_ed25519_key(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(b"garbage")
    path.chmod(0o600)
    with pytest.raises(keys.KeyFileError, match="PEM"):
        keys.load_signing_key(path)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(ec_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(keys.KeyFileError, match="not an Ed25519"):
        keys.load_signing_key(path)
    with pytest.raises(keys.KeyFileError, match="does not exist"):
        keys.load_signing_key(tmp_path / "missing.pem")
    with pytest.raises(keys.KeyFileError, match="not a regular file"):
        keys.load_signing_key(tmp_path)


def test_concurrent_creation_yields_one_key(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    found: list[bytes] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        barrier.wait()
        found.append(keys.public_bytes(keys.load_or_create_signing_key(path)))

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(found)) == 1 and len(found) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


def test_rotation_keeps_old_checkpoints_verifiable(tmp_path: Path) -> None:
    path, vdir = tmp_path / "k.pem", tmp_path / "verifier-keys"
    old = keys.load_or_create_signing_key(path)
    old_note = cpm.sign_checkpoint(cpm.checkpoint_body(NAME, 5, b"\x01" * 32, TIME), NAME, old)
    new = keys.rotate_signing_key(path, vdir, SITE)
    assert keys.public_bytes(new) != keys.public_bytes(old)
    assert mode(path) == 0o600
    assert keys.public_bytes(keys.load_signing_key(path)) == keys.public_bytes(new)
    new_note = cpm.sign_checkpoint(cpm.checkpoint_body(NAME, 9, b"\x02" * 32, TIME), NAME, new)
    all_keys = keys.all_verifier_keys(vdir)
    assert sorted(all_keys) == sorted([keys.verifier_key(old, SITE), keys.verifier_key(new, SITE)])
    for f in vdir.iterdir():
        assert f.name == f.read_text().split("+")[1] + ".vkey"
    assert cpm.verify_checkpoint(old_note, all_keys).size == 5
    assert cpm.verify_checkpoint(new_note, all_keys).size == 9
    with pytest.raises(cpm.CheckpointError, match="key id"):
        cpm.verify_checkpoint(old_note, keys.verifier_key(new, SITE))
    keys.rotate_signing_key(path, vdir, SITE)
    assert len(keys.all_verifier_keys(vdir)) == 3


def test_rotation_refuses_an_unsafe_key(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    keys.load_or_create_signing_key(path)
    path.chmod(0o644)
    with pytest.raises(keys.KeyFileError):
        keys.rotate_signing_key(path, tmp_path / "v", SITE)


def test_verifier_key_files(tmp_path: Path) -> None:
    key = keys.load_or_create_signing_key(tmp_path / "k.pem")
    p1 = keys.save_verifier_key(tmp_path / "v", NAME, keys.public_bytes(key))
    assert keys.save_verifier_key(tmp_path / "v", NAME, keys.public_bytes(key)) == p1  # idempotent
    assert p1.read_text() == keys.verifier_key(key, SITE) + "\n"
    p1.write_text(keys.verifier_key(keys.load_or_create_signing_key(tmp_path / "k2.pem"), SITE) + "\n")
    with pytest.raises(keys.KeyFileError, match="different key"):
        keys.save_verifier_key(tmp_path / "v", NAME, keys.public_bytes(key))
    p1.write_text("broken\n")
    with pytest.raises(cpm.CheckpointError):
        keys.all_verifier_keys(tmp_path / "v")
    assert keys.all_verifier_keys(tmp_path / "none") == []
