"""``mes audit …``, ``mes backup`` and ``mes restore``: thin shells over the audit services."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mes.cli import handle_errors, main, make_app, reachable


@main.group()
def audit() -> None:
    """Verify, export and checkpoint the audit log."""


@audit.command("verify")
@click.option("--workers", type=int, default=None, help="verifier processes (default: CPUs)")
@handle_errors
def audit_verify(workers: int | None) -> None:
    """Re-verify every entry and checkpoint; name the first bad seq; exit 1 on failure."""
    from mes.audit.database_check import verify_database_safely
    from mes.jobs import report_verification

    app = make_app()
    reachable(app)
    with app.app_context():
        result = verify_database_safely(workers=workers)
        report_verification(result, source="mes audit verify")
    click.echo(result.summary())
    for line in result.errors[1:20]:
        click.echo(f"  {line}", err=True)
    sys.exit(0 if result.ok else 1)


@audit.command("reconcile")
@handle_errors
def audit_reconcile() -> None:
    """Replay the log and compare every GMP record with the tables; name the first
    difference with its record and seq; exit 1 (and raise an alarm) on any."""
    from mes.audit.alarms import raise_audit_alarm
    from mes.audit.reconcile import reconcile

    app = make_app()
    reachable(app)
    with app.app_context():
        try:
            result = reconcile()
            line = result.summary()
        except Exception as exc:  # noqa: BLE001 - never a traceback: one FAILED line
            result, line = None, f"FAILED: the records could not be reconciled ({type(exc).__name__}: {exc})"
        if result is None or not result.ok:
            raise_audit_alarm(f"Audit reconcile failed: {line}",
                              {"first_bad_seq": None if result is None else result.first_bad_seq,
                               "source": "mes audit reconcile"})
    click.echo(line)
    if result is not None:
        for diff in result.differences[1:20]:
            click.echo(f"  {diff.line()}", err=True)
    sys.exit(0 if result is not None and result.ok else 1)


@audit.command("export")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--batch", default=None, help="export one batch's entries with inclusion proofs")
@handle_errors
def audit_export(out: Path, batch: str | None) -> None:
    """Write entries.jsonl, checkpoint, checkpoints.jsonl, log.vkey (and proofs.json)."""
    from mes.audit.database_check import export

    app = make_app()
    reachable(app)
    with app.app_context():
        try:
            info = export(out, batch)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
    click.echo(f"exported {info['entries']} entries to {out} (checkpoint size {info['checkpoint_size']}, root {info['root']})")


@audit.command("checkpoint")
@handle_errors
def audit_checkpoint() -> None:
    """Publish a signed checkpoint now (if entries are not yet covered)."""
    from mes.audit.checkpoint_guard import LogTampered
    from mes.audit.log import latest_checkpoint, publish_checkpoint
    from mes.db import db

    app = make_app()
    reachable(app)
    with app.app_context():
        try:
            publish_checkpoint()
        except LogTampered as exc:  # nothing signed over a log the MES did not write
            click.echo(exc.summary())
            sys.exit(1)
        db.session.commit()
        cp = latest_checkpoint()
        click.echo(cp.note if cp else "the audit log is empty")


@audit.command("rotate-key")
@handle_errors
def audit_rotate_key() -> None:
    """Replace the checkpoint signing key; old verifier keys are kept; checkpoint at once."""
    from mes.audit import keys
    from mes.audit.log import Actor, audit_log, publish_checkpoint, record
    from mes.db import db

    app = make_app()
    reachable(app)
    with app.app_context():
        al = audit_log()
        old = al.vkey()
        assert al.key_path is not None
        if al.token is not None:  # the old verifier key was kept when it was loaded (al.vkey() above)
            from mes.system import token as hsm

            hsm.rotate_audit_signing_key(al.token)  # the new one is kept as it is loaded (al.vkey() below)
        else:
            keys.rotate_signing_key(al.key_path, al.verifier_dir, al.site_id)
        al.reload_key()
        record(Actor.system("cli"), "audit.key.rotated", ("audit_key", al.key_name), before={"vkey": old},
               after={"vkey": al.vkey()})
        publish_checkpoint()
        db.session.commit()
        click.echo(f"new verifier key {al.vkey()}")


@main.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@handle_errors
def backup(out: Path) -> None:
    """Back up the database (SQLite online backup, or pg_dump) with a checkpoint manifest."""
    from mes.audit.backup import backup_database

    app = make_app()
    reachable(app)
    with app.app_context():
        manifest = backup_database(out)
    click.echo(f"backup written to {out} (checkpoint size {manifest['checkpoint_size']}, root {manifest['root']})")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="replace an existing non-empty database")
@click.option("--accept-older", "accept_older", default=None, metavar="REASON",
              help="restore a backup older than a witnessed checkpoint (audited with REASON, alarm raised)")
@handle_errors
def restore(file: Path, force: bool, accept_older: str | None) -> None:
    """Prove a backup in a staging database (verify, reconcile, manifest and witnesses), then
    switch to it; a refused backup leaves the running database untouched."""
    from mes.audit.backup import RestoreError, restore_database

    app = make_app()
    with app.app_context():
        try:
            result = restore_database(file, force=force, accept_older=accept_older)
        except RestoreError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
    click.echo(result)
