"""C2SP signed-note checkpoints: strict parsing and verification."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mes.audit import checkpoint as cpm
from mes.audit.merkle import EMPTY_ROOT

from .factory import NAME, signing_key, vkey

ROOT = bytes(range(32))
TIME = datetime(2026, 11, 23, 10, 7, 0, 999999, tzinfo=UTC)


def make(size: int = 7, root: bytes = ROOT, time: datetime = TIME, seed: int = 7, name: str = NAME) -> str:
    key = signing_key(seed)
    return cpm.sign_checkpoint(cpm.checkpoint_body(name, size, root, time), name, key)


def test_layout_and_round_trip() -> None:
    text = make()
    lines = text.split("\n")
    assert lines[:5] == [NAME, "7", base64.b64encode(ROOT).decode(), "time 2026-11-23T10:07:00Z", ""]
    assert lines[5].startswith("\u2014 " + NAME + " ") and lines[6] == ""
    cp = cpm.verify_checkpoint(text, vkey(signing_key()))
    assert (cp.origin, cp.size, cp.root) == (NAME, 7, ROOT)
    assert cp.time == datetime(2026, 11, 23, 10, 7, tzinfo=UTC)
    assert cp.body == "\n".join(lines[:4]) + "\n"
    assert cp.signatures[0].key_id == cpm.key_id(NAME, cpm.public_key_bytes(signing_key()))
    assert cp.text == text


def test_key_name_and_ids() -> None:
    assert cpm.key_name("plant-01.example") == "plant-01.example/mes/audit"
    for bad in ("", "a b", "a+b", "x\n", "ü"):
        with pytest.raises(cpm.CheckpointError):
            cpm.key_name(bad)
    pub = cpm.public_key_bytes(signing_key())
    assert len(cpm.key_id(NAME, pub)) == 4
    assert cpm.key_id(NAME, pub) != cpm.key_id("other.example/mes/audit", pub)
    text = cpm.vkey_text(NAME, pub)
    name, kid, key = text.split("+")
    assert (name, kid) == (NAME, cpm.key_id(NAME, pub).hex())
    assert base64.b64decode(key) == b"\x01" + pub


@pytest.mark.parametrize("mutate", [
    lambda t: t.replace("+", "-", 1),
    lambda t: t.rsplit("+", 2)[0] + "+00000000+" + t.rsplit("+", 1)[1],  # key id does not match
    lambda t: t.rsplit("+", 1)[0] + "+" + base64.b64encode(b"\x02" + b"k" * 32).decode(),  # not Ed25519
    lambda t: t[:-1] + chr(ord(t[-1]) ^ 1),  # non-canonical base64 (unused bits) or another key
    lambda t: t + "\n\n",
    lambda t: " " + t,
    lambda t: t.upper(),
])
def test_parse_vkey_is_strict(mutate) -> None:  # type: ignore[no-untyped-def]
    text = vkey(signing_key())
    assert cpm.parse_vkey(text + "\n").text == text
    with pytest.raises(cpm.CheckpointError):
        cpm.parse_vkey(mutate(text))


def test_several_vkeys() -> None:
    keys = cpm.parse_vkeys(vkey(signing_key(1)) + "\n" + vkey(signing_key(2)) + "\n")
    assert len(keys) == 2
    with pytest.raises(cpm.CheckpointError):
        cpm.parse_vkeys("")


def test_body_arguments() -> None:
    with pytest.raises(cpm.CheckpointError, match="aware"):
        cpm.checkpoint_body(NAME, 1, ROOT, datetime(2026, 1, 1))
    with pytest.raises(cpm.CheckpointError, match="32 bytes"):
        cpm.checkpoint_body(NAME, 1, ROOT[:31], TIME)
    with pytest.raises(cpm.CheckpointError, match="tree size"):
        cpm.checkpoint_body(NAME, -1, ROOT, TIME)
    local = TIME.astimezone(timezone(timedelta(hours=-5)))
    assert cpm.checkpoint_body(NAME, 0, EMPTY_ROOT, local).endswith("time 2026-11-23T10:07:00Z\n")


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda t: t[:-1], "newline"),
    (lambda t: t + "\n", "exactly"),
    (lambda t: t.replace("\n\n", "\n"), "exactly"),
    (lambda t: t.replace("\n\n", "\nextension\n\n"), "exactly"),
    (lambda t: t + "\u2014 other/mes/audit AAAA\n", "4-byte key id"),  # a cosignature line must be well formed too
    (lambda t: t.replace("\n7\n", "\n07\n"), "leading zeros"),
    (lambda t: t.replace("\n7\n", "\n+7\n"), "leading zeros"),
    (lambda t: t.replace("\n7\n", "\n-7\n"), "leading zeros"),
    (lambda t: t.replace("\n7\n", "\n٧\n"), "leading zeros"),
    (lambda t: t.replace("time 2026-11-23T10:07:00Z", "time 2026-11-23T10:07:00.0Z"), "time line"),
    (lambda t: t.replace("time 2026-11-23T10:07:00Z", "time 2026-11-23T10:07:00+00:00"), "time line"),
    (lambda t: t.replace("time 2026-11-23T10:07:00Z", "Time 2026-11-23T10:07:00Z"), "time line"),
    (lambda t: t.replace("time 2026-11-23T10:07:00Z", "time 2026-02-30T10:07:00Z"), "valid date"),
    (lambda t: t.replace("\u2014 ", "- "), "em dash"),
    (lambda t: t.replace("\u2014 ", "\u2014  "), "signature line"),
    (lambda t: t.replace(NAME + " ", NAME + "  ", 1), "signature line"),
    (lambda t: t.replace(base64.b64encode(ROOT).decode(), base64.b64encode(ROOT[:31]).decode()), "32 bytes"),
    (lambda t: t.replace(base64.b64encode(ROOT).decode(), base64.b64encode(ROOT).decode().rstrip("=")), "base64"),
    (lambda t: t[:-2] + "\n", "signature is not valid base64"),  # padding removed
    (lambda t: t.replace("\n", "\r\n"), "origin"),
])
def test_parse_is_strict(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    text = make()
    cpm.parse_checkpoint(text)
    with pytest.raises(cpm.CheckpointError, match=match):
        cpm.parse_checkpoint(mutate(text))


def test_base64_with_nonzero_padding_bits_is_refused() -> None:
    root_b64 = base64.b64encode(ROOT).decode()  # 32 bytes: 2 unused bits in the last symbol
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = root_b64[-2]
    sibling = alphabet[alphabet.index(last) ^ 1]
    twin = root_b64[:-2] + sibling + "="
    assert base64.b64decode(twin) == ROOT  # same bytes, other spelling
    with pytest.raises(cpm.CheckpointError, match="canonical base64"):
        cpm.parse_checkpoint(make().replace(root_b64, twin))


def test_verification_failures_are_explained() -> None:
    text = make()
    own = vkey(signing_key())
    with pytest.raises(cpm.CheckpointError, match="key name 'test-site.example/mes/audit'.* other.example"):
        cpm.verify_checkpoint(text, vkey(signing_key(), "other.example/mes/audit"))
    with pytest.raises(cpm.CheckpointError, match="key id"):
        cpm.verify_checkpoint(text, vkey(signing_key(8)))
    forged = text.replace("\n7\n", "\n8\n")
    with pytest.raises(cpm.CheckpointError, match="bad signature"):
        cpm.verify_checkpoint(forged, own)
    # origin and key name must be the same
    other_origin = cpm.sign_checkpoint(cpm.checkpoint_body("x.example/mes/audit", 7, ROOT, TIME), NAME, signing_key())
    with pytest.raises(cpm.CheckpointError, match="origin"):
        cpm.verify_checkpoint(other_origin, own)
    with pytest.raises(cpm.CheckpointError):
        cpm.verify_checkpoint(text, "not a key")


def test_verify_with_rotated_keys() -> None:
    old, new = make(seed=1), make(seed=2)
    both = [vkey(signing_key(1)), cpm.parse_vkey(vkey(signing_key(2)))]
    assert cpm.verify_checkpoint(old, both).size == 7
    assert cpm.verify_checkpoint(new, both).size == 7
    assert cpm.verify_checkpoint(new, "\n".join([vkey(signing_key(1)), vkey(signing_key(2))])).size == 7


def test_sign_refuses_a_malformed_body() -> None:
    with pytest.raises(cpm.CheckpointError):
        cpm.sign_checkpoint("not a body\n", NAME, signing_key())
