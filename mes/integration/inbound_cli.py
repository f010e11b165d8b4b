"""``mes peer add|list|rotate|disable|enable`` (who may send commands), ``mes masterdata pull``
(ERP master data through an adapter), and the simulators ``mes sim erp`` and ``mes sim qms``.

Imported by ``mes/cli.py``. Peer changes run as a named user holding
``integration.endpoints`` (admin or integrator), like ``mes endpoint``.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import timedelta

import click

from mes.cli import _as_user, fail, handle_errors, main, make_app, reachable, sim

PERMISSION = "integration.endpoints"


@main.group()
def peer() -> None:
    """Systems that send commands to the MES (QMS, ERP) and their inbound secrets."""


@peer.command("add")
@click.argument("peer_id")
@click.option("--type", "types", multiple=True, help="command type it may send (repeat; default: all)")
@click.option("--as", "as_user", required=True)
@handle_errors
def peer_add(peer_id: str, types: tuple[str, ...], as_user: str) -> None:
    """Register a peer and print the inbound secret it signs with (shown once)."""
    from mes.integration import inbound as ops

    app = make_app()
    reachable(app)
    with app.app_context():
        _, secret = ops.add_peer(_as_user(app, as_user, PERMISSION), peer_id, list(types) or None)
        click.echo(f"added peer {peer_id}; inbound secret (shown once): {secret}")


@peer.command("list")
@handle_errors
def peer_list() -> None:
    """List peers (never their secrets)."""
    from mes.integration import inbound as ops

    app = make_app()
    reachable(app)
    with app.app_context():
        for row in ops.list_peers():
            j = ops.peer_json(row)
            click.echo(f"{j['id']:20} {j['state']:9} [{','.join(j['event_types']) or 'all types'}]  "
                       f"secret {j['secret_fingerprint']}")


@peer.command("rotate")
@click.argument("peer_id")
@click.option("--overlap-hours", type=click.FloatRange(0, 720), default=24, show_default=True,
              help="how long the old secret still verifies beside the new one")
@click.option("--as", "as_user", required=True)
@handle_errors
def peer_rotate(peer_id: str, overlap_hours: float, as_user: str) -> None:
    """Give a peer a new inbound secret (printed once); both verify during the overlap."""
    from mes.integration import inbound as ops

    app = make_app()
    reachable(app)
    with app.app_context():
        secret = ops.rotate_peer_secret(_as_user(app, as_user, PERMISSION), peer_id, timedelta(hours=overlap_hours))
        click.echo(f"rotated {peer_id}; new inbound secret (shown once): {secret}")


def _peer_state(name: str, enable: bool) -> None:
    @peer.command(name)
    @click.argument("peer_id")
    @click.option("--reason", required=True)
    @click.option("--as", "as_user", required=True)
    @handle_errors
    def change(peer_id: str, reason: str, as_user: str) -> None:
        from mes.integration import inbound as ops
        from mes.integration.inbound_models import PeerState

        app = make_app()
        reachable(app)
        with app.app_context():
            ops.set_peer_state(_as_user(app, as_user, PERMISSION), peer_id,
                               PeerState.ENABLED if enable else PeerState.DISABLED, reason)
            click.echo(f"{name}d {peer_id}")

    change.__doc__ = f"{name.title()} a peer (audited, with a reason)."


_peer_state("disable", enable=False)
_peer_state("enable", enable=True)


@main.group()
def masterdata() -> None:
    """Master data from ERP through an adapter (items, BOMs, work orders)."""


@masterdata.command("pull")
@click.option("--adapter", default="rest", show_default=True, help="adapter name (built in: rest, virtual)")
@click.option("--base-url", help="the ERP's base URL (rest adapter)")
@click.option("--peer", "peer_id", default="erp", show_default=True, help="whose system actor records the changes")
@click.option("--every", type=float, default=None, help="pull again every this many seconds (conditional requests)")
@handle_errors
def masterdata_pull(adapter: str, base_url: str | None, peer_id: str, every: float | None) -> None:
    """Pull master data and apply what changed; prints one JSON report a pull."""
    from mes.integration.adapters import create_adapter
    from mes.integration.inbound import system_actor
    from mes.integration.master_data import sync

    app = make_app()
    reachable(app)
    source = create_adapter(adapter, **({"base_url": base_url} if base_url else {}))
    stop = threading.Event()
    with app.app_context():
        while True:
            click.echo(json.dumps(sync(system_actor(peer_id), source).as_json()))
            if every is None or stop.wait(every):
                break


# ------------------------------------------------------------------ simulators


def _serve(name: str, port: int, secrets: tuple[str, ...], data_file: str | None) -> None:
    from mes.integration.sims import DEMO_MASTER_DATA, MasterData, SimServer

    data = DEMO_MASTER_DATA if name == "erp" else {}
    if data_file:
        with open(data_file, encoding="utf-8") as fh:
            data = json.load(fh)
    server = SimServer(name, list(secrets), MasterData(data), echo=click.echo).start(port)
    click.echo(f"{name} simulator on {server.url} (webhooks: {server.url}/hooks/mes"
               + (", master data: /items /boms /work-orders" if name == "erp" else "") + ")")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


def _send(mes_url: str, secret: str, event_type: str, data: dict[str, object], source: str) -> None:
    from mes.integration.sims import send_command

    status, answer = send_command(mes_url, secret, event_type, {k: v for k, v in data.items() if v is not None},
                                  source=source)
    click.echo(json.dumps({"status": status, "answer": answer}, indent=2, default=str))
    sys.exit(0 if 200 <= status < 300 else 1)


MES_URL = click.option("--mes-url", default="http://127.0.0.1:8000", show_default=True)
SECRET = click.option("--secret", envvar="MES_INBOUND_SECRET", required=True,
                      help="the inbound secret `mes peer add` printed [env MES_INBOUND_SECRET]")


@sim.group("qms")
def sim_qms() -> None:
    """Simulated QMS: receives the MES's events; sends holds, releases and dispositions."""


@sim_qms.command("serve")
@click.option("--port", type=int, default=8091, show_default=True)
@click.option("--webhook-secret", "secrets", multiple=True, help="endpoint secret(s) to verify deliveries with")
def qms_serve(port: int, secrets: tuple[str, ...]) -> None:
    """Receive and verify the MES's webhooks (standardwebhooks library)."""
    _serve("qms", port, secrets, None)


@sim_qms.command("hold")
@MES_URL
@SECRET
@click.option("--lot", required=True)
@click.option("--hold-id", required=True)
@click.option("--scope", type=click.Choice(["consumption", "shipment", "all"]), default="all", show_default=True)
@click.option("--reason", required=True)
@click.option("--ncr")
def qms_hold(mes_url: str, secret: str, lot: str, hold_id: str, scope: str, reason: str, ncr: str | None) -> None:
    """Place a hold on a lot (qms.lot.hold_placed.v1)."""
    _send(mes_url, secret, "qms.lot.hold_placed.v1",
          {"lot_id": lot, "hold_id": hold_id, "scope": scope, "reason": reason, "ncr_id": ncr}, "urn:qms:sim")


@sim_qms.command("release")
@MES_URL
@SECRET
@click.option("--hold-id", required=True)
@click.option("--disposition", type=click.Choice(["release", "conditional_release", "reject"]), required=True)
@click.option("--conditions")
@click.option("--approved-by", required=True)
def qms_release(mes_url: str, secret: str, hold_id: str, disposition: str, conditions: str | None,
                approved_by: str) -> None:
    """Release a hold (qms.lot.hold_released.v1)."""
    _send(mes_url, secret, "qms.lot.hold_released.v1",
          {"hold_id": hold_id, "disposition": disposition, "conditions": conditions, "approved_by": approved_by},
          "urn:qms:sim")


@sim_qms.command("disposition")
@MES_URL
@SECRET
@click.option("--deviation", required=True)
@click.option("--disposition", type=click.Choice(["use_as_is", "rework", "scrap", "reject_batch", "repeat_step"]),
              required=True)
@click.option("--capa")
@click.option("--approved-by", required=True)
@click.option("--reason")
def qms_disposition(mes_url: str, secret: str, deviation: str, disposition: str, capa: str | None, approved_by: str,
                    reason: str | None) -> None:
    """Disposition a deviation (qms.deviation.dispositioned.v1)."""
    _send(mes_url, secret, "qms.deviation.dispositioned.v1",
          {"deviation_id": deviation, "disposition": disposition, "capa_id": capa, "approved_by": approved_by,
           "reason": reason}, "urn:qms:sim")


@sim.group("erp")
def sim_erp() -> None:
    """Simulated ERP: serves master data with ETags, receives the MES's events, releases work orders."""


@sim_erp.command("serve")
@click.option("--port", type=int, default=8092, show_default=True)
@click.option("--webhook-secret", "secrets", multiple=True, help="endpoint secret(s) to verify deliveries with")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False),
              help='JSON {"items": [...], "boms": [...], "work_orders": [...]}')
def erp_serve(port: int, secrets: tuple[str, ...], data_file: str | None) -> None:
    """Serve master data (ETag / Last-Modified, 304) and verify the MES's webhooks."""
    _serve("erp", port, secrets, data_file)


@sim_erp.command("release-wo")
@MES_URL
@SECRET
@click.option("--id", "wo_id", required=True)
@click.option("--item", required=True)
@click.option("--qty", required=True, help="decimal string")
@click.option("--uom", required=True)
@click.option("--bom-version", required=True, help="the recipe version the MES knows")
@click.option("--due-date")
@click.option("--line")
def erp_release_wo(mes_url: str, secret: str, wo_id: str, item: str, qty: str, uom: str, bom_version: str,
                   due_date: str | None, line: str | None) -> None:
    """Release a work order to the MES (erp.work_order.released.v1)."""
    _send(mes_url, secret, "erp.work_order.released.v1",
          {"work_order_id": wo_id, "item": item, "quantity": {"value": qty, "uom": uom}, "bom_version": bom_version,
           "due_date": due_date, "line": line}, "urn:erp:sim")


__all__ = ["fail"]
