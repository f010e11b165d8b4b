"""The eBR service layer: generate at release and freeze, read the frozen document, verify a file.

At release (:func:`freeze_at_release`, called once from
:func:`mes.execution.release.release_batch` inside its transaction, after QA's release
signature is recorded): a checkpoint is published over the log, the batch's audit proof
bundle (the ``mes audit export --batch`` files) is built against it, the JSON eBR is built,
printed to PDF/A-3b with both embedded as associated files, PAdES-signed with the plant's
document-signing certificate, stored (never changed again) and its SHA-256 recorded in the
audit log (``ebr.generated``) and returned for ``mes.batch.released.v1``.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import current_app

from mes.audit.database_check import batch_export_files
from mes.audit.log import Actor, record
from mes.db import db
from mes.ebr import content, render, signing
from mes.ebr.models import EbrDocument
from mes.errors import Conflict, NotFound
from mes.execution import operations as ex

JSON_NAME = "ebr.json"
BUNDLE_NAME = "audit-bundle.zip"
BUNDLE_FILES = ("entries.jsonl", "checkpoint", "checkpoints.jsonl", "log.vkey", "witnesses", "proofs.json")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def bundle_zip(files: Mapping[str, bytes]) -> bytes:
    """The export files as one deterministic zip (fixed order and times): the same bundle, the same bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in BUNDLE_FILES:
            if name in files:
                info = zipfile.ZipInfo(name, ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, files[name])
    return out.getvalue()


def unzip_bundle(data: bytes) -> dict[str, bytes]:
    """The export files of an embedded bundle (only the names the export format has)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist() if n in BUNDLE_FILES}


def signing_paths() -> signing.SigningPaths:
    """The configured (or default) plant CA and document-signing certificate, created if missing."""
    paths = signing.paths_from(current_app.config)
    signing.ensure_identity(paths, current_app.config["MES_SITE_ID"])
    return paths


@dataclass
class Generated:
    """One generated eBR and how long each part took (seconds)."""

    pdf: bytes
    unsigned: bytes
    json_bytes: bytes
    bundle: bytes
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.pdf).hexdigest()


def generate(batch_id: str, *, decision: Mapping[str, Any] | None = None, sign: bool = True,
             created: datetime | None = None) -> Generated:
    """Build, print and (if ``sign``) sign the eBR of ``batch_id`` now, in the caller's
    transaction (a checkpoint may be published in it; nothing is committed)."""
    created = created or ex.clock()
    t0 = time.perf_counter()
    files = batch_export_files(batch_id)
    t1 = time.perf_counter()
    doc = content.build(batch_id, checkpoint=files["checkpoint"].decode("utf-8"), generated_at=created,
                        decision=decision)
    json_bytes = content.to_bytes(doc)
    bundle = bundle_zip(files)
    t2 = time.perf_counter()
    try:
        font = render.find_font(current_app.config.get("MES_EBR_FONT") or None)
        unsigned = render.render(doc, {
            JSON_NAME: (json_bytes, "application/json", "Data", "The electronic batch record as data (mes.ebr/v1)"),
            BUNDLE_NAME: (bundle, "application/zip", "Source",
                          "The batch's audit proof bundle (mes audit export --batch) against the release checkpoint"),
        }, font=font, created=created)
    except render.FontMissing as exc:
        raise Conflict(f"The electronic batch record cannot be printed: {exc}.") from None
    t3 = time.perf_counter()
    pdf = unsigned
    if sign:
        try:
            paths = signing_paths()
            pdf = signing.sign_pdf(unsigned, paths, reason=f"Batch {batch_id} {ex.get_batch(batch_id).status}",
                                   location=current_app.config["MES_SITE_ID"])
        except (OSError, RuntimeError) as exc:  # key or certificate unreadable, time-stamp authority down
            raise Conflict(f"The electronic batch record cannot be signed: {exc}.") from None
    t4 = time.perf_counter()
    return Generated(pdf, unsigned, json_bytes, bundle,
                     {"bundle": t1 - t0, "content": t2 - t1, "render": t3 - t2, "sign": t4 - t3, "total": t4 - t0})


def freeze_at_release(actor: Actor, batch_id: str, decision: str, conditions: str | None) -> str:
    """Generate, sign and store the eBR of a batch QA just decided; audit its SHA-256 and
    return it (for ``mes.batch.released.v1``). Runs in the release transaction."""
    made = generate(batch_id, decision={"disposition": decision, "conditions": conditions})
    db.session.add(EbrDocument(batch_id=batch_id, sha256=made.sha256, pdf=made.pdf,
                               json_sha256=hashlib.sha256(made.json_bytes).hexdigest(),
                               created_at=ex.clock(), created_by=actor.id))
    record(actor, "ebr.generated", ("ebr", batch_id), batch=batch_id,
           after={"sha256": made.sha256, "json_sha256": hashlib.sha256(made.json_bytes).hexdigest(),
                  "bundle_sha256": hashlib.sha256(made.bundle).hexdigest(), "bytes": len(made.pdf),
                  "pades": signing_paths().level, "pdfa": "PDF/A-3B"})
    return made.sha256


def stored(batch_id: str) -> EbrDocument:
    """The frozen eBR of a decided batch; NotFound before the decision."""
    ex.get_batch(batch_id)
    doc = db.session.get(EbrDocument, batch_id)
    if doc is None:
        raise NotFound(f"Batch {batch_id} has no electronic batch record yet: it is generated at release.")
    return doc


def stored_json(batch_id: str) -> bytes:
    """The frozen JSON eBR: the very bytes embedded in the signed PDF."""
    return attachments(stored(batch_id).pdf)[JSON_NAME]


def attachments(pdf: bytes) -> dict[str, bytes]:
    """The embedded files of a PDF (name -> bytes); empty if none or unreadable."""
    from pyhanko.pdf_utils.reader import PdfFileReader

    try:
        root = PdfFileReader(io.BytesIO(pdf), strict=False).root
        names = root["/Names"]["/EmbeddedFiles"]["/Names"]
        out = {}
        for i in range(0, len(names), 2):
            spec = names[i + 1].get_object()
            out[str(spec.get("/UF") or spec["/F"])] = spec["/EF"]["/F"].get_object().data
        return out
    except Exception:  # noqa: BLE001 - a damaged or foreign file simply has no usable attachments
        return {}


@dataclass
class VerifyReport:
    """Outcome of ``mes ebr verify``: each check with its answer."""

    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    batch: str | None = None

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def lines(self) -> list[str]:
        return [f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else "") for name, ok, detail in self.checks]


def verify_pdf(pdf: bytes, ca_pem: bytes, *, trusted_vkeys: Iterable[str] = (),
               trusted_witnesses: Iterable[str] = ()) -> VerifyReport:
    """Check an eBR file: the PAdES signature (intact, trusted by the plant CA, covering the
    whole file), the embedded JSON and bundle, the bundle against the audit spec (the
    independent export verifier), and its keys against the ones given (if any)."""
    from mes.audit.verify import verify_export_files

    report = VerifyReport()
    status = signing.validate(pdf, ca_pem)
    report.add("PDF signature intact and valid", status.present and status.intact and status.valid, status.signer or
               status.summary)
    report.add("signer trusted by the plant CA", status.trusted)
    report.add("signature covers the whole file", status.covers_whole_file)
    files = attachments(pdf)
    report.add("JSON eBR embedded", JSON_NAME in files)
    report.add("audit proof bundle embedded", BUNDLE_NAME in files)
    if JSON_NAME not in files or BUNDLE_NAME not in files:
        return report
    doc = json.loads(files[JSON_NAME])
    report.batch = doc["batch"]["id"]
    try:
        bundle = unzip_bundle(files[BUNDLE_NAME])
    except zipfile.BadZipFile as exc:
        report.add("audit proof bundle readable", False, str(exc))
        return report
    result = verify_export_files(bundle)
    report.add("audit proof bundle verifies (audit-log spec §5)", result.ok, result.summary())
    lines = [json.loads(line) for line in bundle.get("entries.jsonl", b"").splitlines() if line.strip()]
    report.add("bundle is the eBR's batch and audit trail", lines == doc["audit_trail"]
               and all(e.get("batch") == report.batch for e in lines), f"{len(lines)} entries")
    report.add("release checkpoint printed is the bundle's", doc.get("release_checkpoint") ==
               bundle.get("checkpoint", b"").decode("utf-8"))
    vkeys = {v.strip() for v in trusted_vkeys if v.strip()}
    if vkeys:
        given = {v.strip() for v in bundle.get("log.vkey", b"").decode("utf-8").splitlines() if v.strip()}
        report.add("log verifier key is the plant's", bool(given) and given <= vkeys)
    witnesses = {w.strip() for w in trusted_witnesses if w.strip()}
    if witnesses:
        given = {w.strip() for w in bundle.get("witnesses", b"").decode("utf-8").splitlines() if w.strip()}
        report.add("witness keys are the configured witnesses'", given <= witnesses)
    return report


def read_ca(path: str | Path | None = None) -> bytes:
    """The plant CA certificate (PEM): ``path``, else the configured one (created if missing)."""
    return Path(path).read_bytes() if path else signing_paths().ca_cert.read_bytes()
