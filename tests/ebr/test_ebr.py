"""The signed eBR generated at release: it validates with pyHanko and with poppler's pdfsig
(the plant CA in an NSS database made here), both fail after one changed byte; its embedded
audit proof bundle passes ``mes ebr verify`` and the independent export verifier; it is
PDF/A-3b with associated files; its pages render; the API and CLI serve the frozen bytes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from mes.audit.models import AuditEntry
from mes.db import db
from mes.ebr import operations as eo
from mes.ebr import render, signing
from mes.errors import Conflict
from mes.integration.models import OutboxEvent
from tests.ebr.helpers import CJK_INSTRUCTION, nss_db, one_byte_changed, pdfsig, released_batch
from tests.helpers import logged_in

ROOT = Path(__file__).resolve().parents[2]
MES = [sys.executable, "-c", "from mes.cli import main; main()"]


def _catalog(pdf: bytes) -> object:
    from pyhanko.pdf_utils.reader import PdfFileReader

    return PdfFileReader(io.BytesIO(pdf), strict=False).root


def test_released_pdf_validates_with_pyhanko_and_pdfsig_and_fails_after_one_byte(app: Flask, monkeypatch,
                                                                                  tmp_path: Path) -> None:
    _, batch_id = released_batch(monkeypatch)
    frozen = eo.stored(batch_id)
    pdf = frozen.pdf
    assert hashlib.sha256(pdf).hexdigest() == frozen.sha256

    # the SHA-256 is in the audit log and in mes.batch.released.v1
    generated = db.session.execute(select(AuditEntry.entry_bytes).where(
        AuditEntry.batch_id == batch_id, AuditEntry.action == "ebr.generated")).scalar_one()
    assert json.loads(bytes(generated))["after"]["sha256"] == frozen.sha256
    event = db.session.execute(select(OutboxEvent).where(OutboxEvent.type == "mes.batch.released.v1")).scalars().all()
    bodies = [json.loads(bytes(e.body))["data"] for e in event]
    assert [d["ebr_sha256"] for d in bodies if d["batch_id"] == batch_id] == [frozen.sha256]

    # pyHanko: intact, valid, trusted by the plant CA, covering the whole file
    paths = signing.paths_from(app.config)
    ca = paths.ca_cert.read_bytes()
    status = signing.validate(pdf, ca)
    assert status.ok, status.summary
    # poppler's pdfsig with the plant CA in an NSS database made here
    nss = nss_db(tmp_path / "nss", paths.ca_cert)
    good = tmp_path / "ebr.pdf"
    good.write_bytes(pdf)
    verdict = pdfsig(good, nss)
    assert "Signature is Valid" in verdict and "Certificate is Trusted" in verdict, verdict
    assert "ETSI.CAdES.detached" in verdict, verdict

    # one byte changed: both refuse it
    bad = tmp_path / "ebr-changed.pdf"
    bad.write_bytes(one_byte_changed(pdf))
    assert not signing.validate(bad.read_bytes(), ca).ok
    verdict = pdfsig(bad, nss)
    assert "Signature is Valid" not in verdict, verdict
    assert "Digest Mismatch" in verdict or "Signature is Invalid" in verdict, verdict

    # a CA the signature does not chain to: intact but not trusted
    other = signing.SigningPaths(tmp_path / "o" / "ca.crt", tmp_path / "o" / "ca.key", tmp_path / "o" / "s.crt",
                                 tmp_path / "o" / "s.key")
    signing.ensure_identity(other, "elsewhere.example")
    stranger = signing.validate(pdf, other.ca_cert.read_bytes())
    assert stranger.intact and not stranger.trusted

    # the embedded bundle passes the eBR verifier and the independent export verifier
    report = eo.verify_pdf(pdf, ca)
    assert report.ok, report.lines()
    files = eo.unzip_bundle(eo.attachments(pdf)[eo.BUNDLE_NAME])
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    for name, data in files.items():
        (bundle_dir / name).write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "mes.audit.verify", str(bundle_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("OK: batch export of " + batch_id), done.stdout + done.stderr
    assert not eo.verify_pdf(one_byte_changed(pdf), ca).ok

    # pages render to PNG (poppler), every one of them
    subprocess.run(["pdftoppm", "-r", "50", "-png", str(good), str(tmp_path / "page")], check=True, timeout=120)
    pages = sorted(tmp_path.glob("page-*.png"))
    info = subprocess.run(["pdfinfo", str(good)], capture_output=True, text=True, check=True).stdout
    assert len(pages) == int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
    assert all(p.stat().st_size > 5000 for p in pages)
    # the batch id and "page x of y" on every page; the Chinese instruction as written
    text = subprocess.run(["pdftotext", "-layout", str(good), "-"], capture_output=True, text=True, check=True).stdout
    for n, page in enumerate(text.split("\f")[:len(pages)], start=1):
        assert f"page {n} of {len(pages)}" in page and f"Batch {batch_id}" in page
    assert CJK_INSTRUCTION.split(" ")[0] in text


def test_the_ebr_is_pdfa3b_with_the_json_and_bundle_as_associated_files(app: Flask, monkeypatch) -> None:
    _, batch_id = released_batch(monkeypatch)
    pdf = eo.stored(batch_id).pdf
    root = _catalog(pdf)
    xmp = root["/Metadata"].get_object().data.decode("utf-8")
    assert "<pdfaid:part>3</pdfaid:part>" in xmp and "<pdfaid:conformance>B</pdfaid:conformance>" in xmp
    assert pdf.startswith(b"%PDF-1.7") and "/Version" not in root  # PDF/A-3 is PDF 1.7; signing kept it
    assert root["/OutputIntents"][0]["/S"] == "/GTS_PDFA1"
    associated = {str(f.get_object()["/UF"]): f.get_object() for f in root["/AF"]}
    assert set(associated) == {eo.JSON_NAME, eo.BUNDLE_NAME}
    assert associated[eo.JSON_NAME]["/AFRelationship"] == "/Data"
    assert associated[eo.BUNDLE_NAME]["/AFRelationship"] == "/Source"
    assert associated[eo.JSON_NAME]["/EF"]["/F"].get_object()["/Subtype"] == "/application/json"
    assert associated[eo.BUNDLE_NAME]["/EF"]["/F"].get_object()["/Subtype"] == "/application/zip"
    # signing was an incremental update: the PDF/A document is unchanged underneath
    sig_at = pdf.rindex(b"%%EOF", 0, pdf.index(b"/ETSI.CAdES.detached"))
    unsigned = pdf[:sig_at + len(b"%%EOF")]
    assert b"/ETSI.CAdES.detached" not in unsigned and b"pdfaid:part" in unsigned

    doc = json.loads(eo.attachments(pdf)[eo.JSON_NAME])
    assert doc["format"] == "mes.ebr/v1" and doc["batch"]["id"] == batch_id
    assert [s["step"] for s in doc["steps"]] == ["id_bulk", "w_bulk", "hopper_temp", "packed_out"]
    assert doc["steps"][1]["instruction"] == CJK_INSTRUCTION
    (line,) = doc["bill_of_materials"]
    (box,) = line["containers"]
    assert line["actual"] and line["in_limits"] is True
    assert {"tare", "gross", "net"} <= set(box) and box["instrument"]["serial"] and box["instrument"]["raw"]
    assert box["instrument"]["calibration"]["status"] == "calibrated"
    # the current value reads as its step kind's batch-record hook writes it; the corrected one stays
    assert sorted((r["value"], r.get("shown") or "") for r in doc["steps"][2]["records"]) == [("21", ""), ("22", "22 °C")]
    (corr,) = doc["corrections"]
    assert (corr["old_value"], corr["new_value"], corr["step"]) == ("21", "22", "hopper_temp") and corr["reason"]
    release = [s for s in doc["signatures"] if s["meaning"] == "released"]
    assert len(release) == 1 and release[0]["printed_name"] and "UTC" in release[0]["signed_at_plant"]
    assert doc["batch"]["decision"] == {"disposition": "released", "conditions": None}
    assert doc["genealogy"]["produced"]["lot"] == "LOT-FG-EBR-001"
    # the release checkpoint is printed (on the last page), line for line
    pages = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    last = [p for p in pages.split("\f") if p.strip()][-1]
    assert doc["release_checkpoint"] and all(line in last for line in doc["release_checkpoint"].splitlines() if line)


def test_api_cli_export_and_verify_serve_the_frozen_bytes(app: Flask, client, monkeypatch, tmp_path: Path) -> None:
    world, batch_id = released_batch(monkeypatch)
    pdf = eo.stored(batch_id).pdf
    db.session.commit()
    s = logged_in(client, world.seeded, "qa")
    r = s.get(f"/api/v1/batches/{batch_id}/ebr.pdf")
    assert r.status_code == 200 and r.mimetype == "application/pdf" and r.data == pdf
    r = s.get(f"/api/v1/batches/{batch_id}/ebr.json")
    assert r.status_code == 200 and r.get_json()["batch"]["id"] == batch_id
    assert r.data == eo.attachments(pdf)[eo.JSON_NAME]
    r = s.get("/api/v1/batches/B-NOPE/ebr.pdf")
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    db.session.close()  # the CLI below writes (a checkpoint at start-up); SQLite wants no reader holding on

    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
    env.update({"MES_HOME": app.config["MES_HOME"], "MES_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
                "MES_SECRET_KEY": "cli-test", "MES_LOG_LEVEL": "WARNING",
                "MES_AUDIT_KEY_PATH": app.config["MES_AUDIT_KEY_PATH"],
                "MES_AUDIT_TAG_KEY_PATH": os.environ["MES_AUDIT_TAG_KEY_PATH"],
                **{k: v for k, v in os.environ.items() if k.startswith("MES_EBR_")}})  # the plant's signing identity

    def mes(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MES, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)

    out = tmp_path / "ebr.pdf"
    done = mes("ebr", "export", batch_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == pdf
    done = mes("ebr", "export", batch_id, "--out", str(tmp_path / "ebr.json"), "--json")
    assert done.returncode == 0 and json.loads((tmp_path / "ebr.json").read_text())["batch"]["id"] == batch_id
    done = mes("ebr", "verify", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and "log verifier key is the plant's" in done.stdout
    assert done.stdout.strip().endswith(f"is a valid signed eBR of batch {batch_id}")
    bad = tmp_path / "changed.pdf"
    bad.write_bytes(one_byte_changed(pdf))
    done = mes("ebr", "verify", str(bad))
    assert done.returncode == 1 and "FAIL PDF signature intact and valid" in done.stdout, done.stdout


def test_no_cjk_font_refuses_the_release_with_a_sentence(app: Flask, monkeypatch, tmp_path: Path) -> None:
    app.config["MES_EBR_FONT"] = str(tmp_path / "missing.otf")
    with pytest.raises(Conflict, match="cannot be printed: MES_EBR_FONT .*missing.otf does not exist"):
        released_batch(monkeypatch)
    db.session.rollback()
    # refused before anything was signed (the preflight), and the refusal is audited
    refused = [json.loads(bytes(b))["after"] for b in db.session.execute(select(AuditEntry.entry_bytes).where(
        AuditEntry.action == "batch.release.refused")).scalars()]
    assert len(refused) == 1 and "cannot be printed" in refused[0]["reason"]
    assert db.session.execute(select(AuditEntry).where(AuditEntry.action == "batch.released")).first() is None
    render.find_font.cache_clear()
    with pytest.raises(render.FontMissing, match="no CJK font found"):
        monkeypatch.setattr(render.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
            a, 0, stdout="/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:0"))
        render.find_font(None)
    render.find_font.cache_clear()
