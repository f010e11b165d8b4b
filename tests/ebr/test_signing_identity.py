"""The plant's document-signing identity: a plant CA and a signing certificate with the key
usage a PAdES signer needs, created once; configured files are used, never replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mes.ebr import signing


def test_the_plant_ca_and_signing_certificate_have_the_right_key_usage_and_are_never_replaced(tmp_path: Path) -> None:
    paths = signing.paths_from({"MES_HOME": str(tmp_path)})
    assert signing.ensure_identity(paths, "plant-01.example") is True
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.content_commitment
    assert not usage.value.key_cert_sign and not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert signing.DOCUMENT_SIGNING in eku and ExtendedKeyUsageOID.EMAIL_PROTECTION in eku
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    for key in (paths.key, paths.ca_key):
        assert key.stat().st_mode & 0o077 == 0
    before = {p: p.read_bytes() for p in (paths.ca_cert, paths.cert, paths.key)}
    assert signing.ensure_identity(paths, "plant-01.example") is False
    assert {p: p.read_bytes() for p in before} == before

    # configured elsewhere: used as they are; a certificate without its key is refused
    elsewhere = signing.paths_from({"MES_HOME": str(tmp_path / "other"), "MES_EBR_SIGNING_CERT_PATH": str(paths.cert),
                                    "MES_EBR_SIGNING_KEY_PATH": str(paths.key), "MES_EBR_CA_CERT_PATH": str(paths.ca_cert)})
    assert signing.ensure_identity(elsewhere, "plant-01.example") is False
    lonely = signing.paths_from({"MES_HOME": str(tmp_path / "lonely"), "MES_EBR_SIGNING_CERT_PATH": str(paths.cert)})
    with pytest.raises(RuntimeError, match="missing its pair"):
        signing.ensure_identity(lonely, "plant-01.example")
