"""With ``MES_EBR_TSA_URL`` set and ``MES_EBR_PADES_LEVEL=B-T``, the eBR signature is PAdES B-T:
a signature time-stamp from that authority (here pyHanko's test TSA behind a loopback HTTP
server), and it validates. (B-LTA, the default with an authority: tests/ebr/test_pades_lta.py.)"""

from __future__ import annotations

import io
import threading
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


def _tsa(tmp: Path) -> tuple[Path, Path, Path]:
    """A test CA and a time-stamping certificate issued by it (PEM files)."""
    now = utcnow()
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test TSA CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test TSA")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
            .sign(ca_key, hashes.SHA256()))
    files = tmp / "tsa-ca.crt", tmp / "tsa.crt", tmp / "tsa.key"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return files


def _pdfa() -> bytes:
    from fpdf import FPDF

    from mes.ebr.render import find_font, subset_font

    pdf = FPDF(enforce_compliance="PDF/A-3B")
    pdf.add_font("ebr", "", subset_font(find_font(), "eBR 批"))
    pdf.set_font("ebr", size=12)
    pdf.add_page()
    pdf.cell(0, 10, "eBR 批")
    return bytes(pdf.output())


def test_a_configured_time_stamp_authority_makes_the_signature_pades_b_t(tmp_path: Path) -> None:
    from asn1crypto import tsp
    from pyhanko.keys import load_cert_from_pemder, load_private_key_from_pemder
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.timestamps import DummyTimeStamper
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    tsa_ca, tsa_cert, tsa_key = _tsa(tmp_path)
    stamper = DummyTimeStamper(tsa_cert=load_cert_from_pemder(str(tsa_cert)),
                               tsa_key=load_private_key_from_pemder(str(tsa_key), passphrase=None))
    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            req = tsp.TimeStampReq.load(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append(self.headers.get("Content-Type"))
            body = stamper.request_tsa_response(req).dump()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        home = tmp_path / "home"
        paths = signing.paths_from({"MES_HOME": str(home), "MES_EBR_TSA_URL": f"http://127.0.0.1:{server.server_port}/",
                                    "MES_EBR_PADES_LEVEL": "B-T"})
        assert paths.level == "B-T"
        signing.ensure_identity(paths, "plant-01.example")
        signed = signing.sign_pdf(_pdfa(), paths, reason="test", location="plant-01.example")
    finally:
        server.shutdown()
        server.server_close()
    # the authority gone: no signature without its time-stamp (an OSError; release turns it into a refusal)
    with pytest.raises(OSError):
        signing.sign_pdf(_pdfa(), paths, reason="test", location="plant-01.example")
    assert asked and set(asked) == {"application/timestamp-query"}  # (pyHanko asks once more to size the signature)
    sig = PdfFileReader(io.BytesIO(signed)).embedded_signatures[0]
    vc = ValidationContext(trust_roots=[load_cert_from_pemder(str(paths.ca_cert)), load_cert_from_pemder(str(tsa_ca))],
                           allow_fetching=False)
    status = validate_pdf_signature(sig, vc)
    assert status.intact and status.valid and status.trusted, status.summary()
    assert status.timestamp_validity is not None and status.timestamp_validity.intact
    assert status.timestamp_validity.trusted
    assert signing.validate(signed, paths.ca_cert.read_bytes()).intact
