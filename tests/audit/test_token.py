"""Issue 17, key custody in a PKCS#11 token (SoftHSM2): with ``MES_PKCS11_MODULE`` set, the
checkpoint signing key and the entry tag secret are made and kept in the token, sensitive and
never extractable; no key of the log is ever written to disk; the log signs, tags, verifies,
exports and rotates as with key files; ``mes check`` reports the token and refuses a wrong PIN
or a PIN file others can read, in a sentence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mes.audit import checkpoint as notes
from mes.audit import keys, log
from mes.audit.database_check import verify_database
from mes.audit.models import AuditCheckpoint
from mes.db import db
from mes.system import token as hsm
from tests.conftest import base_config
from tests.softhsm import private_file
from tests.test_audit_log import _append
from tests.test_cli import ADMIN_PASSWORD, empty_db, run  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
LOG_KEY_FILES = ("audit-signing.key", "audit-tag.key", "ebr-signing.key")


def _key_files(home: Path) -> list[str]:
    return sorted(p.name for p in home.rglob("*") if p.name in LOG_KEY_FILES)


def test_with_a_token_no_key_of_the_log_is_ever_on_disk(tmp_path: Path, empty_db: dict[str, str],  # noqa: F811
                                                        token_env: dict[str, str]) -> None:
    home = tmp_path / "plant"
    env = {**empty_db, **token_env}
    r = run(["init"], home, {**env, "MES_ADMIN_PASSWORD": ADMIN_PASSWORD})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"audit signing key PKCS#11 token '{token_env['MES_PKCS11_TOKEN']}'" in r.stdout, r.stdout
    r = run(["check"], home, env)
    assert r.returncode == 0, r.stdout + r.stderr
    for label in (hsm.AUDIT_SIGNING, hsm.AUDIT_TAG, hsm.EBR_SIGNING):
        assert f"ok   '{label}' in the token (SENSITIVE and not EXTRACTABLE)" in r.stdout, r.stdout
    first = run(["audit", "rotate-key"], home, env)  # signs a checkpoint with the new key at once
    assert first.returncode == 0 and "new verifier key" in first.stdout, first.stdout + first.stderr
    r = run(["audit", "verify"], home, env)
    assert r.returncode == 0 and r.stdout.startswith("OK:") and "1 checkpoints" in r.stdout, r.stdout + r.stderr
    assert len(list((home / "verifier-keys").glob("*.vkey"))) == 2  # the old key's checkpoints still verify
    r = run(["audit", "export", "--out", str(tmp_path / "export")], home, env)
    assert r.returncode == 0, r.stdout + r.stderr
    done = subprocess.run([sys.executable, "-m", "mes.audit.verify", str(tmp_path / "export")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("OK: export"), done.stdout + done.stderr
    assert _key_files(home) == [] and _key_files(tmp_path) == []



def test_a_wrong_pin_or_a_pin_file_others_can_read_is_refused_in_a_sentence(tmp_path: Path,
                                                                          token_env: dict[str, str]) -> None:
    token = hsm.configured(token_env)
    assert token is not None
    wrong = {**token_env, "MES_PKCS11_PIN_FILE": str(private_file(tmp_path / "wrong.pin", "0000\n"))}
    with pytest.raises(hsm.TokenError, match="the PIN in MES_PKCS11_PIN_FILE is wrong"):
        hsm.audit_signing_key(hsm.configured(wrong), create=True)
    with hsm.session(token):  # the right PIN opens it
        pass
    (tmp_path / "plant").mkdir()
    r = run(["check"], tmp_path / "plant", {**wrong, "MES_SECRET_KEY": "x"})
    assert r.returncode == 1 and "FAIL PKCS#11 token" in r.stdout and "the PIN in MES_PKCS11_PIN_FILE is wrong" in \
        r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    os.chmod(token_env["MES_PKCS11_PIN_FILE"], 0o644)
    with pytest.raises(hsm.TokenError, match="has mode 0644; group and others must have no access"):
        hsm.tag_key(token, create=True)
    with pytest.raises(hsm.TokenError, match="the PIN file of .* is missing"):
        hsm.read_pin(hsm.Token(str(hsm.Path("/nonexistent.so")), "x", Path("")))
    assert hsm.custody_lines(token)[0][0] == "FAIL"


@pytest.fixture
def token_app(database_url: str, tmp_path: Path, token_env: dict[str, str]):
    """An app on an empty migrated database whose log keeps its keys in the token."""
    from mes.app import create_app

    home = tmp_path / "token-home"
    home.mkdir()
    application = create_app({**base_config(home, database_url), **token_env})
    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()


def test_checkpoints_are_signed_and_entries_tagged_in_the_token(token_app, token_env: dict[str, str]) -> None:
    al = log.audit_log()
    token = hsm.configured(token_env)
    assert token is not None and al.token == token
    _append(3)
    assert log.publish_checkpoint() is not None
    db.session.commit()
    check = verify_database()
    assert check.ok, check.summary()
    key = al.signing_key()
    assert isinstance(key, hsm.TokenEd25519Key)
    cp = db.session.query(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).first()
    assert cp is not None
    public = keys.public_bytes(key)
    # the note is signed with the token's key: it verifies with that public key and no other
    assert notes.verify_checkpoint(cp.note, notes.vkey_text(al.key_name, public)).size == cp.size
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(notes.CheckpointError):
        notes.verify_checkpoint(cp.note, notes.vkey_text(al.key_name, other))
    # the tag key is derived in the token, the same in every process, and written nowhere
    assert hsm.tag_key(token, create=False) == al.tag_key()
    assert _key_files(Path(token_app.config["MES_HOME"])) == []


def test_a_tag_secret_gone_from_the_token_is_refused_not_replaced(token_app, token_env: dict[str, str]) -> None:
    from pkcs11 import ObjectClass

    from mes.app import create_app

    _append(1)
    token = hsm.configured(token_env)
    assert token is not None
    with hsm.session(token) as s:
        hsm._one(s, hsm.AUDIT_TAG, ObjectClass.SECRET_KEY).destroy()
    fresh = create_app({**base_config(Path(token_app.config["MES_HOME"]), token_app.config["SQLALCHEMY_DATABASE_URI"]),
                        **token_env})
    with fresh.app_context():
        with pytest.raises(keys.KeyFileError, match="is missing but the audit log holds tagged entries"):
            log.audit_log().tag_key()
        db.engine.dispose()
    assert not hsm.has_tag_secret(token)  # nothing made a new one behind the log's back


def _sign_in_child(env: dict[str, str], conn) -> None:  # noqa: ANN001 - a multiprocessing pipe end
    from mes.system import token as child_hsm

    token = child_hsm.configured(env)
    inherited = dict(child_hsm._OPEN)  # the parent's sessions, copied by the fork
    signature = child_hsm.audit_signing_key(token, create=False).sign(b"signed in a forked child")
    own = child_hsm._OPEN.get((token.module, token.label))
    conn.send((signature, own is not None and all(own is not s for s in inherited.values())))


def test_a_forked_process_opens_the_token_anew(token_env: dict[str, str]) -> None:
    """PKCS#11 does not carry a module's initialisation or sessions over a fork: a child (a
    forked worker) initialises the module and opens its own session, and signs."""
    import multiprocessing

    token = hsm.configured(token_env)
    assert token is not None
    key = hsm.audit_signing_key(token, create=True)
    key.sign(b"the parent's session is open")
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_sign_in_child, args=(token_env, child_end))
    child.start()
    assert parent_end.poll(60), "the child did not answer"
    signature, own_session = parent_end.recv()
    child.join(30)
    assert child.exitcode == 0 and own_session  # not the parent's session, carried over the fork
    key.public_key().verify(signature, b"signed in a forked child")
    key.sign(b"and the parent's session still works")
