"""Hypothesis fuzz of every JSON request body the API declares (issue 18): deep nesting, huge
and non-finite numbers, duplicate members and control characters never give a 500; every
refusal is problem+json. Each body goes to its endpoint as a caller who holds its permission
(on its terminal), so the body is read, not refused at the door."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mes.users import operations as ops
from mes.users.permissions import MATRIX, Permission, allowed
from mes.web import access_of
from tests.helpers import SEED, Session, logged_in, seed

EXAMPLES = int(os.environ.get("MES_BODY_FUZZ_EXAMPLES", "8"))
ROLES = ("operator", "supervisor", "qa", "admin", "integrator")
SKIP = {"/api/v1/auth/login"}  # a log-in from the fuzzing session is covered by the auth tests
_PATH = re.compile(r"<(?:(\w+):)?(\w+)>")

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\u202eevil", "nul\x00byte", "bell\x07", "=HYPERLINK(1)", "x" * 5000, "2026-13-45", "9999-12-31",
                     "0001-01-01T00:00:00+05:00", "NaN", "-1", "0", ""]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), HOSTILE_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def hostile_body(draw: Any, names: list[str]) -> str:
    """A body text for a schema with members ``names``: members with hostile values, sometimes
    a member twice, a member nested thousands deep, or a number no 64-bit column holds."""
    keys = draw(st.lists(st.sampled_from(names) if names else st.text(max_size=8), max_size=6))
    parts = [f"{json.dumps(k)}: {json.dumps(draw(VALUES))}" for k in keys]
    trick = draw(st.sampled_from(["none", "duplicate", "deep", "huge", "nan"]))
    if trick == "duplicate" and keys:
        parts.append(f"{json.dumps(keys[0])}: {json.dumps(draw(VALUES))}")
    elif trick == "deep":
        parts.append(f"{json.dumps(draw(st.sampled_from(names or ['x'])))}: {_deep(draw(st.integers(33, 5000)))}")
    elif trick == "huge":
        parts.append(f"{json.dumps(draw(st.sampled_from(names or ['x'])))}: {'9' * draw(st.integers(20, 5000))}")
    elif trick == "nan":
        parts.append(f"{json.dumps(draw(st.sampled_from(names or ['x'])))}: {draw(st.sampled_from(['NaN', '-Infinity', '1e999']))}")
    return "{" + ", ".join(parts) + "}"


def _callers(app: Flask) -> dict[str, tuple[dict[str, str], Any]]:
    seeded = seed()
    callers: dict[str, tuple[dict[str, str], Any]] = {}
    for role in ROLES[:4]:
        s = logged_in(app.test_client(), seeded, role)
        callers[role] = ({**s.headers, "X-CSRF-Token": s.csrf, "Idempotency-Key": "fuzz"}, s.client)
    scopes = [p.value for p in Permission if allowed({"integrator"}, p)]
    _, secret = ops.issue_token(SEED, seeded.users["integrator"], scopes, "fuzz")
    callers["integrator"] = ({"Authorization": f"Bearer {secret}"}, app.test_client())
    anonymous = Session(app.test_client(), seeded.kiosk)
    callers["public"] = ({**anonymous.headers, "X-CSRF-Token": anonymous.csrf}, anonymous.client)
    return callers


def _fuzz(path: str, names: list[str], role: str, headers: dict[str, str], client: Any, seen: list[int]) -> None:
    """Post ``EXAMPLES`` hostile bodies to ``path`` as ``role``."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(body=hostile_body(names))
    def post(body: str) -> None:
        r = client.post(path, data=body, content_type="application/json", headers=headers)
        seen.append(r.status_code)
        assert r.status_code < 500 or (r.status_code in (502, 503, 504) and "/devices/" in path), \
            f"{r.status_code} for {body[:200]!r}: {r.get_data(as_text=True)[:300]}"
        if r.status_code >= 400:
            assert r.mimetype == "application/problem+json" or path.startswith(("/kiosk/", "/qa/")), \
                f"{r.status_code} {r.mimetype} for {body[:200]!r}"
        assert r.status_code != 401, f"the {role} caller was logged out by {body[:200]!r}"

    post()


def test_hostile_bodies_on_every_json_schema_never_give_a_500(app: Flask) -> None:
    app.config.update(MES_LOCKOUT_THRESHOLD=10**6, MES_ACCOUNT_RATE_PER_MINUTE=10**6, MES_LOGIN_RATE_PER_MINUTE=10**6)
    callers = _callers(app)
    targets = []
    for rule in app.url_map.iter_rules():
        access = access_of(app.view_functions[rule.endpoint])
        if access is None or access.request_schema is None or rule.rule in SKIP:
            continue
        if access.permission is None:
            role = "public"
        else:
            role = next((r for r in ROLES if r in {x.value for x in MATRIX[access.permission]}), None)
        if role is None:
            continue
        path = _PATH.sub(lambda m: "1" if m.group(1) == "int" else "FUZZ-1", rule.rule)
        names = sorted((access.request_schema.get("properties") or {}).keys())
        for variant in access.request_schema.get("oneOf") or ():
            names += sorted((variant.get("properties") or {}).keys())
        targets.append((path, sorted(set(names)), role))
    assert len(targets) >= 30
    failures: list[str] = []
    seen: list[int] = []
    for path, names, role in targets:
        try:
            _fuzz(path, names, role, *callers[role], seen)
        except Exception as exc:  # noqa: BLE001 - collected: every schema is fuzzed
            failures.append(f"POST {path} as {role}: {str(exc)[:700]}")
    assert not failures, "\n\n".join(failures)
    # the bodies were read and refused for what they hold, not turned away at the door
    assert seen.count(422) > len(seen) // 2 and seen.count(403) < len(seen) // 10, sorted(set(seen))
