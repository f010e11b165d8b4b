"""The gateway's device list: a YAML file (``MES_GATEWAY_CONFIG``), checked before anything runs.

::

    devices:
      - device_id: SCALE-FLOOR-01       # as registered on the scale in the equipment registry
        driver: mtsics                  # a name from the ``mes.devices`` entry points
        config: {port: /dev/ttyUSB0}    # the driver's own configuration (its JSON Schema)
        mode: stream                    # stream (continuous, default when the driver can) or poll
        interval_s: 0.2                 # poll period (poll and packml modes)
        reconnect_initial_s: 0.5        # serial drivers: the gateway reopens the port with this backoff
        reconnect_max_s: 30
      - device_id: LINE-1
        driver: opcua
        kind: line
        line: LINE-1                    # PackML state and counters go to the OEE service
        mode: packml
        interval_s: 1
        config: {url: "opc.tcp://10.0.0.20:4840", nodes: {...}, packml: {...},
                 reconnect_initial_s: 0.5, reconnect_max_s: 30}   # networked drivers reconnect by
                                                                  # themselves: the policy is theirs

A mistake names the device and the field; the driver's own configuration is validated by
the driver class (so a typo in a port name fails at start, not at the first weighing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mes.validation import ID_JSON_PATTERN

__all__ = ["DeviceSpec", "GatewayConfigError", "load_gateway_config", "parse_gateway_config"]

MODES = ("stream", "poll", "packml")
KINDS = ("scale", "line", "other")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["devices"],
    "properties": {
        "devices": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["device_id", "driver"],
                "properties": {
                    "device_id": {"type": "string", "pattern": ID_JSON_PATTERN},
                    "driver": {"type": "string", "minLength": 1, "maxLength": 64},
                    "config": {"type": "object"},
                    "mode": {"enum": list(MODES)},
                    "kind": {"enum": list(KINDS)},
                    "line": {"type": "string", "pattern": ID_JSON_PATTERN},
                    "interval_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                    "emit_every_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
                    "reconnect_initial_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
                    "reconnect_max_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                },
            },
        },
    },
}


class GatewayConfigError(ValueError):
    """The gateway configuration is missing or wrong; the message names the device and field."""


@dataclass(frozen=True)
class DeviceSpec:
    """One device the gateway runs."""

    device_id: str
    driver: str
    config: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None  #: stream / poll / packml; None = stream when the driver can, else poll
    kind: str = "scale"
    line: str | None = None
    interval_s: float = 0.2
    #: An unchanged reading is re-sent this often (kiosks show >= 5 updates/s); a change goes at once.
    emit_every_s: float = 0.15
    #: Backoff of the gateway reopening a driver that does not reconnect by itself (serial
    #: balances); a networked driver (``reconnects_itself``) uses its own ``reconnect_*`` config.
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 10.0


def parse_gateway_config(data: Any, *, source: str = "gateway configuration") -> list[DeviceSpec]:
    """Device specs from parsed YAML; every driver name and driver config is checked now."""
    from devices.errors import ConfigurationError, DriverError
    from devices.registry import default_registry

    if data is None:
        data = {"devices": []}
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise GatewayConfigError(f"{source}: {where}: {error.message}")
    specs: list[DeviceSpec] = []
    seen: set[str] = set()
    for item in data["devices"]:
        device_id = item["device_id"]
        if device_id in seen:
            raise GatewayConfigError(f"{source}: device {device_id} is listed twice")
        seen.add(device_id)
        try:
            driver_class = default_registry.load(item["driver"])
            driver_class.validate_config(item.get("config") or {})
        except (DriverError, ConfigurationError) as exc:
            raise GatewayConfigError(f"{source}: device {device_id}: {exc}") from None
        if getattr(driver_class, "reconnects_itself", False) and {"reconnect_initial_s", "reconnect_max_s"} & set(item):
            raise GatewayConfigError(f"{source}: device {device_id}: the {item['driver']} driver reconnects by "
                                     "itself; set reconnect_initial_s / reconnect_max_s in its config, not on the "
                                     "device entry (one place for the reconnect policy)")
        mode = item.get("mode")
        if mode == "packml" and driver_class.name != "opcua":
            raise GatewayConfigError(f"{source}: device {device_id}: mode packml needs the opcua driver")
        kind = item.get("kind") or ("line" if mode == "packml" else "scale")
        spec = DeviceSpec(device_id=device_id, driver=item["driver"], config=dict(item.get("config") or {}),
                          mode=mode, kind=kind, line=item.get("line"),
                          **{k: float(item[k]) for k in ("interval_s", "emit_every_s", "reconnect_initial_s",
                                                           "reconnect_max_s") if k in item})
        if spec.reconnect_max_s < spec.reconnect_initial_s:
            raise GatewayConfigError(f"{source}: device {device_id}: reconnect_max_s is below reconnect_initial_s")
        specs.append(spec)
    return specs


def load_gateway_config(path: str | Path) -> list[DeviceSpec]:
    """Read and check the YAML file at ``path``."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise GatewayConfigError(f"MES_GATEWAY_CONFIG: cannot read {file}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GatewayConfigError(f"{file}: not valid YAML: {exc}") from None
    return parse_gateway_config(data, source=str(file))
