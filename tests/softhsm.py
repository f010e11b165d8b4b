"""A PKCS#11 token per test, from Debian's SoftHSM2 (``apt-get install softhsm2``; ``.ci/run``
installs it). One token folder per test process (SoftHSM reads ``SOFTHSM2_CONF`` once, when a
process loads the module) and a token with its own label per test, so tests never share keys."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "4711-0815"


def token_folder(folder: Path) -> Path:
    """Make ``folder`` SoftHSM2's token folder for this process and every process it starts."""
    if not MODULE.exists():
        raise RuntimeError(f"SoftHSM2 is missing ({MODULE}): apt-get install softhsm2 (.ci/run installs it)")
    (folder / "tokens").mkdir(parents=True, exist_ok=True)
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return folder


def private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def new_token(pin_folder: Path) -> dict[str, str]:
    """A new, empty token in the token folder and the ``MES_PKCS11_*`` settings that point at it."""
    label = f"mes-{uuid.uuid4().hex[:12]}"
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", "so-" + PIN],
                   check=True, capture_output=True, timeout=60)
    pin = private_file(pin_folder / f"{label}.pin", PIN + "\n")
    return {"MES_PKCS11_MODULE": str(MODULE), "MES_PKCS11_TOKEN": label, "MES_PKCS11_PIN_FILE": str(pin)}


@pytest.fixture(scope="session")
def softhsm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return token_folder(tmp_path_factory.mktemp("softhsm"))
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def token_env(softhsm_dir: Path, tmp_path: Path) -> dict[str, str]:
    """A new, empty token and the ``MES_PKCS11_*`` settings that point the MES at it."""
    return new_token(tmp_path)
