"""The JSON Schema (Draft 2020-12) of each outbound event type's ``data``.

One file per type in ``mes/integration/schemas/<type>.json``, served at
``/integration/v1/schemas/<type>.json`` and named in every event's ``dataschema``
(``shared/specs/events.md`` §1). The tests validate every event the MES writes against
its schema, so an event type without one cannot be emitted unnoticed.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema

DIR = Path(__file__).resolve().parent / "schemas"
TYPE_PATTERN = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+\.v[0-9]+$")
ENVELOPE_REQUIRED = ("specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema",
                     "partitionkey", "sequence", "sequencetype", "data")


def known_types() -> list[str]:
    """Every event type that has a schema, sorted."""
    return sorted(p.name[:-len(".json")] for p in DIR.glob("*.json"))


@functools.cache
def schema_text(event_type: str) -> bytes | None:
    """The schema file's bytes as served, or None for a type without one."""
    if not TYPE_PATTERN.match(event_type):
        return None
    path = DIR / f"{event_type}.json"
    return path.read_bytes() if path.is_file() else None


@functools.cache
def _validator(event_type: str) -> jsonschema.Draft202012Validator | None:
    text = schema_text(event_type)
    if text is None:
        return None
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def data_errors(event_type: str, data: Any) -> list[str]:
    """Why ``data`` does not follow the type's schema (empty when it does)."""
    validator = _validator(event_type)
    if validator is None:
        return [f"no schema for event type {event_type}"]
    return [f"{'/'.join(map(str, e.absolute_path)) or '(data)'}: {e.message}" for e in validator.iter_errors(data)]


def event_errors(body: bytes | str | dict[str, Any]) -> list[str]:
    """Why a stored CloudEvent does not follow the envelope of events.md §1 and its type's schema."""
    event = json.loads(body) if isinstance(body, (bytes, str)) else body
    problems = [f"missing {name}" for name in ENVELOPE_REQUIRED if name not in event]
    if problems:
        return problems
    if event["specversion"] != "1.0" or event["sequencetype"] != "Integer" or not str(event["sequence"]).isdigit():
        problems.append("specversion, sequence or sequencetype is not as events.md §1 says")
    if event["dataschema"] != f"/integration/v1/schemas/{event['type']}.json":
        problems.append(f"dataschema {event['dataschema']} does not name the type's schema")
    if event["subject"].split("/", 1)[-1] != event["partitionkey"]:
        problems.append("partitionkey is not the subject's aggregate id")
    return problems + data_errors(event["type"], event["data"])
