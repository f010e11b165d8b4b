"""Small helpers the test modules share: seeded people, terminals and logged-in clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient

from mes.audit.log import Actor
from mes.db import db
from mes.users import operations as ops

PASSWORD = "Corr3ct-Horse-Battery"
SEED = Actor.system("test")


@dataclass
class Seeded:
    users: dict[str, str]  # role -> user id
    kiosk: tuple[str, str]  # (terminal id, key)
    workstation: tuple[str, str]


ROLES = ("operator", "supervisor", "qa", "admin", "integrator")
TERMINALS = {  # id -> (kind, description, line, enrolment key)
    "KIOSK-01": ("kiosk", "Dispensary kiosk", "LINE-1", "test-kiosk-01-enrolment-key"),
    "QA-WS-01": ("workstation", "QA office", None, "test-qa-ws-01-enrolment-key"),
}


def seed(roles: tuple[str, ...] = ROLES) -> Seeded:
    """One user per role (password login; operators also get a badge and PIN) and two terminals.

    The test database of a module that uses this already holds them (seeded once into its
    template, see ``tests/conftest.py``): then they are found, not created again."""
    from mes.users.models import Terminal, User

    users = {}
    for role in roles:
        uid = f"{role}1"
        if db.session.get(User, uid) is None:
            extra: dict[str, Any] = {}
            if role in {"operator", "supervisor"}:
                extra = {"badge_id": f"B-{role}", "pin": "2468"}
            ops.create_user(SEED, uid, f"{role.title()} One", {role}, password=PASSWORD, **extra)
        users[role] = uid
    for tid, (kind, description, line, key) in TERMINALS.items():
        if db.session.get(Terminal, tid) is None:
            ops.register_terminal(SEED, tid, kind, description, line=line, key=key)
    db.session.commit()  # end the look-ups' transaction: on SQLite it holds the write lock
    return Seeded(users=users, kiosk=("KIOSK-01", TERMINALS["KIOSK-01"][3]),
                  workstation=("QA-WS-01", TERMINALS["QA-WS-01"][3]))


def terminal_header(terminal: tuple[str, str]) -> dict[str, str]:
    return {"X-MES-Terminal": f"{terminal[0]}:{terminal[1]}"}


class Session:
    """A logged-in test client that sends the terminal header and CSRF token every time."""

    def __init__(self, client: FlaskClient, terminal: tuple[str, str] | None) -> None:
        self.client = client
        self.headers = terminal_header(terminal) if terminal else {}
        self.csrf = client.get("/api/v1/auth/csrf", headers=self.headers).get_json()["csrf_token"]

    def _h(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.headers, "X-CSRF-Token": self.csrf, **(extra or {})}

    def get(self, url: str, **kw: Any):
        return self.client.get(url, headers=self._h(kw.pop("headers", None)), **kw)

    def post(self, url: str, json: Any = None, **kw: Any):
        return self.client.post(url, json=json, headers=self._h(kw.pop("headers", None)), **kw)

    def login(self, user_id: str, password: str = PASSWORD):
        r = self.post("/api/v1/auth/login", {"user_id": user_id, "password": password})
        if r.status_code == 200:
            self.csrf = r.get_json()["csrf_token"]
        return r

    def badge_login(self, badge: str, pin: str):
        r = self.post("/api/v1/auth/login", {"badge": badge, "pin": pin})
        if r.status_code == 200:
            self.csrf = r.get_json()["csrf_token"]
        return r


def logged_in(client: FlaskClient, seeded: Seeded, role: str) -> Session:
    terminal = seeded.kiosk if role == "operator" else seeded.workstation
    s = Session(client, terminal)
    r = s.login(seeded.users[role])
    assert r.status_code == 200, r.get_json()
    return s


def qa_signer(user_id: str = "qa1") -> tuple[Any, Any]:
    """A QA person's session on the QA workstation and their signature components (the QA
    user and the terminals are seeded if missing; the e-signature acknowledged)."""
    from mes.signatures.operations import Credentials
    from mes.users.models import Terminal

    seed(("qa",))
    ops.acknowledge_esig_accountability(user_id, None)
    row, _secret = ops.login_with_password(user_id, PASSWORD, db.session.get(Terminal, "QA-WS-01"))
    return row, Credentials(PASSWORD, user_id=user_id)


def release_lot_as_qa(lot_id: str, reason: str = "CoA reviewed, tested and released") -> Any:
    """QA releases a lot the way the plant does: with an e-signature on the QA workstation."""
    from mes.materials import operations as mat

    row, creds = qa_signer()
    return mat.release_lot(row, creds, lot_id, reason, terminal="QA-WS-01")


def reject_lot_as_qa(lot_id: str, reason: str) -> Any:
    """QA rejects a lot with an e-signature on the QA workstation."""
    from mes.materials import operations as mat

    row, creds = qa_signer()
    return mat.reject_lot(row, creds, lot_id, reason, terminal="QA-WS-01")


def example_data(event_type: str, **extra: Any) -> dict[str, Any]:
    """A payload of ``event_type`` that follows its schema (the schema's own example), with
    ``extra`` fields: for tests that write events of their own (the app fixture checks every
    outbox event against its type's schema)."""
    import json

    from mes.integration.event_schemas import schema_text

    text = schema_text(event_type)
    assert text is not None, f"no schema for {event_type}"
    return {**json.loads(text)["examples"][0], **extra}
