"""``mes demo``: a working plant on embedded SQLite in one command.

Seeds demo users (operators with badges and PINs, a supervisor, QA, an admin and an
integrator), a kiosk and a QA workstation, then serves the app on 127.0.0.1. Idempotent:
a second run finds its data and reuses it. The demo passwords are printed on purpose;
they are for a laptop, never for a plant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from mes.audit.log import Actor
from mes.errors import NotFound

DEMO_PASSWORD = "Demo-Passw0rd!"
DEMO_USERS = (
    # id, printed name, roles, badge, pin, language
    ("op1", "Olivia Operator", {"operator"}, "1001", "2468", "en"),
    ("op2", "Wang Fang", {"operator"}, "1002", "3579", "zh_Hans"),
    ("sup1", "Sam Supervisor", {"supervisor"}, "2001", "8642", "en"),
    ("qa1", "Quinn QA", {"qa"}, None, None, "en"),
    ("admin", "Ada Admin", {"admin"}, None, None, "en"),
    ("erp", "ERP Integration", {"integrator"}, None, None, "en"),
)
DEMO_TERMINALS = (
    ("KIOSK-01", "kiosk", "Dispensary booth 1", "LINE-1", "demo-kiosk-01-key"),
    ("QA-WS-01", "workstation", "QA office", None, "demo-qa-ws-01-key"),
)


def seed_demo() -> bool:
    """Create the demo data if it is not there yet; True if anything was created."""
    from mes.db import db
    from mes.users import operations as ops
    from mes.users.models import Terminal, User

    actor = Actor.system("demo")
    created = False
    for uid, name, roles, badge, pin, lang in DEMO_USERS:
        if db.session.get(User, uid) is None:
            ops.create_user(actor, uid, name, roles, password=DEMO_PASSWORD, badge_id=badge, pin=pin, language=lang)
            created = True
    for tid, kind, desc, line, key in DEMO_TERMINALS:
        if db.session.get(Terminal, tid) is None:
            ops.register_terminal(actor, tid, kind, desc, line, key=key)
            created = True
    return created


DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "paracetamol-500mg-tablets.yaml"
BOM_KIND = {"api": "api", "excipient": "excipient", "ingredient": "raw_material", "processing_aid": "raw_material",
            "intermediate": "intermediate", "packaging": "packaging"}


def seed_production() -> bool:
    """The example recipe (approved by QA with an e-signature and made effective), its
    materials with released lots (and one lot on hold, to show a refusal), and a work
    order dispatched to LINE-1. Skipped when a recipe is already there."""
    from datetime import timedelta

    from mes.db import db, utcnow
    from mes.execution import operations as ex
    from mes.execution import recipes_store as store
    from mes.materials import operations as mat
    from mes.plant_time import plant_date
    from mes.signatures.operations import Credentials
    from mes.users import operations as ops
    from mes.users.models import Terminal

    if store.list_versions() or not DEMO_RECIPE.exists():
        return False
    author = ops.actor_for(ops.get_user("sup1"), "supervisor", "QA-WS-01")
    qa = ops.actor_for(ops.get_user("qa1"), "qa", "QA-WS-01")
    rv = store.import_file(author, DEMO_RECIPE)
    store.submit_for_review(author, rv.id)
    ops.acknowledge_esig_accountability("qa1", "QA-WS-01")
    qa_session, _ = ops.login_with_password("qa1", DEMO_PASSWORD, db.session.get(Terminal, "QA-WS-01"))
    qa_creds = Credentials(DEMO_PASSWORD, user_id="qa1")
    store.approve(qa_session, qa_creds, rv.id, terminal="QA-WS-01")
    store.make_effective(author, rv.id)
    master = store.master_of(rv)
    receiving = Actor.system("demo")
    made = plant_date(utcnow()) - timedelta(days=10)
    for line in master.bill_of_materials:
        unit = "pcs" if line.unit == "pcs" else "kg"
        if db.session.get(mat.Item, line.item) is None:
            mat.create_item(receiving, line.item, line.name, unit, BOM_KIND.get(line.role, "raw_material"), shelf_life_days=720)
        size = str(line.quantity * 2 if unit == "pcs" else (line.quantity + 1))
        # the active ingredient comes in smaller drums: its weighing takes two containers of the lot
        drum = str(line.quantity * 2 if unit == "pcs" else line.quantity * 6 / 10) if line.role == "api" else size
        lot = mat.receive_lot(receiving, line.item, [mat.ContainerIn(drum, unit), mat.ContainerIn(drum, unit)],
                              manufactured_date=made, supplier="Demo Supplier")
        mat.release_lot(qa_session, qa_creds, lot.id, "CoA reviewed, tested and released (demo)", terminal="QA-WS-01")
        if line.role == "api":
            held = mat.receive_lot(receiving, line.item, [mat.ContainerIn(size, unit)],
                                   manufactured_date=made, supplier="Demo Supplier")
            mat.release_lot(qa_session, qa_creds, held.id, "tested and released (demo)", terminal="QA-WS-01")
            mat.place_hold(qa, held.id, "all", "Supplier CoA mismatch under investigation", ncr_id="NCR-0001")
    ops.end_session(qa_session, "logout")  # the lots were released with QA's e-signature
    out = master.produce_output()
    if db.session.get(mat.Item, out.item) is None:
        mat.create_item(receiving, out.item, out.name or out.item, "pcs" if out.unit == "pcs" else "kg", "intermediate",
                        shelf_life_days=720)
    wo = ex.create_work_order(author, master.product.code, str(master.batch_size.quantity), master.batch_size.unit, rv.id,
                              line="LINE-1", erp_ref="ERP-DEMO-1")
    ex.release_work_order(author, wo.id)
    ex.dispatch_work_order(author, wo.id, "LINE-1")
    return True


def seed_equipment() -> bool:
    """The simulated scales (registered, calibrated, cleaned; suited to the example recipe's
    weigh steps), LINE-1 and the dispensing booth. Skipped for what is registered already."""
    from datetime import timedelta

    from mes.db import db, utcnow
    from mes.equipment import operations as eq
    from mes.equipment.models import Equipment
    from mes.gateway.simulation import LINE_DEVICE, SIMULATED_SCALES
    from mes.plant_time import plant_date

    actor = Actor.system("demo")
    created = False
    for s in SIMULATED_SCALES:
        if db.session.get(Equipment, s.device_id) is not None:
            continue
        eq.register_equipment(actor, s.device_id, "scale", s.equipment_class, s.description, location="Dispensary",
                              line="LINE-1", device_id=s.device_id, driver="mtsics", capacity=(s.capacity, s.unit),
                              min_weight=(s.min_weight, s.unit), readability=(s.readability, s.unit),
                              accuracy_class=s.accuracy_class)
        eq.record_calibration(actor, s.device_id, "pass", f"DEMO-CAL-{s.device_id}",
                              due=plant_date(utcnow()) + timedelta(days=365), calibrated_by="Demo Calibration Service")
        eq.record_cleaning(actor, s.device_id, "routine", valid_for=timedelta(days=365))
        created = True
    if db.session.get(Equipment, LINE_DEVICE) is None:
        eq.register_equipment(actor, LINE_DEVICE, "line", "Packaging line", "Blister packaging line (simulated, OPC UA)",
                              location="Packaging hall", line="LINE-1")
        created = True
    if db.session.get(Equipment, "BOOTH-01") is None:
        eq.register_equipment(actor, "BOOTH-01", "room", "Dispensing booth with downflow", "Dispensing booth 1",
                              location="Dispensary", line="LINE-1", clean_hold=timedelta(days=3))
        eq.record_cleaning(actor, "BOOTH-01", "routine")
        created = True
    # the rest of the example recipe's equipment (granulator, dryer, press...), cleaned and qualified,
    # so `mes sim operator` and the kiosk can run the whole batch
    from mes.equipment.plant import equip_for_recipe
    from mes.execution import recipes_store as store

    for rv in store.list_versions(status="effective"):
        equip_for_recipe(actor, store.master_of(rv), line="LINE-1")
    return created


def start_demo_witness(app) -> tuple[str, str]:  # noqa: ANN001 - a Flask app
    """Start one audit-log witness (``mes witness``) beside the demo server: its own
    process (in the demo's process group, so it stops with it), key and store under
    ``MES_HOME/witness``, on a free loopback port. Returns its URL and verifier key."""
    import subprocess
    import sys

    from mes.audit.log import audit_log

    home = Path(app.config["MES_HOME"]) / "witness"
    home.mkdir(parents=True, exist_ok=True)
    vkey_file = home / "log.vkey"
    with app.app_context():
        vkey_file.write_text(audit_log().vkey() + "\n", encoding="utf-8")
        name = f"witness.{audit_log().site_id}/demo"
    proc = subprocess.Popen([sys.executable, "-m", "mes.witness.server", "--home", str(home), "--name", name,
                             "--log-vkey", str(vkey_file), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip().split(" listening on ")[-1]  # printed once it is bound
    vkey = proc.stdout.readline().strip().split("witness verifier key ")[-1]
    if not url.startswith("http://") or "+" not in vkey:
        raise click.ClickException("the demo's audit witness did not start")
    import atexit

    atexit.register(proc.terminate)
    return url, vkey


def start_demo_peers(app, mes_url: str) -> dict[str, Any]:  # noqa: ANN001 - a Flask app
    """Start the simulated ERP and QMS (``mes sim erp|qms serve``, in this process, on free
    loopback ports) and wire them in: each is a webhook endpoint whose deliveries it
    verifies, and the QMS is an inbound peer. Secrets are new on every run (rotated when the
    demo reuses its data). Returns the simulators and the QMS's inbound secret."""
    from mes.integration import endpoints, inbound
    from mes.integration.sims import DEMO_MASTER_DATA, MasterData, SimServer

    actor = Actor.system("demo")
    sims = {"erp": SimServer("erp", [], MasterData(DEMO_MASTER_DATA), echo=click.echo).start(),
            "qms": SimServer("qms", echo=click.echo).start()}
    with app.app_context():
        for name, sim in sims.items():
            endpoint_id, url = f"{name}-sim", f"{sim.url}/hooks/mes"
            try:
                endpoints.get_endpoint(endpoint_id)
            except NotFound:
                _, secret = endpoints.add_endpoint(actor, endpoint_id, url)
            else:
                endpoints.set_url(actor, endpoint_id, url)
                secret = endpoints.rotate_secret(actor, endpoint_id)
            sim.webhook_secrets = [secret]
        try:
            inbound.get_peer("qms-sim")
        except NotFound:
            _, qms_secret = inbound.add_peer(actor, "qms-sim")
        else:
            qms_secret = inbound.rotate_peer_secret(actor, "qms-sim")
    return {"sims": sims, "qms_secret": qms_secret, "mes_url": mes_url}


def run_demo(host: str, port: int) -> None:
    """Migrate, seed, print the URLs and credentials, and serve until Ctrl-C."""
    os.environ.setdefault("MES_HOME", str(Path("instance").resolve()))
    os.environ.setdefault("MES_SESSION_COOKIE_SECURE", "false")
    os.environ.setdefault("MES_SIMULATION", "true")  # simulated scales and line in the server's gateway
    os.environ.pop("MES_DATABASE_URL", None)  # the demo is always embedded SQLite
    os.environ.setdefault("MES_RELAY_IN_SERVER", "true")  # webhook endpoints receive the events at once
    from mes.cli import make_app, upgrade_database

    app = make_app()  # also quiets the libraries' INFO lines (mes.observability.configure_logging)
    upgrade_database(app)
    with app.app_context():
        from mes.audit.log import audit_log

        audit_log().signing_key()
        fresh = seed_demo()
        fresh = seed_production() or fresh
        fresh = seed_equipment() or fresh
    witness_url, witness_vkey = start_demo_witness(app)
    # kept beside the key, so the served app and every `mes audit ...` of this MES_HOME use it
    (Path(app.config["MES_AUDIT_KEY_PATH"]).parent / "audit-witnesses").write_text(
        f"{witness_url}={witness_vkey}\n", encoding="utf-8")
    base = f"http://{host}:{port}"
    peers = start_demo_peers(app, base)
    click.echo("")
    click.echo(f"open-mes demo ({'seeded' if fresh else 'reusing'} {app.config['SQLALCHEMY_DATABASE_URI']})")
    click.echo(f"  enrol the kiosk:    {base}/terminal/enroll?terminal=KIOSK-01&key=demo-kiosk-01-key")
    click.echo(f"  enrol QA desk:      {base}/terminal/enroll?terminal=QA-WS-01&key=demo-qa-ws-01-key")
    click.echo(f"  QA audit trail:     {base}/qa/audit")
    click.echo(f"  API description:    {base}/api/v1/openapi.json")
    click.echo(f"  health:             {base}/healthz  {base}/readyz")
    click.echo(f"  audit witness:      {witness_url}  ({witness_vkey.split('+')[0]}, its own process and store)")
    click.echo("  badges (badge / PIN):")
    for _uid, name, roles, badge, pin, _ in DEMO_USERS:
        if badge:
            click.echo(f"    {badge} / {pin}   {name} ({', '.join(sorted(roles))})")
    click.echo("  production: the paracetamol recipe is effective, its materials are received and released")
    click.echo("              (one API lot is on hold: NCR-0001), and a work order is dispatched to LINE-1")
    if app.config.get("MES_SIMULATION"):
        from mes.gateway.simulation import LINE_DEVICE, SIMULATED_SCALES

        click.echo("  simulated devices (gateway inside the server; live on Socket.IO /live):")
        for sc in SIMULATED_SCALES:
            click.echo(f"    {sc.device_id}   {sc.description}, MT-SICS at 9600 baud, unit {sc.unit}")
        click.echo(f"    {LINE_DEVICE}   packaging line, OPC UA PackML (state and counters to OEE)")
        click.echo(f"  set a scale's load: POST {base}/api/v1/simulation/devices/<device id> "
                   '{"load": "1.234", "unit": "kg", "unstable": false}')
    click.echo(f"  integration:        {base}/qa/integration  (endpoints, backlog, dead letters, replay)")
    erp, qms = peers["sims"]["erp"], peers["sims"]["qms"]
    click.echo("  events to ERP/QMS:  an outbox relay in this server delivers to the simulated peers,")
    click.echo(f"                      ERP {erp.url} (master data: {erp.url}/items) and QMS {qms.url};")
    click.echo("                      each verifies every delivery and prints it here")
    click.echo("                      your own receiver: mes endpoint add erp --url http://127.0.0.1:8900/hooks --as admin")
    click.echo(f"                      (pull instead: {base}/integration/v1/events)")
    click.echo("  a QMS hold:         mes sim qms hold --mes-url " + base + " --secret " + peers["qms_secret"])
    click.echo('                      --lot <lot id> --hold-id QMS-H-1 --reason "NCR raised" --ncr NCR-0002')
    click.echo(f"  passwords: every demo user ({', '.join(u[0] for u in DEMO_USERS)}) has {DEMO_PASSWORD}")
    click.echo("")
    from mes.server import serve

    serve(bind=f"{host}:{port}", workers=1, threads=32)
