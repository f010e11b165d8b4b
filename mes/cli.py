"""The ``mes`` command: a thin shell over the service layer.

Commands that change records run as a named user (``--as USER``, password from the
prompt or ``MES_CLI_PASSWORD``) and are checked against the same permission matrix as
the API; only ``mes init`` (which creates the first admin) and ``mes demo`` act as the
system. Errors print one plain line and exit non-zero, never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from flask import Flask

from mes.config import SETTINGS, ConfigError, InstanceFolder, load_config
from mes.errors import MESError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def make_app(**overrides: Any) -> Flask:
    """Create the app, turning configuration and connection problems into one line."""
    from mes.app import create_app

    try:
        app = create_app(overrides or None)
    except ConfigError as exc:
        fail(str(exc))
    except ModuleNotFoundError as exc:
        if exc.name and "psycopg" in exc.name:
            fail("MES_DATABASE_URL names PostgreSQL but psycopg is not installed: pip install 'open-mes[postgres]'")
        raise
    return app


def reachable(app: Flask) -> None:
    """Fail with one line naming MES_DATABASE_URL when the database cannot be reached."""
    from sqlalchemy import text

    from mes.db import db

    with app.app_context():
        try:
            with db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - every driver error means the same to the user
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
            fail(f"cannot reach the database given by MES_DATABASE_URL ({app.config['SQLALCHEMY_DATABASE_URI'].split('@')[-1]}): {reason}")


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc))
        except MESError as exc:
            fail(exc.detail, 1)

    return wrapper  # type: ignore[return-value]


@click.group(help=__doc__.split("\n\n")[0] if __doc__ else None)
@click.version_option(package_name="open-mes")
def main() -> None:
    """open-mes command line."""


# --------------------------------------------------------------------------- db


def upgrade_database(app: Flask) -> str | None:
    """Run Alembic migrations to head (the only way the schema is made)."""
    from alembic import command

    from mes.db import db
    from mes.system.readiness import alembic_config, current_revision

    with app.app_context():
        cfg = alembic_config()
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        return current_revision()


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    app = make_app()
    reachable(app)
    click.echo(f"database at revision {upgrade_database(app)}")


# ------------------------------------------------------------------------- init


@main.command()
@click.option("--admin-id", default="admin", show_default=True)
@click.option("--admin-name", default="System Administrator", show_default=True)
@click.option("--admin-password", envvar="MES_ADMIN_PASSWORD", help="or MES_ADMIN_PASSWORD; prompted if absent")
@handle_errors
def init(admin_id: str, admin_name: str, admin_password: str | None) -> None:
    """Create the instance folder, database, signing key and first admin."""
    folder = InstanceFolder(Path(os.environ.get("MES_HOME", "instance")).resolve())
    folder.ensure()
    app = make_app()
    reachable(app)
    click.echo(f"instance folder {folder.path}")
    click.echo(f"database at revision {upgrade_database(app)}")
    from sqlalchemy import select

    from mes.audit.log import Actor, audit_log
    from mes.db import db as database
    from mes.users import operations as ops
    from mes.users.models import User, UserRole

    with app.app_context():
        audit_log().signing_key()
        token = audit_log().token
        click.echo(f"audit signing key {app.config['MES_AUDIT_KEY_PATH'] if token is None else token.describe()}")
        click.echo(f"verifier key {audit_log().vkey()}")
        from mes.ebr.signing import ensure_identity, paths_from

        ebr_paths = paths_from(app.config)
        made = ensure_identity(ebr_paths, app.config["MES_SITE_ID"])
        click.echo(f"eBR signing certificate {ebr_paths.cert} ({'created' if made else 'present'}; "
                   f"plant CA {ebr_paths.ca_cert})")
        has_admin = database.session.execute(select(UserRole).where(UserRole.role == "admin", UserRole.revoked_at.is_(None))).first()
        if has_admin:
            click.echo("an admin account exists already; none created")
            return
        if database.session.get(User, admin_id) is not None:
            fail(f"user id {admin_id!r} is taken")
        if admin_password is None:
            admin_password = click.prompt("password for the first admin", hide_input=True, confirmation_prompt=True)
        ops.create_user(Actor.system("init"), admin_id, admin_name, {"admin"}, password=admin_password)
        click.echo(f"created admin {admin_id!r}")


# ------------------------------------------------------------------------ check


@main.command()
@handle_errors
def check() -> None:
    """Check configuration, database, schema and keys; exit non-zero on any problem."""
    try:
        load_config(create_secret=False)
    except ConfigError as exc:
        fail(str(exc))
    app = make_app()
    reachable(app)
    problems = []
    from mes.system.readiness import current_revision, head_revision

    with app.app_context():
        click.echo(f"ok   configuration (MES_HOME={app.config['MES_HOME']})")
        click.echo(f"ok   database reachable ({app.config['SQLALCHEMY_DATABASE_URI'].split('://')[0]})")
        head, current = head_revision(), current_revision()
        if head == current:
            click.echo(f"ok   schema at migration head {head}")
        else:
            problems.append(f"schema at {current}, head is {head}: run `mes db upgrade`")
        from mes.system.custody import custody_report

        for level, line in custody_report(app):
            if level == "FAIL":
                problems.append(line)
            else:
                click.echo(f"{level:<4} {line}")
    for p in problems:
        click.echo(f"FAIL {p}")
    if problems:
        sys.exit(1)


# ------------------------------------------------------------------------ users


def _as_user(app: Flask, user_id: str, permission: str) -> Any:
    """Authenticate the CLI caller and check the permission matrix for the command."""
    from mes.users import operations as ops
    from mes.users.permissions import Permission, allowed

    password = os.environ.get("MES_CLI_PASSWORD") or click.prompt(f"password for {user_id}", hide_input=True)
    try:  # a wrong password is counted toward the lockout and audited, as at a log-in
        user = ops.check_password(user_id, password, "cli")
    except MESError as exc:
        fail(exc.detail[:1].lower() + exc.detail[1:].rstrip("."), 1)
    if not allowed(user.role_names(), Permission(permission)):
        fail(f"{user_id} may not do this ({permission})", 1)
    return ops.actor_for(user, terminal="cli")


@main.group()
def users() -> None:
    """Manage users (deactivated, never deleted)."""


@users.command("add")
@click.argument("user_id")
@click.option("--name", "full_name", required=True)
@click.option("--role", "roles", multiple=True, required=True)
@click.option("--password", envvar="MES_NEW_PASSWORD")
@click.option("--badge")
@click.option("--pin", envvar="MES_NEW_PIN")
@click.option("--language", default="en")
@click.option("--as", "as_user", required=True, help="admin performing the change")
@handle_errors
def users_add(user_id: str, full_name: str, roles: tuple[str, ...], password: str | None, badge: str | None,
              pin: str | None, language: str, as_user: str) -> None:
    """Create a user."""
    from mes.users import operations as ops

    app = make_app()
    with app.app_context():
        actor = _as_user(app, as_user, "users.admin")
        ops.create_user(actor, user_id, full_name, set(roles), password=password, badge_id=badge, pin=pin, language=language)
        click.echo(f"created user {user_id}")


@users.command("deactivate")
@click.argument("user_id")
@click.option("--reason", required=True)
@click.option("--as", "as_user", required=True)
@handle_errors
def users_deactivate(user_id: str, reason: str, as_user: str) -> None:
    """Deactivate a user; the id is never reused."""
    from mes.users import operations as ops

    app = make_app()
    with app.app_context():
        ops.deactivate_user(_as_user(app, as_user, "users.admin"), user_id, reason)
        click.echo(f"deactivated {user_id}")


@users.command("reset")
@click.argument("user_id")
@click.option("--reason", required=True)
@click.option("--password", envvar="MES_NEW_PASSWORD", help="temporary password (must be changed at log-in)")
@click.option("--pin", envvar="MES_NEW_PIN")
@click.option("--as", "as_user", required=True)
@handle_errors
def users_reset(user_id: str, reason: str, password: str | None, pin: str | None, as_user: str) -> None:
    """Unlock a user and set a temporary password or new PIN."""
    from mes.users import operations as ops

    app = make_app()
    with app.app_context():
        ops.reset_credentials(_as_user(app, as_user, "users.admin"), user_id, reason, password=password, pin=pin)
        click.echo(f"reset {user_id}")


@users.command("list")
@handle_errors
def users_list() -> None:
    """List users and their state."""
    from sqlalchemy import select

    from mes.db import db as database
    from mes.users.models import User

    app = make_app()
    with app.app_context():
        for u in database.session.execute(select(User).order_by(User.id)).scalars():
            state = "active" if u.active else "deactivated"
            state += ", locked" if u.locked else ""
            click.echo(f"{u.id:20} {u.full_name:30} {','.join(sorted(u.role_names())):24} {state}")


@main.group()
def terminals() -> None:
    """Register kiosks and workstations."""


@terminals.command("add")
@click.argument("terminal_id")
@click.option("--kind", type=click.Choice(["kiosk", "workstation"]), required=True)
@click.option("--description", default="")
@click.option("--line")
@click.option("--as", "as_user", required=True)
@handle_errors
def terminals_add(terminal_id: str, kind: str, description: str, line: str | None, as_user: str) -> None:
    """Register a terminal and print its enrolment key (shown once)."""
    from mes.users import operations as ops

    app = make_app()
    with app.app_context():
        _, key = ops.register_terminal(_as_user(app, as_user, "terminals.admin"), terminal_id, kind, description, line)
        click.echo(f"registered {terminal_id}; enrolment key (shown once): {key}")


# -------------------------------------------------------------------------- run


@main.command()
@click.option("--bind", help="HOST:PORT or unix:PATH [default: MES_BIND, else 127.0.0.1:8000]")
@click.option("--workers", type=click.IntRange(1, 64),
              help="worker processes [default: MES_WORKERS, else 1]; 1 per instance for Socket.IO long-polling, "
                   "scale with more instances behind nginx")
@click.option("--threads", type=click.IntRange(1, 1000), help="threads per worker [default: MES_THREADS, else 50]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="gunicorn config file [default: MES_GUNICORN_CONFIG, else ./deploy/gunicorn.conf.py if present]")
@handle_errors
def run(bind: str | None, workers: int | None, threads: int | None, config_file: str | None) -> None:
    """Run the production server (gunicorn, threaded workers, WebSocket-capable)."""
    from mes.server import config_file_for, options_from_env

    options_from_env()  # a bad MES_* server setting stops here, in one line
    config_file = config_file_for(config_file)
    app = make_app()
    reachable(app)
    from mes.server import serve

    serve(bind=bind, workers=workers, threads=threads, config_file=config_file)


@main.command()
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@handle_errors
def demo(port: int, host: str) -> None:
    """Seed demo data on SQLite and serve the kiosk and QA pages (idempotent)."""
    from mes.demo import run_demo

    run_demo(host=host, port=port)


@main.command()
@click.option("--config", "config_path", envvar="MES_GATEWAY_CONFIG", type=click.Path(dir_okay=False),
              help="device configuration (YAML); or MES_GATEWAY_CONFIG")
@click.option("--duration", type=float, default=None, help="stop after this many seconds (tests)")
@handle_errors
def gateway(config_path: str | None, duration: float | None) -> None:
    """Run the device gateway: drivers, reconnects, health, readings to the web app via Redis."""
    from mes.gateway.config import GatewayConfigError
    from mes.gateway.service import run_gateway_process

    app = make_app(**({"MES_GATEWAY_CONFIG": config_path} if config_path else {}))
    try:
        run_gateway_process(app, duration=duration, echo=click.echo)
    except GatewayConfigError as exc:
        fail(str(exc))


@main.group()
def sim() -> None:
    """Device simulators for demos and tests (loopback only)."""


@sim.command("scale", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                        "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_scale(args: tuple[str, ...]) -> None:
    """Simulated scale (MT-SICS or A&D) on a pseudo-terminal or TCP; --help for options."""
    from devices.sim.scale import main as scale_main

    sys.exit(scale_main(list(args)) or 0)


@sim.command("modbus", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                         "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_modbus(args: tuple[str, ...]) -> None:
    """Simulated Modbus TCP line equipment with fault injection; --help for options."""
    from devices.sim.modbus import main as modbus_main

    sys.exit(modbus_main(list(args)) or 0)


@sim.command("opcua", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                        "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_opcua(args: tuple[str, ...]) -> None:
    """Simulated OPC UA packaging line (PackML state and counters); --help for options."""
    from devices.sim.opcua import main as opcua_main

    sys.exit(opcua_main(list(args)) or 0)


@sim.command("operator")
@click.option("--work-order", "work_order", required=True, help="The dispatched work order to execute.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--terminal", default="KIOSK-01:demo-kiosk-01-key", show_default=True, help="Kiosk ID:KEY.")
@click.option("--badge", default="1001", show_default=True)
@click.option("--pin", default="2468", show_default=True)
@click.option("--verifier-badge", default="2001", show_default=True, help="Second person for verification gates.")
@click.option("--verifier-pin", default="8642", show_default=True)
@click.option("--qa-user", default=None, help="QA user who dispositions deviations (use_as_is) if any block.")
@click.option("--qa-password", default=None)
@click.option("--qa-terminal", default=None, help="ID:KEY of QA's terminal (default: --terminal).")
@click.option("--timers", type=click.Choice(["wait", "skip"]), default="wait", show_default=True,
              help="wait: wait out each timer; skip: stop it at once (raises a deviation for QA).")
@click.option("--time-factor", type=float, default=1.0, show_default=True,
              help="How much faster the server's step clock runs (test servers only).")
@click.option("--release", is_flag=True, default=False,
              help="QA (--qa-user) reviews the audit trail and the batch, then releases it.")
def sim_operator(work_order: str, url: str, terminal: str, badge: str, pin: str, verifier_badge: str,
                 verifier_pin: str, qa_user: str | None, qa_password: str | None, qa_terminal: str | None,
                 timers: str, time_factor: float, release: bool = False) -> None:
    """Execute a work order's batch through the HTTP API as a simulated kiosk operator."""
    import json

    from mes.execution.sim_operator import SimulationStopped, run_operator

    try:
        result = run_operator(url, work_order, terminal=terminal, badge=badge, pin=pin, verifier_badge=verifier_badge,
                              verifier_pin=verifier_pin, qa_user=qa_user, qa_password=qa_password,
                              qa_terminal=qa_terminal, time_factor=time_factor, timers=timers, echo=click.echo,
                              release=release)
    except SimulationStopped as exc:
        click.echo(f"stopped: {exc}", err=True)
        if exc.problem:
            click.echo(json.dumps(exc.problem, indent=2, default=str), err=True)
        sys.exit(1)
    sys.exit(0 if result.status in ("completed", "released") else 1)


def settings_table() -> str:
    """The configuration table for the README."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{s.env}` | {s.default if s.default is not None else '—'} | {s.help} |" for s in SETTINGS]
    return "\n".join(rows)


from mes.audit import cli as _audit_cli  # noqa: E402,F401  (registers `mes audit`, `mes backup`, `mes restore`)
from mes.ebr import cli as _ebr_cli  # noqa: E402,F401  (registers `mes ebr`)
from mes.execution.cli import register_cli as _register_execution_cli  # noqa: E402
from mes.integration import cli as _integration_cli  # noqa: E402,F401  (registers `mes relay`, `mes endpoint`)
from mes.integration import inbound_cli as _inbound_cli  # noqa: E402,F401  (registers `mes peer`, `mes masterdata`, `mes sim erp|qms`)
from mes.materials.cli import register_cli as _register_materials_cli  # noqa: E402
from mes.witness import cli as _witness_cli  # noqa: E402,F401  (registers `mes witness`)

_register_execution_cli(main)  # mes recipes validate / import
_register_materials_cli(main)  # mes trace

if __name__ == "__main__":  # pragma: no cover
    main()
