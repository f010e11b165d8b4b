"""``mes ebr export BATCH --out FILE [--json]`` and ``mes ebr verify FILE``: thin shells over
:mod:`mes.ebr.operations`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mes.cli import handle_errors, main, make_app, reachable


@main.group()
def ebr() -> None:
    """The signed electronic batch record: export it, verify a file."""


@ebr.command("export")
@click.argument("batch")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True, help="write the JSON eBR (the one embedded in the PDF)")
@handle_errors
def ebr_export(batch: str, out: Path, as_json: bool) -> None:
    """Write the batch's frozen signed PDF (or its JSON) to FILE."""
    from mes.ebr import operations as ops

    app = make_app()
    reachable(app)
    with app.app_context():
        doc = ops.stored(batch)
        data = ops.stored_json(batch) if as_json else doc.pdf
    out.write_bytes(data)
    click.echo(f"wrote {out} ({len(data)} bytes; signed PDF sha256 {doc.sha256})")


@ebr.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ca", "ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="plant CA certificate (PEM); default the configured one")
@click.option("--vkey", "vkeys", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="audit log verifier key file the bundle's must be among (default: this plant's, if configured)")
@handle_errors
def ebr_verify(file: Path, ca: Path | None, vkeys: tuple[Path, ...]) -> None:
    """Check FILE's PDF signature, extract its audit proof bundle and verify it; exit 1 on any failure."""
    from mes.ebr import operations as ops
    from mes.ebr.signing import paths_from

    app = make_app()
    trusted = [line for p in vkeys for line in p.read_text("utf-8").splitlines()]
    with app.app_context():
        ca_path = ca or paths_from(app.config).ca_cert
        if not Path(ca_path).is_file():
            click.echo(f"FAILED: no plant CA certificate at {ca_path}; pass --ca", err=True)
            sys.exit(2)
        witnesses: list[str] = []
        from mes.audit.log import audit_log

        if not vkeys and audit_log().has_signing_key:
            from mes.audit.database_check import verifier_keys

            trusted = [v.text for v in verifier_keys()]
        from mes.witness.client import configured_witnesses

        witnesses = [w.key.text for w in configured_witnesses()]
        report = ops.verify_pdf(file.read_bytes(), Path(ca_path).read_bytes(), trusted_vkeys=trusted,
                                trusted_witnesses=witnesses)
    for line in report.lines():
        click.echo(line)
    click.echo(f"{'OK' if report.ok else 'FAILED'}: {file} is {'a valid' if report.ok else 'NOT a valid'} signed eBR"
               + (f" of batch {report.batch}" if report.batch else ""))
    sys.exit(0 if report.ok else 1)
