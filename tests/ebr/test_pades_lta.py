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
import re
from pathlib import Path

from mes.ebr import signing
from tests.ebr.helpers import nss_db, pdfsig
from tests.ebr.tsa import Authority, authority, small_pdfa  # noqa: F401 - fixture


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


def test_with_a_time_stamp_authority_the_signature_is_pades_b_lta(tmp_path: Path,
                                                                  authority: Authority) -> None:  # noqa: F811
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.ades.report import AdESPassed

    paths = signing.paths_from({"MES_HOME": str(tmp_path / "home"), "MES_EBR_TSA_URL": authority.url,
                                "MES_EBR_TSA_CA_PATH": str(authority.ca_path)})
    assert paths.level == "B-LTA"
    signing.ensure_identity(paths, "plant-01.example")
    signed = signing.sign_pdf(small_pdfa(), paths, reason="test", location="plant-01.example")

    reader = PdfFileReader(io.BytesIO(signed))
    assert [s.field_name for s in reader.embedded_signatures] == [signing.FIELD, signing.ARCHIVE_FIELD]
    # the document time-stamp's update rewrote the XMP packet (pyHanko) and kept it PDF/A-3b; the
    # file has no Info dictionary, so the packet is its only metadata and nothing can disagree with it
    xmp = reader.root["/Metadata"].get_object().data.decode("utf-8")
    assert re.search(r'pdfaid:part(="3"|>3</pdfaid:part>)', xmp) and re.search(
        r'pdfaid:conformance(="B"|>B</pdfaid:conformance>)', xmp), xmp
    assert reader.trailer_view.get("/Info") is None
    assert reader.input_version == (1, 7)
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
