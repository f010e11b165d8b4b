"""HTTP API for the device gateway (a thin shell over :mod:`mes.gateway.service`).

* ``GET /api/v1/devices`` — every device the gateway reports: connected, age of the last
  reading, last error.
* ``GET /api/v1/devices/<id>`` — one device with its latest reading.
* ``POST /api/v1/devices/<id>/tare`` and ``/zero`` — forwarded to the driver; the answer is
  the device's outcome or a problem+json saying why it could not.
* ``POST /api/v1/simulation/devices/<id>`` ``{"load": "1.234", "unit": "kg", "unstable": false}``
  — only with ``MES_SIMULATION=true`` (``mes demo``, browser tests): set a simulated scale's load.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, g, jsonify

from mes.errors import NotFound
from mes.gateway import service
from mes.gateway.health import device_state, device_states
from mes.users.permissions import Permission as P
from mes.validation import ID_JSON_PATTERN
from mes.web import endpoint, obj, principal, problem

bp = Blueprint("devices", __name__)
simulation_bp = Blueprint("simulation", __name__)
API = "/api/v1/devices"
TAGS = ("devices",)
ID = ID_JSON_PATTERN
SIMULATE_SCHEMA = obj({"load": {"type": "string", "pattern": r"^-?[0-9]{1,9}(\.[0-9]{1,9})?$"},
                       "unit": {"enum": ["mg", "g", "kg"]}, "unstable": {"type": "boolean"}, "connected": {"type": "boolean"}},
                      ("load",))


def _gateway_kind() -> str:
    if service.embedded(current_app) is not None:
        return "in-process"
    return "redis" if current_app.config.get("MES_REDIS_URL") else "none"


@bp.get(API)
@endpoint(P.EQUIPMENT_VIEW, tags=TAGS)
def devices_list() -> Response:
    """Health of every device the gateway runs."""
    return jsonify({"gateway": _gateway_kind(), "devices": [s.to_json() for s in device_states(current_app)]})


@bp.get(f"{API}/<device_id>")
@endpoint(P.EQUIPMENT_VIEW, tags=TAGS)
def device_get(device_id: str) -> Response:
    """One device: connected, age of its last reading, the reading itself."""
    state = device_state(current_app, device_id)
    if state is None:
        raise NotFound(f"No gateway has reported device {device_id}.")
    return jsonify(state.to_json())


def _command(device_id: str, action: str, payload: dict | None = None, *, instrument: bool = False) -> Response:
    if instrument:
        result = service.instrument_command(current_app, principal().actor(P.DEVICE_OPERATE), device_id, action)
    else:
        result = service.send_command(current_app, device_id, action, payload)
    if result.get("ok"):
        body = {k: v for k, v in result.items() if k not in ("status", "slug")}
        return jsonify(body)
    titles = {404: "Not found", 409: "The device refused", 422: "The input is not valid",
              502: "Unexpected device reply", 503: "Device not available", 504: "No answer in time"}
    status = int(result.get("status") or 502)
    extra = {k: v for k, v in result.items() if k not in ("ok", "status", "slug", "detail")}
    return problem(status, str(result.get("slug") or "device-error"), titles.get(status, "Device error"),
                   str(result.get("detail") or ""), **extra)


@bp.post(f"{API}/<device_id>/tare")
@endpoint(P.DEVICE_OPERATE, terminal=True, tags=TAGS)
def device_tare(device_id: str) -> Response:
    """Tare the device (waits for a stable load); answers with the tare weight. Audited; from a terminal only."""
    return _command(device_id, "tare", instrument=True)


@bp.post(f"{API}/<device_id>/zero")
@endpoint(P.DEVICE_OPERATE, terminal=True, tags=TAGS)
def device_zero(device_id: str) -> Response:
    """Set the device to zero (waits for a stable load). Audited; from a terminal only."""
    return _command(device_id, "zero", instrument=True)


@simulation_bp.post("/api/v1/simulation/devices/<device_id>")
@endpoint(P.DEVICE_OPERATE, schema=SIMULATE_SCHEMA, tags=("simulation",))
def simulation_set_load(device_id: str) -> Response:
    """Set the load on a simulated scale (only when MES_SIMULATION is on)."""
    return _command(device_id, "simulate", dict(g.body))


def init_app(app: Flask) -> None:
    """Register the device API, and the simulation endpoint only when simulation is on."""
    app.register_blueprint(bp)
    if app.config.get("MES_SIMULATION"):
        app.register_blueprint(simulation_bp)
