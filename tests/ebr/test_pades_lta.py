"""With a time-stamp authority configured the eBR signature is PAdES B-LTA by default: the
signer's and the authority's certificates and revocation data (the plant CA's CRL, issued at
signing; the authority's CA's CRL, fetched from its distribution point) in the document
security store, then a document time-stamp over it. It passes pyHanko's AdES long-term
validation (ETSI EN 319 102-1 §5.6.3) with revocation data required for every end-entity
certificate, and the MES's own check; poppler's ``pdfsig`` finds the release signature valid and
trusted (it cannot validate a document time-stamp); one changed byte fails it."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mes.db import utcnow
from mes.ebr import signing
from tests.ebr.helpers import nss_db, pdfsig
from tests.ebr.test_pades_bt import _pdfa


class _Authority:
    """A time-stamp authority on loopback: its CA publishes a CRL at ``/ca.crl``, named in the
    time-stamping certificate's distribution points."""

    def __init__(self, folder: Path) -> None:
        from pyhanko.sign.timestamps import DummyTimeStamper

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        base = f"http://127.0.0.1:{self.server.server_port}"
        self.url, self.fetched = base + "/tsa", [] 
        now = utcnow()
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test TSA CA")])
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
              .serial_number(1).not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=2))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(base + "/ca.crl")], None, None, None)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test TSA")]))
                .issuer_name(name).public_key(key.public_key()).serial_number(2)
                .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
                .add_extension(x509.CRLDistributionPoints([point]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now - timedelta(minutes=5))
                    .next_update(now + timedelta(days=1)).add_extension(x509.CRLNumber(1), critical=False)
                    .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                   critical=False)
                    .sign(ca_key, hashes.SHA256())).public_bytes(serialization.Encoding.DER)
        self.ca_path = folder / "tsa-ca.crt"
        self.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        from asn1crypto import keys as asn1_keys
        from asn1crypto import x509 as asn1_x509

        self.stamper = DummyTimeStamper(
            tsa_cert=asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER)),
            tsa_key=asn1_keys.PrivateKeyInfo.load(key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        authority = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, body: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                authority.fetched.append(self.path)
                self._send(authority.crl, "application/pkix-crl")

            def do_POST(self) -> None:  # noqa: N802
                from asn1crypto import tsp

                req = tsp.TimeStampReq.load(self.rfile.read(int(self.headers["Content-Length"])))
                self._send(authority.stamper.request_tsa_response(req).dump(), "application/timestamp-reply")

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[_Authority]:
    tsa = _Authority(tmp_path)
    yield tsa
    tsa.server.shutdown()
    tsa.server.server_close()


def _lta_verdict(pdf: bytes, roots: list[Path]) -> object:
    """pyHanko's AdES B-LTA validation, revocation data required for end-entity certificates."""
    from pyhanko.keys import load_certs_from_pemder
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation.ades import ades_lta_validation
    from pyhanko.sign.validation.policy_decl import PdfSignatureValidationSpec, SignatureValidationSpec
    from pyhanko_certvalidator.context import CertValidationPolicySpec
    from pyhanko_certvalidator.policy_decl import CertRevTrustPolicy, RevocationCheckingPolicy, RevocationCheckingRule
    from pyhanko_certvalidator.registry import SimpleTrustManager

    sig = next(s for s in PdfFileReader(io.BytesIO(pdf)).embedded_signatures if s.field_name == signing.FIELD)
    required = RevocationCheckingPolicy(ee_certificate_rule=RevocationCheckingRule.CRL_OR_OCSP_REQUIRED,
                                        intermediate_ca_cert_rule=RevocationCheckingRule.CRL_OR_OCSP_REQUIRED)
    policy = CertValidationPolicySpec(trust_manager=SimpleTrustManager.build(
        trust_roots=list(load_certs_from_pemder([str(r) for r in roots]))),
        revinfo_policy=CertRevTrustPolicy(required))
    spec = PdfSignatureValidationSpec(SignatureValidationSpec(cert_validation_policy=policy))
    return asyncio.run(ades_lta_validation(sig, spec))


def test_with_a_time_stamp_authority_the_signature_is_pades_b_lta(tmp_path: Path, authority: _Authority) -> None:
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.ades.report import AdESPassed

    paths = signing.paths_from({"MES_HOME": str(tmp_path / "home"), "MES_EBR_TSA_URL": authority.url,
                                "MES_EBR_TSA_CA_PATH": str(authority.ca_path)})
    assert paths.level == "B-LTA"
    signing.ensure_identity(paths, "plant-01.example")
    signed = signing.sign_pdf(_pdfa(), paths, reason="test", location="plant-01.example")

    reader = PdfFileReader(io.BytesIO(signed))
    assert [s.field_name for s in reader.embedded_signatures] == [signing.FIELD, signing.ARCHIVE_FIELD]
    dss = reader.root["/DSS"]
    assert len(dss["/CRLs"]) >= 2 and len(dss["/Certs"]) >= 3  # the plant CA's and the authority's
    assert authority.fetched and set(authority.fetched) == {"/ca.crl"}  # fetched where the certificate points
    assert paths.ca_cert.with_suffix(".crl").is_file()  # the plant CA's CRL, public beside it

    verdict = _lta_verdict(signed, [paths.ca_cert, authority.ca_path])
    assert verdict.ades_subindic == AdESPassed.OK, verdict
    status = signing.validate(signed, paths.ca_cert.read_bytes())
    assert status.ok, status.summary  # the release signature, with only B-LTA's updates after it

    good = tmp_path / "lta.pdf"
    good.write_bytes(signed)
    verdict_text = pdfsig(good, nss_db(tmp_path / "nss", paths.ca_cert))
    first = verdict_text.split("Signature #2")[0]
    # poppler reads the document time-stamp but cannot validate that kind of signature; pyHanko did above
    assert "Signature Field Name: MES-eBR-Archive" in verdict_text.split("Signature #2")[-1], verdict_text
    assert "Signature is Valid" in first and "Certificate is Trusted" in first, verdict_text

    at = signed.index(b"stream", signed.index(b"/Contents")) + 40
    changed = signed[:at] + bytes([signed[at] ^ 0x01]) + signed[at + 1:]
    assert not signing.validate(changed, paths.ca_cert.read_bytes()).ok
    assert _lta_verdict(changed, [paths.ca_cert, authority.ca_path]).ades_subindic != AdESPassed.OK
