"""With ``MES_EBR_TSA_URL`` set and ``MES_EBR_PADES_LEVEL=B-T``, the eBR signature is PAdES B-T:
a signature time-stamp from that authority (here pyHanko's test TSA behind a loopback HTTP
server), and it validates. (B-LTA, the default with an authority: tests/ebr/test_pades_lta.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mes.ebr import signing
from tests.ebr.tsa import Authority, authority, small_pdfa  # noqa: F401 - fixture


def test_a_configured_time_stamp_authority_makes_the_signature_pades_b_t(tmp_path: Path,
                                                                          authority: Authority) -> None:  # noqa: F811
    from pyhanko.keys import load_cert_from_pemder
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    paths = signing.paths_from({"MES_HOME": str(tmp_path / "home"), "MES_EBR_TSA_URL": authority.url,
                                "MES_EBR_PADES_LEVEL": "B-T"})
    assert paths.level == "B-T"
    signing.ensure_identity(paths, "plant-01.example")
    signed = signing.sign_pdf(small_pdfa(), paths, reason="test", location="plant-01.example")
    authority.stop()
    # the authority gone: no signature without its time-stamp (an OSError; release turns it into a refusal)
    with pytest.raises(OSError):
        signing.sign_pdf(small_pdfa(), paths, reason="test", location="plant-01.example")
    assert authority.asked and set(authority.asked) == {"application/timestamp-query"}  # (asked once more to size it)
    assert not authority.fetched  # B-T embeds no revocation data
    sig = PdfFileReader(io.BytesIO(signed)).embedded_signatures[0]
    vc = ValidationContext(trust_roots=[load_cert_from_pemder(str(paths.ca_cert)),
                                        load_cert_from_pemder(str(authority.ca_path))], allow_fetching=False)
    status = validate_pdf_signature(sig, vc)
    assert status.intact and status.valid and status.trusted, status.summary()
    assert status.timestamp_validity is not None and status.timestamp_validity.intact
    assert status.timestamp_validity.trusted
    assert signing.validate(signed, paths.ca_cert.read_bytes()).intact
