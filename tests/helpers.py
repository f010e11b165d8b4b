"""Small helpers the test modules share: seeded people, terminals and logged-in clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient

from mes.audit.log import Actor
from mes.users import operations as ops

PASSWORD = "Corr3ct-Horse-Battery"
SEED = Actor.system("test")


@dataclass
class Seeded:
    users: dict[str, str]  # role -> user id
    kiosk: tuple[str, str]  # (terminal id, key)
    workstation: tuple[str, str]


def seed(roles: tuple[str, ...] = ("operator", "supervisor", "qa", "admin", "integrator")) -> Seeded:
    """One user per role (password login; operators also get a badge and PIN) and two terminals."""
    users = {}
    for role in roles:
        uid = f"{role}1"
        extra: dict[str, Any] = {}
        if role in {"operator", "supervisor"}:
            extra = {"badge_id": f"B-{role}", "pin": "2468"}
        ops.create_user(SEED, uid, f"{role.title()} One", {role}, password=PASSWORD, **extra)
        users[role] = uid
    _, kiosk_key = ops.register_terminal(SEED, "KIOSK-01", "kiosk", "Dispensary kiosk", line="LINE-1")
    _, ws_key = ops.register_terminal(SEED, "QA-WS-01", "workstation", "QA office")
    return Seeded(users=users, kiosk=("KIOSK-01", kiosk_key), workstation=("QA-WS-01", ws_key))


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
