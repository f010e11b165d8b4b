"""``mes relay`` and ``mes endpoint add|list|rotate|disable|enable|replay|dead-letters|status|reconcile``.

Imported by ``mes/cli.py`` (which registers the commands). Endpoint changes run as a
named user holding ``integration.endpoints`` (admin or integrator); the relay runs as the
system, like ``mes gateway``.
"""

from __future__ import annotations

import json
import signal
import threading
from datetime import timedelta

import click

from mes.cli import _as_user, fail, handle_errors, main, make_app, reachable
from mes.integration.relay import BATCH, RUN, SENDERS

PERMISSION = "integration.endpoints"


@main.command("relay")
@click.option("--schedule", help="retry delays in seconds, comma-separated [default: MES_RELAY_SCHEDULE, "
                                 "else 5,300,1800,7200,18000,36000,36000]")
@click.option("--poll", type=click.FloatRange(0.01, 60), default=0.25, show_default=True,
              help="seconds between looks at the outbox when idle")
@click.option("--batch", type=click.IntRange(1, 1000), default=BATCH, show_default=True,
              help="aggregates taken a round (more relays share a backlog when each takes fewer)")
@click.option("--timeout", type=click.FloatRange(0.1, 15), default=15.0, show_default=True,
              help="seconds a receiver has to answer 2xx")
@click.option("--senders", type=click.IntRange(1, 64), default=SENDERS, show_default=True,
              help="deliveries sent side by side (each to a different aggregate)")
@click.option("--run", "run_length", type=click.IntRange(1, 100), default=RUN, show_default=True,
              help="events of one aggregate sent one after another per round (its backlog drains faster)")
@click.option("--lease", type=click.FloatRange(1, 3600), default=60, show_default=True,
              help="seconds a claimed delivery stays this relay's before another may take it over "
                   "(at least the timeout + 10 s)")
@click.option("--duration", type=float, default=None, help="stop after this many seconds (tests)")
@handle_errors
def relay(schedule: str | None, poll: float, batch: int, timeout: float, senders: int, run_length: int,
          lease: float, duration: float | None) -> None:
    """Deliver outbox events to the webhook endpoints (several may run at once on PostgreSQL)."""
    from mes.integration.relay import Relay, parse_schedule, schedule_from_env

    try:
        delays = parse_schedule(schedule) if schedule else schedule_from_env()
    except ValueError as exc:
        fail(str(exc))
    app = make_app()
    reachable(app)
    worker = Relay(app, schedule=delays, poll_s=poll, batch=batch, timeout_s=timeout, senders=senders,
                   lease=timedelta(seconds=lease), run=run_length)
    stop = threading.Event()
    # SIGTERM (systemd stop, a deploy) and Ctrl-C end the loop after the round in hand: its
    # outcomes are recorded, so no lease is left to hold its aggregates back for a minute
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    click.echo(f"relay {worker.name} running (retry schedule {','.join(f'{d:g}' for d in delays)} s)")
    worker.run(stop, duration=duration)


@main.group()
def endpoint() -> None:
    """Webhook endpoints that receive the outbound events."""


@endpoint.command("add")
@click.argument("endpoint_id")
@click.option("--url", required=True)
@click.option("--type", "types", multiple=True, help="event type to send (repeat); default every type")
@click.option("--as", "as_user", required=True)
@handle_errors
def endpoint_add(endpoint_id: str, url: str, types: tuple[str, ...], as_user: str) -> None:
    """Register an endpoint and print its signing secret (shown once)."""
    from mes.integration import endpoints as ops

    app = make_app()
    reachable(app)
    with app.app_context():
        _, secret = ops.add_endpoint(_as_user(app, as_user, PERMISSION), endpoint_id, url, list(types))
        click.echo(f"added endpoint {endpoint_id}; signing secret (shown once): {secret}")


@endpoint.command("set-url")
@click.argument("endpoint_id")
@click.option("--url", required=True)
@click.option("--as", "as_user", required=True)
@handle_errors
def endpoint_set_url(endpoint_id: str, url: str, as_user: str) -> None:
    """Point an endpoint at a new URL (its backlog and secret stay)."""
    from mes.integration import endpoints as ops

    app = make_app()
    reachable(app)
    with app.app_context():
        row = ops.set_url(_as_user(app, as_user, PERMISSION), endpoint_id, url)
        click.echo(f"endpoint {row.id} now delivers to {row.url}")


@endpoint.command("list")
@handle_errors
def endpoint_list() -> None:
    """List endpoints (never their secrets)."""
    from mes.integration import endpoints as ops

    app = make_app()
    reachable(app)
    with app.app_context():
        for row in ops.list_endpoints():
            j = ops.endpoint_json(row)
            types = ",".join(j["event_types"]) or "all types"
            click.echo(f"{j['id']:20} {j['state']:9} {j['url']}  [{types}]  secret {j['secret_fingerprint']}")


@endpoint.command("rotate")
@click.argument("endpoint_id")
@click.option("--overlap-hours", type=click.FloatRange(0, 720), default=24, show_default=True,
              help="how long the old secret still signs beside the new one")
@click.option("--as", "as_user", required=True)
@handle_errors
def endpoint_rotate(endpoint_id: str, overlap_hours: float, as_user: str) -> None:
    """Give an endpoint a new secret (printed once); both sign during the overlap."""
    from mes.integration import endpoints as ops

    app = make_app()
    reachable(app)
    with app.app_context():
        secret = ops.rotate_secret(_as_user(app, as_user, PERMISSION), endpoint_id, timedelta(hours=overlap_hours))
        click.echo(f"rotated {endpoint_id}; new signing secret (shown once): {secret}")


def _state_command(name: str, enable: bool) -> None:
    @endpoint.command(name)
    @click.argument("endpoint_id")
    @click.option("--reason", required=True)
    @click.option("--as", "as_user", required=True)
    @handle_errors
    def change(endpoint_id: str, reason: str, as_user: str) -> None:
        from mes.integration import endpoints as ops
        from mes.integration.models import EndpointState

        app = make_app()
        reachable(app)
        with app.app_context():
            state = EndpointState.ENABLED if enable else EndpointState.DISABLED
            ops.set_state(_as_user(app, as_user, PERMISSION), endpoint_id, state, reason)
            click.echo(f"{name}d {endpoint_id}")

    change.__doc__ = f"{name.title()} an endpoint (audited, with a reason)."


_state_command("disable", enable=False)
_state_command("enable", enable=True)


@endpoint.command("replay")
@click.option("--event", "event_id")
@click.option("--subject", help="aggregate, e.g. batch/B-2026-0001")
@click.option("--type", "event_type")
@click.option("--since", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]), help="UTC unless zoned")
@click.option("--until", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]))
@click.option("--endpoint", "endpoint_id", help="only this endpoint (default: every endpoint that takes them)")
@click.option("--reason", required=True)
@click.option("--as", "as_user", required=True)
@handle_errors
def endpoint_replay(event_id: str | None, subject: str | None, event_type: str | None, since: object,
                    until: object, endpoint_id: str | None, reason: str, as_user: str) -> None:
    """Send events again (same webhook-id, signed afresh)."""
    from datetime import UTC, datetime

    from mes.integration import endpoints as ops

    def utc(value: object) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    app = make_app()
    reachable(app)
    with app.app_context():
        n = ops.replay(_as_user(app, as_user, PERMISSION),
                       ops.Selection(event_id, subject, event_type, utc(since), utc(until)), endpoint_id, reason)
        click.echo(f"queued {n} deliveries")


@endpoint.command("dead-letters")
@click.option("--endpoint", "endpoint_id")
@handle_errors
def endpoint_dead(endpoint_id: str | None) -> None:
    """List dead-lettered deliveries (one JSON object a line)."""
    from mes.integration import endpoints as ops

    app = make_app()
    reachable(app)
    with app.app_context():
        for row in ops.dead_letters(endpoint_id):
            click.echo(json.dumps(row))


@endpoint.command("status")
@handle_errors
def endpoint_status() -> None:
    """Each endpoint's pending, in-flight, failed and dead deliveries, oldest undelivered age, latency, last error."""
    from mes.integration import monitor

    app = make_app()
    reachable(app)
    with app.app_context():
        for row in monitor.endpoint_status():
            click.echo(json.dumps(row))
        for alarm in monitor.integration_alarms():
            click.echo(f"ALARM {alarm['kind']}: {alarm['message']}")


@endpoint.command("reconcile")
@click.argument("work_order_id")
@handle_errors
def endpoint_reconcile(work_order_id: str) -> None:
    """What the MES consumed and produced for a work order against what each endpoint acknowledged (JSON).

    Exits 3 when an endpoint's acknowledged quantities differ or events are unacknowledged."""
    from mes.integration import monitor

    app = make_app()
    reachable(app)
    with app.app_context():
        report = monitor.reconcile(work_order_id)
    click.echo(json.dumps(report, indent=2))
    if any(not (e["consumed_matches"] and e["produced_matches"]) or e["not_acknowledged"] for e in report["endpoints"]):
        raise SystemExit(3)
