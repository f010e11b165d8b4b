"""The eBR service layer: generate over the release checkpoint, read the frozen document, verify a file.

A release happens in two steps (:mod:`mes.ebr.finishing`): QA's decision commits with its
release checkpoint (:func:`preflight` first refuses a release whose eBR could not be
produced); once the witnesses have cosigned that checkpoint, the batch's audit proof bundle
(the ``mes audit export --batch`` files) is built against it, the JSON eBR is built,
printed to PDF/A-3b with both embedded as associated files, PAdES-signed with the plant's
document-signing certificate, stored (never changed again) and its SHA-256 recorded in the
audit log (``ebr.generated``) and sent in ``mes.batch.released.v1``.
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

from mes.audit import checkpoint as notes
from mes.audit.database_check import batch_export_files
from mes.audit.models import AuditCheckpoint
from mes.db import db
from mes.ebr import content, render, signing
from mes.ebr.models import EbrDocument
from mes.errors import Conflict, NotFound
from mes.execution import operations as ex
from mes.witness.cosignature import parse_witness_vkey, verify_cosignature

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


class EbrPending(Conflict):
    """The batch is decided but its eBR is still being finished (waiting for the witnesses)."""

    slug, title = "ebr-pending", "The electronic batch record is being finished"


def preflight() -> None:
    """Before QA's decision is committed: refuse, with a sentence, a release whose eBR could
    not be produced (no CJK-capable font; the signing identity or its key unreadable)."""
    try:
        render.find_font(current_app.config.get("MES_EBR_FONT") or None)
    except render.FontMissing as exc:
        raise Conflict(f"The electronic batch record cannot be printed: {exc}.") from None
    try:
        signing.check_signer(signing_paths())
    except (OSError, RuntimeError, ValueError) as exc:
        raise Conflict(f"The electronic batch record cannot be signed: {exc}.") from None


def generate(batch_id: str, *, decision: Mapping[str, Any] | None = None, sign: bool = True,
             created: datetime | None = None, checkpoint: AuditCheckpoint | None = None,
             witnesses: Mapping[str, list[str]] | None = None) -> Generated:
    """Build, print and (if ``sign``) sign the eBR of ``batch_id`` now, in the caller's
    transaction (nothing is committed): against ``checkpoint`` (the witnessed release
    checkpoint; ``witnesses``: who cosigned it, who is missing), else against a checkpoint
    published now."""
    created = created or ex.clock()
    t0 = time.perf_counter()
    files = batch_export_files(batch_id, checkpoint=checkpoint)
    t1 = time.perf_counter()
    doc = content.build(batch_id, checkpoint=files["checkpoint"].decode("utf-8"), generated_at=created,
                        decision=decision, through=None if checkpoint is None else checkpoint.size,
                        witnesses=witnesses)
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


def stored(batch_id: str) -> EbrDocument:
    """The frozen eBR of a decided batch; NotFound before the decision."""
    ex.get_batch(batch_id)
    doc = db.session.get(EbrDocument, batch_id)
    if doc is None:
        from mes.ebr.finishing import pending_detail

        detail = pending_detail(batch_id)
        if detail is not None:
            raise EbrPending(detail)
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
        note = bundle.get("checkpoint", b"").decode("utf-8", "replace")
        for name, ok in release_cosigned(note, witnesses).items():
            report.add(f"release checkpoint cosigned by witness {name}", ok)
    return report


def release_cosigned(note: str, witness_vkeys: Iterable[str]) -> dict[str, bool]:
    """For each trusted witness (by name, from its verifier key text): whether the checkpoint
    ``note`` carries its valid cosignature (C2SP tlog-cosignature)."""
    try:
        body = notes.parse_checkpoint(note).body
    except notes.CheckpointError:
        body = None
    out = {}
    for text in sorted(witness_vkeys):
        try:
            key = parse_witness_vkey(text)
        except notes.CheckpointError:
            out[text] = False
            continue
        prefix = f"{notes.SIGNATURE_PREFIX}{key.name} "
        ok = body is not None and any(_cosigns(line, body, key) for line in note.split("\n") if line.startswith(prefix))
        out[key.name] = out.get(key.name, True) and ok  # two keys of one name: each must have cosigned
    return out


def _cosigns(line: str, body: str, key: Any) -> bool:
    try:
        verify_cosignature(line, body, key)
    except notes.CheckpointError:
        return False
    return True


def read_ca(path: str | Path | None = None) -> bytes:
    """The plant CA certificate (PEM): ``path``, else the configured one (created if missing)."""
    return Path(path).read_bytes() if path else signing_paths().ca_cert.read_bytes()
