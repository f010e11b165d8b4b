"""The plant's document-signing identity and PAdES signatures on the eBR (pyHanko).

``mes init`` (or the first release) creates, under ``MES_HOME`` unless configured elsewhere:
``plant-ca.crt`` / ``plant-ca.key`` (a self-signed plant CA: CA, keyCertSign, cRLSign) and
``ebr-signing.crt`` / ``ebr-signing.key`` (issued by it: digitalSignature + nonRepudiation,
extended key usage documentSigning and emailProtection, so NSS/poppler accept it as a
signer too). Configured paths (``MES_EBR_SIGNING_CERT_PATH``, ``MES_EBR_SIGNING_KEY_PATH``,
``MES_EBR_CA_CERT_PATH``) are used as they are and never overwritten. With a PKCS#11 token
(``MES_PKCS11_MODULE``) the signing key pair is made and kept in the token (``mes-ebr-signing``)
and pyHanko signs through it; no key file is written. Keys are RSA-3072: with
ECDSA pyHanko declares PDF 2.0 (ISO 32002), while PDF/A-3 stays PDF 1.7 (with the ESIC extension).

Signatures are PAdES B-B (``/ETSI.CAdES.detached``, SHA-256) written as an incremental
update, so the PDF/A-3b document underneath is unchanged; with ``MES_EBR_TSA_URL`` set
they are B-T (an RFC 3161 signature time-stamp from that authority) or, by default, B-LTA:
the certificates and revocation data of the signer and the time-stamp authority (the plant
CA's own CRL, issued at signing when the MES holds the CA key) in the document security
store, then a document time-stamp over all of it (field ``MES-eBR-Archive``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mes.db import utcnow
from mes.system import token as hsm

DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")  # id-kp-documentSigning (RFC 9336)
FIELD = "MES-eBR-Release"
ARCHIVE_FIELD = "MES-eBR-Archive"  # B-LTA's document time-stamp
CRL_DAYS = 7


@dataclass(frozen=True)
class SigningPaths:
    """Where the plant CA and the document-signing certificate and key live."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    tsa_url: str = ""
    token: hsm.Token | None = None  # the key is in this PKCS#11 token, not in ``key``
    pades_level: str = "B-LTA"  # with a time-stamp authority; B-B without one
    tsa_ca: Path | None = None

    @property
    def level(self) -> str:
        """The PAdES level signatures get: B-B without a time-stamp authority."""
        return self.pades_level if self.tsa_url else "B-B"

    @property
    def configured(self) -> bool:
        """Whether the CA, the certificate and its key exist (a plant that brings its own uses
        them as they are)."""
        return self.ca_cert.is_file() and self.cert.is_file() and (self.token is not None or self.key.is_file())


def paths_from(config: Any) -> SigningPaths:
    """The signing paths of an app config (``MES_EBR_*``; default files in ``MES_HOME``)."""
    home = Path(config["MES_HOME"])
    cert = Path(config.get("MES_EBR_SIGNING_CERT_PATH") or home / "ebr-signing.crt")
    key = Path(config.get("MES_EBR_SIGNING_KEY_PATH") or home / "ebr-signing.key")
    ca = Path(config.get("MES_EBR_CA_CERT_PATH") or home / "plant-ca.crt")
    tsa_ca = config.get("MES_EBR_TSA_CA_PATH")
    return SigningPaths(ca, ca.with_suffix(".key"), cert, key, str(config.get("MES_EBR_TSA_URL") or ""),
                        hsm.configured(config), str(config.get("MES_EBR_PADES_LEVEL") or "B-LTA"),
                        Path(tsa_ca) if tsa_ca else None)


def _name(common: str, site: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, site),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_private(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


_LOCK = threading.Lock()


def ensure_identity(paths: SigningPaths, site: str) -> bool:
    """Create the plant CA and the document-signing certificate if they are missing;
    return True if created. Existing (configured) files are never replaced."""
    with _LOCK:
        if paths.configured:
            return False
        if paths.cert.exists() or (paths.token is None and paths.key.exists()):
            raise RuntimeError(f"the eBR signing certificate {paths.cert} or key {paths.key} is missing its pair")
        now = utcnow().replace(microsecond=0)
        if paths.ca_cert.is_file():
            if not paths.ca_key.is_file():
                raise RuntimeError(f"the plant CA {paths.ca_cert} is configured without its key; "
                                   "configure the signing certificate and key too")
            ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
            ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        else:
            ca_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
            ca_name = _name(f"{site} plant CA", site)
            ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                       .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=3650 * 2))
                       .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                       .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                    key_encipherment=False, data_encipherment=False,
                                                    key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                    encipher_only=False, decipher_only=False), critical=True)
                       .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                       .sign(ca_key, hashes.SHA256()))
            _write_private(paths.ca_key, ca_key)
            paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072) if paths.token is None else None
        public = key.public_key() if key is not None else hsm.ebr_public_key(paths.token, create=True)
        cert = (x509.CertificateBuilder().subject_name(_name(f"{site} electronic batch records", site))
                .issuer_name(ca_cert.subject).public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                               critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        if key is not None:
            _write_private(paths.key, key)
        paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return True


_SIGNERS: dict[tuple[str, float], Any] = {}


def _signer(paths: SigningPaths) -> Any:
    """A pyHanko signer over the configured key and chain (cached per file and mtime). The
    private key is parsed once: pyHanko's SimpleSigner re-parses it (with the slow RSA checks)
    for every signature, twice per PDF."""
    from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
    from pyhanko.keys import load_cert_from_pemder, load_certs_from_pemder, load_private_key_from_pemder
    from pyhanko.sign import signers
    from pyhanko.sign.general import get_pyca_cryptography_hash
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    class CachedKeySigner(signers.SimpleSigner):  # type: ignore[misc]
        key: Any = None

        def sign_raw(self, data: bytes, digest_algorithm: str) -> bytes:
            mechanism = self.get_signature_mechanism_for_digest(digest_algorithm)
            if mechanism.signature_algo == "rsassa_pkcs1v15" and isinstance(self.key, rsa.RSAPrivateKey):
                return bytes(self.key.sign(data, PKCS1v15(), get_pyca_cryptography_hash(digest_algorithm)))
            return bytes(super().sign_raw(data, digest_algorithm))

    token = (str(paths.cert), paths.cert.stat().st_mtime)
    if token not in _SIGNERS:
        try:
            signer = CachedKeySigner(signing_cert=load_cert_from_pemder(str(paths.cert)),
                                     signing_key=load_private_key_from_pemder(str(paths.key), passphrase=None),
                                     cert_registry=SimpleCertificateStore.from_certs(
                                         list(load_certs_from_pemder([str(paths.ca_cert)]))))
            signer.key = serialization.load_pem_private_key(paths.key.read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"the eBR signing key {paths.key} or certificate {paths.cert} cannot be read: "
                               f"{exc}") from None
        _SIGNERS[token] = signer
    return _SIGNERS[token]


def plant_crl(paths: SigningPaths) -> bytes | None:
    """A fresh CRL of the plant CA (DER; nothing revoked, next update in :data:`CRL_DAYS` days),
    issued when the MES holds the CA's key and written beside it (``plant-ca.crl``, public); None
    for a plant's own CA, whose revocation data is fetched from its distribution points."""
    if not paths.ca_key.is_file():
        return None
    try:
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the plant CA {paths.ca_cert} or its key cannot be read: {exc}") from None
    now = utcnow().replace(microsecond=0)
    number = int(now.timestamp())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
           .last_update(now - timedelta(minutes=5)).next_update(now + timedelta(days=CRL_DAYS))
           .add_extension(x509.CRLNumber(number), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
           .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    der = crl.public_bytes(serialization.Encoding.DER)
    paths.ca_cert.with_suffix(".crl").write_bytes(der)
    return der


def _long_term(paths: SigningPaths) -> dict[str, Any]:
    """B-LTA's part of the signature metadata: the plant CA (with its CRL) and the TSA's CA
    (default: Mozilla's public CAs, from certifi) as trust roots, revocation data fetched where
    a certificate points to it, all of it embedded in the document security store, then a
    document time-stamp over it."""
    import certifi
    from pyhanko.keys import load_certs_from_pemder
    from pyhanko_certvalidator import ValidationContext

    roots = [str(paths.ca_cert), str(paths.tsa_ca) if paths.tsa_ca else certifi.where()]
    try:
        trusted = list(load_certs_from_pemder(roots))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the CA certificates {', '.join(roots)} cannot be read: {exc}") from None
    crl = plant_crl(paths)
    vc = ValidationContext(trust_roots=trusted, crls=[crl] if crl else [], allow_fetching=True,
                           revocation_mode="hard-fail")
    return {"validation_context": vc, "embed_validation_info": True, "use_pades_lta": True,
            "timestamp_field_name": ARCHIVE_FIELD}


def sign_pdf(pdf: bytes, paths: SigningPaths, *, reason: str, location: str) -> bytes:
    """PAdES-sign ``pdf`` as an incremental update: B-B; with a time-stamp authority B-T or
    B-LTA (:attr:`SigningPaths.level`)."""
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers, timestamps

    class KeepMetadataWriter(IncrementalPdfFileWriter):  # type: ignore[misc]
        def _update_meta(self) -> None:
            """Leave the XMP packet and Info as the renderer wrote them: pyHanko would replace
            the XMP with its own and drop the PDF/A identification (pdfaid) with it."""

    writer = KeepMetadataWriter(io.BytesIO(pdf))
    meta = signers.PdfSignatureMetadata(field_name=FIELD, md_algorithm="sha256", reason=reason, location=location,
                                        subfilter=fields.SigSeedSubFilter.PADES,
                                        **(_long_term(paths) if paths.level == "B-LTA" else {}))
    stamper = timestamps.HTTPTimeStamper(paths.tsa_url) if paths.tsa_url else None
    out = io.BytesIO()
    with _signer_in_use(paths) as signer:
        pdf_signer = signers.PdfSigner(meta, signer=signer, timestamper=stamper)
        _off_any_event_loop(lambda: pdf_signer.sign_pdf(writer, output=out))
    return out.getvalue()


def check_signer(paths: SigningPaths) -> None:
    """Raise (RuntimeError, OSError) now if the eBR could not be signed: the key file and
    certificates unreadable, or the token's session not opened. Signs nothing."""
    with _signer_in_use(paths):
        pass


@contextlib.contextmanager
def _signer_in_use(paths: SigningPaths) -> Iterator[Any]:
    """The pyHanko signer of the eBR key: over the key file (:func:`_signer`), or through the
    PKCS#11 token, whose session is held while it signs."""
    if paths.token is None:
        yield _signer(paths)
        return
    from pyhanko.keys import load_cert_from_pemder, load_certs_from_pemder
    from pyhanko.sign.pkcs11 import PKCS11Signer

    try:
        cert, chain = load_cert_from_pemder(str(paths.cert)), list(load_certs_from_pemder([str(paths.ca_cert)]))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the eBR signing certificate {paths.cert} cannot be read: {exc}") from None
    with hsm.session(paths.token) as session:
        yield PKCS11Signer(session, key_label=hsm.EBR_SIGNING, signing_cert=cert, ca_chain=chain)


def _off_any_event_loop(work: Any) -> None:
    """Run ``work`` (pyHanko's synchronous API, which calls ``asyncio.run``) on this thread,
    or on a thread of its own when this one already runs an event loop (an eventlet or
    Playwright host, a Socket.IO handler): ``asyncio.run`` refuses to nest."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        work()
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ebr-sign") as pool:
        pool.submit(work).result()


@dataclass(frozen=True)
class SignatureStatus:
    """What pyHanko's validator says of the eBR's signature."""

    present: bool
    intact: bool
    valid: bool
    trusted: bool
    covers_whole_file: bool
    signer: str
    summary: str

    @property
    def ok(self) -> bool:
        return self.present and self.intact and self.valid and self.trusted and self.covers_whole_file


def validate(pdf: bytes, ca_pem: bytes) -> SignatureStatus:
    """Validate the (last) signature of ``pdf`` against the plant CA with pyHanko."""
    from pyhanko.keys import load_certs_from_pemder_data
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.general import SigningError
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    try:
        reader = PdfFileReader(io.BytesIO(pdf), strict=False)
        sigs = reader.embedded_signatures
    except Exception as exc:  # noqa: BLE001 - a damaged file is an answer, not a crash
        return SignatureStatus(False, False, False, False, False, "", f"not a readable PDF: {exc}")
    release = [sig for sig in sigs if sig.field_name == FIELD] or sigs[-1:]
    if not release:
        return SignatureStatus(False, False, False, False, False, "", "the PDF carries no signature")
    vc = ValidationContext(trust_roots=list(load_certs_from_pemder_data(ca_pem)), allow_fetching=False)
    try:
        found: list[Any] = []
        _off_any_event_loop(lambda: found.append(validate_pdf_signature(release[0], vc)))
        status = found[0]
    except (SigningError, ValueError) as exc:
        return SignatureStatus(True, False, False, False, False, "", f"signature cannot be validated: {exc}")
    from pyhanko.sign.diff_analysis import ModificationLevel
    from pyhanko.sign.validation.status import SignatureCoverageLevel

    # the whole file, or (B-LTA) all of it but the validation data and time-stamps added after it
    whole = status.coverage == SignatureCoverageLevel.ENTIRE_FILE or (
        status.coverage == SignatureCoverageLevel.ENTIRE_REVISION
        and status.modification_level is not None and status.modification_level <= ModificationLevel.LTA_UPDATES)
    signer = status.signing_cert.subject.human_friendly if status.signing_cert else ""
    return SignatureStatus(True, bool(status.intact), bool(status.valid), bool(status.trusted), whole, signer,
                           status.summary())
