"""A time-stamp authority on loopback for the eBR signature tests (pyHanko's test stamper
behind an HTTP server), its CA publishing a CRL; and a small PDF/A-3b to sign."""

from __future__ import annotations

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


def small_pdfa() -> bytes:
    """A one-page PDF/A-3b in the eBR's font."""
    from fpdf import FPDF

    from mes.ebr.render import find_font, subset_font

    pdf = FPDF(enforce_compliance="PDF/A-3B")
    pdf.add_font("ebr", "", subset_font(find_font(), "eBR 批"))
    pdf.set_font("ebr", size=12)
    pdf.add_page()
    pdf.cell(0, 10, "eBR 批")
    return bytes(pdf.output())


class Authority:
    """A time-stamp authority on loopback: its CA publishes a CRL at ``/ca.crl``, named in the
    time-stamping certificate's distribution points."""

    def __init__(self, folder: Path) -> None:
        from pyhanko.sign.timestamps import DummyTimeStamper

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        base = f"http://127.0.0.1:{self.server.server_port}"
        self.url = base + "/tsa"
        self.fetched: list[str] = []  # the paths of the CRLs fetched
        self.asked: list[str] = []  # the content types of the time-stamp requests
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

                authority.asked.append(self.headers.get("Content-Type", ""))
                req = tsp.TimeStampReq.load(self.rfile.read(int(self.headers["Content-Length"])))
                self._send(authority.stamper.request_tsa_response(req).dump(), "application/timestamp-reply")

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def stop(self) -> None:
        """Take the authority off the network (once; again does nothing)."""
        if self.server.socket.fileno() != -1:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    tsa = Authority(tmp_path)
    yield tsa
    tsa.stop()
