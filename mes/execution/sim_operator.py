"""A simulated operator: executes a batch through the public HTTP API, as people at a kiosk would.

The operator logs in with badge + PIN on a kiosk terminal, starts the batch of a dispatched
work order, then repeatedly fetches the batch and completes the next ready step with a
plausible entry taken from the control recipe:

* weigh: a registered scale that suits the step (``GET /api/v1/equipment?kind=scale``) is
  loaded with the amount through the gateway's simulation endpoint
  (``POST /api/v1/simulation/devices/<id>``, ``MES_SIMULATION=true`` as in ``mes demo``);
  once the device shows a stable reading newer than the request
  (``GET /api/v1/devices/<id>``) the step is completed naming the device, and the server
  takes the weight from the gateway. Lots are released, usable lots with enough stock found
  through ``GET /api/v1/lots?item=…`` (split over containers when the step allows several);
* identify: the lot chosen for the item (``scan: lot``) or the lot dispensed into this batch
  (``scan: dispensed``); equipment checks: registered equipment of the class that is free
  (``GET /api/v1/equipment?class=…``); the server checks it against the registry;
* numeric / sample check / produce output: values inside the limits (a numeric without
  limits that a later calculation uses is chosen so the calculation lands mid-limits);
* timer: started, then waited for (``time_factor`` divides the wait when the server clock
  runs faster, as in tests), or completed at once with ``timers="skip"``; while a timer runs
  the steps of parallel operations are done, so timers do not run one after the other;
* signature: signed through the gate endpoint (``/sign``) by the operator, or by the
  verifier (a second session with its own badge) for second-person gates and roles the
  operator does not hold, or by QA (the QA session) for a gate the recipe gives to QA;
* meter: the middle of the volume limits, without a lot.

An open blocking deviation is dispositioned ``use_as_is`` by QA when QA credentials are
given; otherwise the run stops. With QA credentials and ``release=True`` QA finishes the
batch: open deviations dispositioned, audit trail reviewed, batch reviewed and released,
each with an e-signature. Any refusal stops the run with the problem detail
(:class:`SimulationStopped`). No click here: ``mes sim operator`` is a thin shell.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

import requests

from mes.execution.models import DeviationStatus
from mes.quantities import convert, to_text
from mes.recipes import model as rm
from mes.recipes.loader import from_dict
from mes.recipes.scaling import ControlRecipe, scale
from mes.steps import registry as step_kinds

API = "/api/v1"


class ApiError(Exception):
    """An HTTP error answer (problem+json) from the MES."""

    def __init__(self, method: str, url: str, status: int, problem: dict[str, Any]) -> None:
        self.method, self.url, self.status, self.problem = method, url, status, problem
        detail = problem.get("detail") or problem.get("title") or ""
        super().__init__(f"{method} {url} -> {status}: {detail}")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or self.problem.get("title") or self.problem)


class SimulationStopped(Exception):
    """The run cannot go on (a refusal, a blocking deviation without QA, a missing lot...)."""

    def __init__(self, message: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.problem = problem or {}


@dataclass(frozen=True)
class Login:
    """How one person logs in: badge + PIN (kiosk) or user id + password."""

    badge: str | None = None
    pin: str | None = None
    user_id: str | None = None
    password: str | None = None

    def body(self) -> dict[str, str]:
        if self.badge:
            return {"badge": self.badge, "pin": self.pin or ""}
        return {"user_id": self.user_id or "", "password": self.password or ""}

    def sign_fields(self) -> dict[str, str]:
        """The e-signature components for a session opened with these credentials."""
        if self.badge:
            return {"badge": self.badge, "pin": self.pin or ""}
        return {"user_id": self.user_id or "", "password": self.password or ""}


class Client:
    """One person's session on one terminal (cookies, CSRF token, terminal header)."""

    def __init__(self, base_url: str, terminal: str | None, *, http: requests.Session | None = None,
                 timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.http = http or requests.Session()
        if terminal:
            self.http.headers["X-MES-Terminal"] = terminal
        self.timeout = timeout
        self.csrf: str | None = None
        self.user: dict[str, Any] = {}
        self.login_with: Login | None = None
        self._keys = itertools.count()
        self._key_prefix = uuid.uuid4().hex[:10]

    @property
    def user_id(self) -> str:
        return str(self.user.get("id", ""))

    @property
    def roles(self) -> set[str]:
        return {r["role"] if isinstance(r, dict) else str(r) for r in self.user.get("roles", [])}

    def _url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base}{path}"

    def request(self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None,
                params: dict[str, str] | None = None) -> Any:
        h = dict(headers or {})
        if method != "GET" and self.csrf:
            h["X-CSRF-Token"] = self.csrf
        r = self.http.request(method, self._url(path), json=json, headers=h, params=params, timeout=self.timeout)
        if r.status_code >= 400:
            try:
                problem = r.json()
            except ValueError:
                problem = {"detail": r.text[:500]}
            raise ApiError(method, path, r.status_code, problem if isinstance(problem, dict) else {"detail": problem})
        return r.json() if r.content else {}

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, json=json if json is not None else {}, headers=headers)

    def login(self, creds: Login) -> dict[str, Any]:
        self.csrf = self.get(f"{API}/auth/csrf")["csrf_token"]
        out = self.post(f"{API}/auth/login", creds.body())
        self.csrf = out["csrf_token"]
        self.user = out["user"]
        self.login_with = creds
        return out

    def acknowledge_esig(self) -> bool:
        """Acknowledge e-signature accountability once (needed before the first signature)."""
        if self.user.get("esig_acknowledged"):
            return False
        self.post(f"{API}/auth/esig-acknowledgement")
        self.user["esig_acknowledged"] = True
        return True

    def key(self) -> str:
        return f"sim-{self._key_prefix}-{next(self._keys)}"

    # -- execution shortcuts
    def batch(self, batch_id: str) -> dict[str, Any]:
        return self.get(f"{API}/batches/{batch_id}")

    def start_step(self, batch_id: str, step_id: str, version: int) -> dict[str, Any]:
        return self.post(f"{API}/batches/{batch_id}/steps/{step_id}/start", {"expected_version": version},
                         headers={"Idempotency-Key": self.key()})

    def complete_step(self, batch_id: str, step_id: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
        return self.post(f"{API}/batches/{batch_id}/steps/{step_id}/complete",
                         {"expected_version": version, "payload": payload}, headers={"Idempotency-Key": self.key()})


def login(base_url: str, terminal: str | None, creds: Login, *, http: requests.Session | None = None) -> Client:
    client = Client(base_url, terminal, http=http)
    client.login(creds)
    return client


# --------------------------------------------------------------------------- helpers


def parse_at(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def format_at(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def quantize(value: Decimal, places: int, rounding: str | None = None) -> Decimal:
    exp = Decimal(1).scaleb(-places)
    return value.quantize(exp, rounding=rounding) if rounding else value.quantize(exp)


def _places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def midpoint(low: Decimal | None, high: Decimal | None, target: Decimal | None, default: Decimal) -> Decimal:
    if target is not None:
        return target
    if low is not None and high is not None:
        return (low + high) / 2
    if high is not None:
        return high / 2
    if low is not None:
        return low + 1
    return default


def current_values(batch: dict[str, Any]) -> dict[str, Decimal]:
    """Step id -> the current recorded value, as the engine's formulas see it."""
    out: dict[str, Decimal] = {}
    for s in batch.get("steps", []):
        for r in s.get("records", []):
            if r["kind"] == "value" and r.get("superseded_by") is None and r["attempt"] == s["attempt"] \
                    and r.get("value") is not None:
                out[s["id"]] = Decimal(r["value"])
    return out


def dispensed_lots(batch: dict[str, Any], item: str, by_step: str | None = None) -> list[str]:
    lots = []
    for s in batch.get("steps", []):
        if s["kind"] != "weigh" or (by_step and s["id"] != by_step):
            continue
        for r in s.get("records", []):
            if r["kind"] == "container" and r.get("superseded_by") is None and r["data"].get("item") == item:
                if r["data"]["lot"] not in lots:
                    lots.append(r["data"]["lot"])
    return lots


class GatewayScales:
    """Simulated scales behind the gateway, driven through the public API: set the load on
    the pan, then wait for the device to show it, stable, in a reading newer than the request."""

    def __init__(self, client: Client, *, timeout_s: float = 15.0, poll_s: float = 0.05) -> None:
        self.client, self.timeout_s, self.poll_s = client, timeout_s, poll_s

    def set_load(self, device_id: str, load: Decimal, unit: str) -> None:
        self.client.post(f"{API}/simulation/devices/{device_id}", {"load": str(load), "unit": unit, "unstable": False})

    def latest(self, device_id: str) -> dict[str, Any] | None:
        return self.client.get(f"{API}/devices/{device_id}").get("reading")

    def weigh(self, device_id: str, load: Decimal, unit: str) -> dict[str, Any]:
        """Put ``load`` on the scale; the first stable reading of it newer than the request."""
        asked = datetime.now(UTC)
        self.set_load(device_id, load, unit)
        deadline = time.monotonic() + self.timeout_s
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.latest(device_id)
            if last and last.get("stable") and last.get("status") == "ok" and last.get("value") is not None:
                at = parse_at(last.get("at"))
                shown = Decimal(last["value"])
                expected = load if last.get("unit") == unit else convert(load, unit, last["unit"])
                if at is not None and at >= asked and shown == quantize(expected, _places_of(last["value"]),
                                                                        ROUND_DOWN):
                    return last
            time.sleep(self.poll_s)
        raise SimulationStopped(f"Scale {device_id} did not show a stable {to_text(load)} {unit} within "
                                f"{self.timeout_s:.0f} s (last reading: {last}).")


def _places_of(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


@dataclass
class StepDone:
    step: str
    kind: str
    title: str
    by: str
    summary: str
    ms: float


@dataclass
class RunResult:
    batch_id: str
    status: str
    steps: list[StepDone] = field(default_factory=list)
    dispositions: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ----------------------------------------------------------------------- the operator


class SimOperator:
    """Drives one batch to completion through the HTTP API (see the module docstring)."""

    def __init__(self, base_url: str, terminal: str, operator: Login, *, verifier: Login | None = None,
                 qa: Login | None = None, qa_terminal: str | None = None, time_factor: float = 1.0,
                 timers: str = "wait", echo: Callable[[str], None] | None = print, seed: int = 0,
                 scales: Callable[[Client], Any] | None = None, release: bool = False) -> None:
        if timers not in ("wait", "skip"):
            raise ValueError("timers is 'wait' or 'skip'")
        self.base_url, self.terminal = base_url, terminal
        self.operator_login, self.verifier_login, self.qa_login = operator, verifier, qa
        self.qa_terminal = qa_terminal or terminal
        self.time_factor = float(time_factor) if time_factor and time_factor > 0 else 1.0
        self.timers = timers
        self.echo = echo or (lambda _line: None)
        self.rng = random.Random(seed)
        self._scales_factory = scales or GatewayScales
        self.scales: Any = None
        self.release = release
        self.operator: Client | None = None
        self.verifier: Client | None = None
        self.qa: Client | None = None
        self.recipe: ControlRecipe | None = None
        self.chosen_lots: dict[str, str] = {}
        # server clock anchor: (server time, local monotonic time when it was stamped)
        self._anchor: tuple[datetime, float] | None = None
        self._last_write = time.monotonic()
        self._timers: dict[str, datetime] = {}  # running timer step -> when it may be stopped
        # running timer step -> (server start stamp, local monotonic time its answer arrived)
        self._timer_started: dict[str, tuple[datetime, float]] = {}
        # longest step of each kind so far (real seconds): how long a step done while a timer runs may take
        self._step_s: dict[str, float] = {}

    # -- clock
    def _observe(self, batch: dict[str, Any]) -> None:
        stamps = [parse_at(batch.get("created_at"))]
        for s in batch.get("steps", []):
            stamps += [parse_at(s.get("started_at")), parse_at(s.get("completed_at"))]
        newest = max((s for s in stamps if s is not None), default=None)
        if newest is not None and (self._anchor is None or newest > self._anchor[0]):
            self._anchor = (newest, self._last_write)

    def server_now(self) -> datetime:
        """The server clock, estimated from the latest stamp it gave (runs ``time_factor`` fast)."""
        if self._anchor is None:
            return datetime.now(UTC)
        at, mono = self._anchor
        return at + timedelta(seconds=(time.monotonic() - mono) * self.time_factor)

    # -- sessions
    def _log_in(self) -> None:
        self.operator = login(self.base_url, self.terminal, self.operator_login)
        self.echo(f"logged in: {self.operator.user_id} ({', '.join(sorted(self.operator.roles))}) on "
                  f"{self.terminal.split(':', 1)[0]}")

    def _verifier(self) -> Client | None:
        if self.verifier is None and self.verifier_login is not None:
            self.verifier = login(self.base_url, self.terminal, self.verifier_login)
            self.echo(f"second session: {self.verifier.user_id} ({', '.join(sorted(self.verifier.roles))})")
        return self.verifier

    def _qa(self) -> Client | None:
        if self.qa is None and self.qa_login is not None:
            self.qa = login(self.base_url, self.qa_terminal, self.qa_login)
            self.echo(f"QA session: {self.qa.user_id} on {self.qa_terminal.split(':', 1)[0]}")
        return self.qa

    # -- the run
    def run(self, work_order_id: str, *, max_steps: int = 10_000) -> RunResult:
        started = time.monotonic()
        try:
            self._log_in()
            assert self.operator is not None
            self.scales = self._scales_factory(self.operator)
            wo = self.operator.get(f"{API}/work-orders/{work_order_id}")
            batch = self._start_or_resume(wo)
            result = RunResult(batch["id"], batch["status"])
            for _ in range(max_steps):
                batch = self.operator.batch(batch["id"])
                self._observe(batch)
                result.status = batch["status"]
                if batch["status"] != "in_progress":
                    break
                open_steps = [s for s in batch["steps"] if s["state"] in ("ready", "in_progress")]
                if not open_steps:
                    blocked = [s["id"] for s in batch["steps"] if s["state"] == "blocked"]
                    if not blocked:
                        raise SimulationStopped(f"Batch {batch['id']} has no step that can be done.")
                    result.dispositions += self._resolve_deviations(batch, blocked)
                    continue
                step = self._next(batch, open_steps)
                done = self.do_step(batch, step)
                result.steps.append(done)
                self._timers.pop(step["id"], None)
                if step_kinds.kind_of(done.kind).sim_timed:
                    self._step_s[done.kind] = max(self._step_s.get(done.kind, 0.0), done.ms / 1000)
            else:
                raise SimulationStopped(f"Gave up after {max_steps} steps.")
            if result.status == "completed" and self.release:
                result.status = self.release_batch(batch["id"])
        except ApiError as exc:
            raise SimulationStopped(f"The MES refused {exc.method} {exc.url} ({exc.status}): {exc.detail}",
                                    exc.problem) from None
        except requests.RequestException as exc:
            raise SimulationStopped(f"The MES at {self.base_url} cannot be reached: {exc}") from None
        result.seconds = round(time.monotonic() - started, 2)
        if result.status == "completed":
            self.echo(f"batch {result.batch_id} completed: {len(result.steps)} steps in {result.seconds} s")
        else:
            self.echo(f"batch {result.batch_id} is {result.status}")
        return result

    def _next(self, batch: dict[str, Any], open_steps: list[dict[str, Any]]) -> dict[str, Any]:
        """The next step to do. Ready timers are started at once; a timer that is due comes
        first; while timers run, the steps of parallel operations are done as long as one can
        be done before the first timer is due; otherwise the first timer (``_run_timer``
        waits for it, without reloading the batch, so it stops close to its target)."""
        assert self.recipe is not None and self.operator is not None
        others: list[dict[str, Any]] = []
        timers: list[tuple[datetime, dict[str, Any]]] = []
        for step in open_steps:
            spec = self.recipe.step(step["id"])
            wait = step_kinds.kind_of(spec).sim_wait(spec)
            if not (self.timers == "wait" and wait is not None):
                others.append(step)
                continue
            due = self._timers.get(step["id"])
            if due is None:
                started = parse_at(step.get("started_at")) if step["state"] == "in_progress" else None
                if started is None:
                    self._last_write = time.monotonic()
                    out = self.operator.start_step(batch["id"], step["id"], step["version"])
                    started = parse_at(out["started_at"])
                    assert started is not None
                    self._timer_started[step["id"]] = (started, time.monotonic())
                    if self._anchor is None or started >= self._anchor[0]:
                        self._anchor = (started, self._last_write)
                    step = {**step, "state": "in_progress", "version": out["version"], "started_at": out["started_at"]}
                    self.echo(f"      timer {spec.id} started ({spec.title})")
                due = started + wait
                self._timers[step["id"]] = due
            timers.append((due, step))
        now = self.server_now()
        if timers:
            due, step = min(timers, key=lambda t: t[0])
            other = self.recipe.step(others[0]["id"]).kind if others else ""
            takes = timedelta(seconds=1.5 * self._step_s.get(other, 1.0) * self.time_factor)
            if due <= now or not others or due - now < takes:
                return step
        return others[0]

    def release_batch(self, batch_id: str) -> str:
        """QA finishes a completed batch: open deviations dispositioned, exceptions and audit trail reviewed,
        batch reviewed and released, each e-signed; returns the batch status."""
        qa = self._qa()
        if qa is None or self.qa_login is None:
            raise SimulationStopped("Releasing needs QA credentials (--qa-user / --qa-password).")
        qa.acknowledge_esig()
        sign = self.qa_login.sign_fields()
        batch = qa.batch(batch_id)
        for d in batch.get("deviations", []):
            if d["status"] == DeviationStatus.OPEN.value:
                qa.post(f"{API}/deviations/{d['id']}/disposition",
                        {"disposition": "use_as_is", "reason": "Simulated run: assessed, no impact (simulation).",
                         **sign})
                self.echo(f"  QA {qa.user_id} dispositioned {d['id']} use_as_is")
        for e in qa.get(f"{API}/batches/{batch['id']}/exceptions")["exceptions"]:
            if e.get("reviewed") is None:  # review by exception: each one marked reviewed
                qa.post(f"{API}/batches/{batch['id']}/exceptions/reviewed",
                        {"key": e["key"], "note": "Simulated run: exception reviewed."})
        qa.post(f"{API}/audit/reviews", {"batch": batch["id"], "comment": "Simulated run: audit trail reviewed.",
                                         **sign})
        qa.post(f"{API}/batches/{batch['id']}/review", {"comment": "Simulated run: record reviewed.", **sign})
        out = qa.post(f"{API}/batches/{batch['id']}/release", {"decision": "released",
                                                              "comment": "Simulated run: released.", **sign})
        self.echo(f"batch {batch['id']} reviewed and {out['status']} by QA {qa.user_id}")
        return str(out["status"])

    def _start_or_resume(self, wo: dict[str, Any]) -> dict[str, Any]:
        assert self.operator is not None
        if wo["status"] == "in_progress" and wo.get("batches"):
            batch = self.operator.batch(wo["batches"][-1])
            self.echo(f"resuming batch {batch['id']} of work order {wo['id']}")
        else:
            self._last_write = time.monotonic()
            batch = self.operator.post(f"{API}/work-orders/{wo['id']}/batches", {})
            self.echo(f"started batch {batch['id']} for work order {wo['id']} "
                      f"({batch['batch_size']['value']} {batch['batch_size']['uom']} {wo['item']})")
        self._observe(batch)
        rv = self.operator.get(f"{API}/recipes/{batch['recipe_version']}")
        master = from_dict(rv["recipe"], source=rv["id"])
        self.recipe = scale(master, Decimal(batch["batch_size"]["value"]), batch["batch_size"]["uom"])
        return batch

    def _resolve_deviations(self, batch: dict[str, Any], blocked: list[str]) -> list[str]:
        devs = [d for d in batch.get("deviations", []) if d.get("blocking")]
        qa = self._qa()
        if qa is None:
            text = "; ".join(f"{d['id']} ({d['severity']}): {d['description']}" for d in devs) or "unknown"
            raise SimulationStopped(f"Steps {', '.join(blocked[:5])} are blocked by open deviation(s) {text}; "
                                    "QA must disposition them (give --qa-user / --qa-password to let the "
                                    "simulation do it).")
        qa.acknowledge_esig()
        done = []
        for d in devs:
            assert self.qa_login is not None
            qa.post(f"{API}/deviations/{d['id']}/disposition",
                    {"disposition": "use_as_is", "reason": "Simulated run: assessed, no impact (simulation).",
                     **self.qa_login.sign_fields()})
            self.echo(f"  QA {qa.user_id} dispositioned {d['id']} use_as_is ({d['description']})")
            done.append(d["id"])
        return done

    # -- one step
    def do_step(self, batch: dict[str, Any], step: dict[str, Any]) -> StepDone:
        assert self.recipe is not None and self.operator is not None
        spec = self.recipe.step(step["id"])
        t0 = time.perf_counter()
        client = self.operator
        version = step["version"]
        kind = step_kinds.kind_of(spec)
        wait = kind.sim_wait(spec)
        if wait is not None:  # a timer: started, then waited for in real time
            version, summary_extra = self._run_timer(batch["id"], step, spec, wait)
        else:
            summary_extra = ""
        summary = kind.simulate_step(self, batch, step, spec)  # e.g. weighing, container by container
        if summary is None:
            payload, client, summary = self.payload(batch, step, spec)
            self._last_write = time.monotonic()
            out = client.complete_step(batch["id"], step["id"], version, payload)
            summary = (summary_extra + summary).strip()
            summary += self._outcome(out)
        done = StepDone(step["id"], spec.kind, spec.title, client.user_id, summary,
                        round((time.perf_counter() - t0) * 1000, 1))
        self.echo(f"{step['seq'] + 1:>3} {step['id']:<24} {spec.kind:<15} {client.user_id:<6} {summary}")
        return done

    def outcome(self, out: dict[str, Any]) -> str:
        """What the server said beyond the record: deviations raised, the batch's new state."""
        return self._outcome(out)

    def _outcome(self, out: dict[str, Any]) -> str:
        extra = ""
        if out.get("deviations"):
            extra += f"  deviation(s) {', '.join(out['deviations'])}"
        if out.get("batch_state"):
            extra += f"  batch {out['batch_state']}"
        return extra

    def _run_timer(self, batch_id: str, step: dict[str, Any], spec: rm.Step, target: timedelta) -> tuple[int, str]:
        assert self.operator is not None
        version = step["version"]
        if step["state"] != "in_progress":
            self._last_write = time.monotonic()
            out = self.operator.start_step(batch_id, step["id"], version)
            version = out["version"]
            started = parse_at(out["started_at"])
            assert started is not None
            self._timer_started[step["id"]] = (started, time.monotonic())
            self._anchor = (started, self._last_write) if self._anchor is None or started >= self._anchor[0] \
                else self._anchor
        else:
            started = parse_at(step["started_at"])
            assert started is not None
        if self.timers == "skip":
            return version, "timer not waited for; "
        due = started + target
        wait = (due - self.server_now()).total_seconds() / self.time_factor
        anchor = self._timer_started.get(step["id"])
        if anchor is not None and anchor[0] == started:
            # measured from when the start's answer arrived: the server stamped the start before
            # that, so this never stops the timer early (the estimate above can, by the request's
            # latency times time_factor)
            wait = max(wait, target.total_seconds() / self.time_factor - (time.monotonic() - anchor[1]))
        if wait > 0:
            if wait > 5:
                self.echo(f"      waiting {wait:.0f} s for timer {spec.id} ({spec.title})")
            time.sleep(wait)
        return version, ""

    def payload(self, batch: dict[str, Any], step: dict[str, Any],
                spec: rm.Step) -> tuple[dict[str, Any], Client, str]:
        """(payload, session that completes it, one-line summary): what the step's kind sends."""
        assert self.operator is not None
        try:
            return step_kinds.kind_of(spec).simulate(self, batch, step, spec)
        except NotImplementedError:
            raise SimulationStopped(f"Step {spec.id}: the simulation does not know step kind {spec.kind}.") from None

    # -- weighing
    def _lots(self, item: str) -> list[dict[str, Any]]:
        assert self.operator is not None
        out, after = [], None
        while True:
            params = {"item": item, "status": "released", "limit": "500"}
            if after:
                params["after"] = after
            page = self.operator.get(f"{API}/lots", params=params)
            out += page["lots"]
            after = page.get("next_after")
            if not after:
                return out

    def _pick_lot(self, item: str, need: Decimal | None, unit: str | None) -> tuple[str, list[dict[str, Any]]]:
        """(lot id, its containers) of a usable released lot; with ``need``, one holding enough in total."""
        assert self.operator is not None
        preferred = self.chosen_lots.get(item)
        lots = self._lots(item)
        lots.sort(key=lambda lot: (lot["id"] != preferred, lot.get("expiry_date") or "9999", lot["id"]))
        reasons = []
        for lot in lots:
            detail = self.operator.get(f"{API}/lots/{lot['id']}", params={"item": item})["lot"]
            usable = detail.get("usability", {})
            if not usable.get("ok"):
                reasons.append(f"{lot['id']}: {usable.get('reason')}")
                continue
            containers = detail.get("containers", [])
            if need is not None and unit is not None:
                total = sum((_in_unit(c["remaining"], unit) for c in containers), Decimal(0))
                if total < need:
                    reasons.append(f"{lot['id']}: only {to_text(total)} {unit} left")
                    continue
            return lot["id"], containers
        why = "; ".join(reasons) if reasons else "no released lot"
        raise SimulationStopped(f"No usable lot of {item} with enough stock ({why}).")

    def _pick_equipment(self, spec: rm.EquipmentCheckStep) -> str:
        """Registered equipment of the step's class that is free now (the server checks it again)."""
        assert self.operator is not None
        rows = self.operator.get(f"{API}/equipment", params={"class": spec.equipment_class})["equipment"]
        states = ",".join(spec.required_states)
        why = []
        for eq in sorted(rows, key=lambda e: (e["status"] not in ("clean", "available"), e["id"])):
            check = self.operator.get(f"{API}/equipment/{eq['id']}/check",
                                      params={"states": states, "class": spec.equipment_class})["check"]
            if check["ok"]:
                return str(eq["id"])
            why.append(check["reason"])
        raise SimulationStopped(f"Step {spec.id}: no {spec.equipment_class} can be used now"
                                + (f" ({'; '.join(why)})" if why else " (none is registered)") + ".")



def _in_unit(quantity: dict[str, str], unit: str) -> Decimal:
    value = Decimal(quantity["value"])
    return value if quantity["uom"] == unit else convert(value, quantity["uom"], unit)


def run_operator(base_url: str, work_order_id: str, *, terminal: str, badge: str, pin: str,
                 verifier_badge: str | None = None, verifier_pin: str | None = None, qa_user: str | None = None,
                 qa_password: str | None = None, qa_terminal: str | None = None, time_factor: float = 1.0,
                 timers: str = "wait", echo: Callable[[str], None] | None = print,
                 release: bool = False) -> RunResult:
    """Execute the batch of ``work_order_id`` as the badge holder (the CLI's entry point)."""
    verifier = Login(badge=verifier_badge, pin=verifier_pin) if verifier_badge else None
    qa = Login(user_id=qa_user, password=qa_password) if qa_user else None
    sim = SimOperator(base_url, terminal, Login(badge=badge, pin=pin), verifier=verifier, qa=qa,
                      qa_terminal=qa_terminal, time_factor=time_factor, timers=timers, echo=echo, release=release)
    return sim.run(work_order_id)
