"""``mes witness``: run a witness of the audit log as its own process."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mes.cli import main


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="the witness's own folder (its key and append-only store; never the MES database)")
@click.option("--name", required=True, help="witness key name, e.g. witness.plant-01.example/w1")
@click.option("--log-vkey", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              required=True, help="verifier key file of the log (log.vkey); repeatable")
@click.option("--listen", default="127.0.0.1:7380", show_default=True, help="host:port (port 0: any free port)")
def witness(home: Path, name: str, log_vkey: tuple[Path, ...], listen: str) -> None:
    """Serve a C2SP tlog-witness for the MES audit log (add-checkpoint, cosignature/v1)."""
    from mes.witness.server import main as serve

    args = ["--home", str(home), "--name", name, "--listen", listen]
    for p in log_vkey:
        args += ["--log-vkey", str(p)]
    sys.exit(serve(args))
