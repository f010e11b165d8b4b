"""Issue 19, the plant's document-signing key in a PKCS#11 token (SoftHSM2): with
``MES_PKCS11_MODULE`` set, ``mes init`` (or the first release) makes the eBR signing key pair in
the token and writes only the certificate; the eBR frozen at release is signed through the
token and validates as intact and trusted with pyHanko and with poppler's ``pdfsig``."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from mes.ebr import operations as eo
from mes.ebr import signing
from mes.system import token as hsm
from tests.ebr.helpers import nss_db, one_byte_changed, pdfsig, released_batch


def test_the_released_ebr_is_signed_with_the_key_in_the_token(app: Flask, monkeypatch, tmp_path: Path,
                                                              token_env: dict[str, str]) -> None:
    plant = tmp_path / "plant-identity"
    app.config.update({**token_env, "MES_EBR_CA_CERT_PATH": str(plant / "plant-ca.crt"),
                       "MES_EBR_SIGNING_CERT_PATH": str(plant / "ebr-signing.crt"),
                       "MES_EBR_SIGNING_KEY_PATH": str(plant / "ebr-signing.key")})
    _, batch_id = released_batch(monkeypatch)
    paths = signing.paths_from(app.config)
    assert paths.token == hsm.configured(token_env) and paths.cert.is_file()
    assert not paths.key.exists()  # the key pair was made in the token, and stayed there
    public = hsm.ebr_public_key(paths.token, create=False)
    from cryptography import x509

    assert x509.load_pem_x509_certificate(paths.cert.read_bytes()).public_key() == public

    pdf = eo.stored(batch_id).pdf
    status = signing.validate(pdf, paths.ca_cert.read_bytes())
    assert status.ok, status.summary
    good = tmp_path / "ebr.pdf"
    good.write_bytes(pdf)
    nss = nss_db(tmp_path / "nss", paths.ca_cert)
    verdict = pdfsig(good, nss)
    assert "Signature is Valid" in verdict and "Certificate is Trusted" in verdict, verdict
    assert not signing.validate(one_byte_changed(pdf), paths.ca_cert.read_bytes()).ok
    assert eo.verify_pdf(pdf, paths.ca_cert.read_bytes()).ok
