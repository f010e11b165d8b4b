"""``mes demo``: a working plant on embedded SQLite in one command.

Seeds demo users (operators with badges and PINs, a supervisor, QA, an admin and an
integrator), a kiosk and a QA workstation, then serves the app on 127.0.0.1. Idempotent:
a second run finds its data and reuses it. The demo passwords are printed on purpose;
they are for a laptop, never for a plant.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from mes.audit.log import Actor

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


def run_demo(host: str, port: int) -> None:
    """Migrate, seed, print the URLs and credentials, and serve until Ctrl-C."""
    os.environ.setdefault("MES_HOME", str(Path("instance").resolve()))
    os.environ.setdefault("MES_SESSION_COOKIE_SECURE", "false")
    os.environ.pop("MES_DATABASE_URL", None)  # the demo is always embedded SQLite
    from mes.cli import make_app, upgrade_database

    app = make_app()
    upgrade_database(app)
    with app.app_context():
        from mes.audit.log import audit_log

        audit_log().signing_key()
        fresh = seed_demo()
    base = f"http://{host}:{port}"
    click.echo("")
    click.echo(f"open-mes demo ({'seeded' if fresh else 'reusing'} {app.config['SQLALCHEMY_DATABASE_URI']})")
    click.echo(f"  enrol the kiosk:    {base}/terminal/enroll?terminal=KIOSK-01&key=demo-kiosk-01-key")
    click.echo(f"  enrol QA desk:      {base}/terminal/enroll?terminal=QA-WS-01&key=demo-qa-ws-01-key")
    click.echo(f"  kiosk:              {base}/kiosk/")
    click.echo(f"  QA:                 {base}/qa/")
    click.echo(f"  API description:    {base}/api/v1/openapi.json")
    click.echo(f"  health:             {base}/healthz  {base}/readyz")
    click.echo("  badges (badge / PIN):")
    for uid, name, roles, badge, pin, _ in DEMO_USERS:
        if badge:
            click.echo(f"    {badge} / {pin}   {name} ({', '.join(sorted(roles))})")
    click.echo(f"  passwords: every demo user ({', '.join(u[0] for u in DEMO_USERS)}) has {DEMO_PASSWORD}")
    click.echo("")
    from mes.server import serve

    serve(bind=f"{host}:{port}", workers=1, threads=32)
