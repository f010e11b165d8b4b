"""The thin web shell: who is calling, what they may do, and how refusals look.

Every view is declared with :func:`endpoint`, which names its :class:`Permission` (or
``public=True`` with a reason) and whether a registered terminal is required. The
decorator authenticates (API token or session cookie), checks the permission matrix and
the terminal, and checks CSRF on cookie-authenticated writes. The permission-matrix test
walks ``app.url_map`` and fails on any view that declares nothing.

Errors become RFC 9457 ``application/problem+json``; a stack trace never reaches a client.
"""

from __future__ import annotations

import functools
import hmac
import json
import math
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import jsonschema
from flask import Flask, Response, current_app, g, jsonify, request, session
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from mes.audit.log import Actor
from mes.db import db, in_read_transaction
from mes.errors import (
    AuthenticationFailed,
    ContentTooLarge,
    Forbidden,
    MESError,
    RateLimited,
    SessionExpired,
    TerminalRequired,
    ValidationFailed,
)
from mes.plant_time import plant_zone
from mes.users import operations as users
from mes.users.models import ApiToken, Terminal, User, UserSession
from mes.users.permissions import Permission, allowed
from mes.users.ratelimit import count_attempt, limiter_for
from mes.users.session_store import ServerSession, ServerSessionInterface
from mes.validation import BODY_MAX, BODY_STRING_MAX, FORM_MAX, JSON_DEPTH_MAX, hidden_character

F = TypeVar("F", bound=Callable[..., Any])
PROBLEM_BASE = "https://open-mes.dev/problems/"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Access:
    """What a view requires; read by the decorator, the OpenAPI builder and the tests."""

    permission: Permission | None
    public_reason: str | None = None
    terminal_required: bool = False
    summary: str = ""
    request_schema: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()
    #: the query parameters the view reads: name -> {"schema": ..., "required": bool, "description": ...}
    query: dict[str, dict[str, Any]] | None = None
    #: the media type of a successful answer (the OpenAPI description states it)
    media_type: str = "application/json"


@dataclass
class Principal:
    """The authenticated caller of this request.

    Built from the ids, name and roles that authentication read (one Core query for a
    session, see :func:`mes.users.operations.resolve_session`); the ORM rows of the user,
    the session and the terminal load on first use, so a request that only needs the
    actor (a step completion) builds none of them."""

    user_id: str
    full_name: str
    roles: set[str] = field(default_factory=set)
    session_id: str | None = None
    token: ApiToken | None = None
    terminal_id: str | None = None
    _user: User | None = field(default=None, repr=False)
    _session: UserSession | None = field(default=None, repr=False)

    @property
    def user(self) -> User:
        if self._user is None:
            self._user = db.session.get(User, self.user_id)
        return self._user  # type: ignore[return-value]

    @property
    def session(self) -> UserSession | None:
        """The log-in's row, or None for an API token."""
        if self._session is None and self.session_id is not None:
            self._session = db.session.get(UserSession, self.session_id)
        return self._session

    @property
    def terminal(self) -> Terminal | None:
        return current_terminal() if self.terminal_id is not None else None

    def actor(self, permission: Permission | None = None) -> Actor:
        """The Actor for audit entries, acting in the role that grants ``permission``."""
        names = sorted(self.roles)
        role = None
        if permission is not None:
            from mes.users.permissions import MATRIX

            role = next((r for r in names if r in {x.value for x in MATRIX[permission]}), None)
        # a token's identity is always recorded; no terminal header overrides it
        terminal = f"api:{self.token.id}" if self.token is not None else self.terminal_id
        return Actor(id=self.user_id, name=self.full_name, role=role or (names[0] if names else "none"),
                     terminal=terminal)


def problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> Response:
    """An RFC 9457 problem+json response."""
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail,
            "instance": request.path if request else None}
    if getattr(g, "request_id", None):
        body["request_id"] = g.request_id
    body.update({k: v for k, v in extra.items() if v is not None})
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


# ------------------------------------------------------------------- terminals


def _terminal_credentials() -> tuple[str, str] | None:
    """The terminal id and key the request presents (header, else the enrolment cookie)."""
    header = request.headers.get("X-MES-Terminal")
    if header and ":" in header:
        tid, _, key = header.partition(":")
        return tid.strip(), key.strip()
    if session.get("terminal"):
        tid, key = session["terminal"]
        return tid, key
    return None


def current_terminal() -> Terminal | None:
    """The registered terminal this request comes from (header or enrolment cookie)."""
    if "mes_terminal" in g:
        return g.mes_terminal
    if "mes_terminal_id" in g:  # authenticated with the session (see _principal): just load it
        terminal = db.session.get(Terminal, g.mes_terminal_id) if g.mes_terminal_id is not None else None
    else:
        creds = _terminal_credentials()
        terminal = users.authenticate_terminal(*creds) if creds else None
        g.mes_terminal_id = terminal.id if terminal else None
    g.mes_terminal = terminal
    return terminal


def current_terminal_id() -> str | None:
    """The id of :func:`current_terminal`, without loading its row when already known."""
    if "mes_terminal_id" in g:
        return g.mes_terminal_id
    terminal = current_terminal()
    return terminal.id if terminal else None


# ------------------------------------------------------------------ principal


#: The share of its idle time-out a session's idle clock may lag: the last activity is stored
#: (a write of the session row, a transaction of its own after the response is built) at most
#: this often, so a session may end this much early, never late. Every 5 s made every fifth
#: paced kiosk tap carry that write (execution bench).
LAST_ACTIVITY_LAG = 0.05
#: ... and never more than this many seconds.
LAST_ACTIVITY_MAX_LAG = 30.0


def _principal() -> Principal:
    """Authenticate the caller: bearer token first, then the session cookie."""
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        token = users.authenticate_token(auth[7:].strip())
        user = token.user
        # a token is its own origin: a terminal header beside it is ignored, never recorded
        # in its place, and never satisfies a terminal-only action (tokens are not terminals)
        g.mes_terminal_id = None
        g.mes_terminal = None
        return Principal(user_id=user.id, full_name=user.full_name, roles=user.role_names(), token=token,
                         terminal_id=None, _user=user)
    sid = session.get("sid")
    if not sid:
        raise AuthenticationFailed("Log in first.")
    last = session.get("last")
    last_dt = datetime.fromtimestamp(last, UTC) if isinstance(last, (int, float)) else None
    try:
        live = users.resolve_session(sid, last_dt)
    except SessionExpired:
        session.pop("sid", None)
        raise
    if live.terminal_id is not None:
        # a session opened on a terminal is used only from that terminal, checked against
        # the row the session query joined (no second query)
        creds = _terminal_credentials()
        if creds is None or not live.terminal_matches(*creds):
            raise SessionExpired("This session belongs to another terminal; log in again.")
        g.mes_terminal_id = live.terminal_id
        terminal_id: str | None = live.terminal_id
    else:
        terminal_id = current_terminal_id()
    now = time.time()
    lag = min(LAST_ACTIVITY_MAX_LAG, LAST_ACTIVITY_LAG * live.idle.total_seconds())
    if last_dt is None or now - last > lag:  # kept on the server: written now and then
        session["last"] = now
    return Principal(user_id=live.user_id, full_name=live.full_name, roles=set(live.roles), session_id=live.id,
                     terminal_id=terminal_id)


def caller_may(permission: Permission) -> bool:
    """Whether this request's caller, if any, holds ``permission`` (for a public view that
    shows more to those who may see it); an anonymous or failed caller simply may not."""
    try:
        who = _principal()
    except MESError:
        db.session.rollback()
        return False
    return allowed(who.roles, permission) and (who.token is None or permission.value in who.token.scopes)


def principal() -> Principal:
    """The caller of the current request (set by :func:`endpoint`)."""
    return g.principal


def _check_csrf() -> None:
    expected = session.get("csrf")
    given = request.headers.get("X-CSRF-Token") or (request.form.get("csrf_token") if request.form else None)
    if not expected or not given or not hmac.compare_digest(str(expected), str(given)):
        raise Forbidden("The CSRF token is missing or wrong; reload the page and try again.")


def csrf_token() -> str:
    """The session's CSRF token (created on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def establish_session(secret: str) -> str:
    """Start the browser session after a log-in: fresh cookie, keep the terminal enrolment."""
    enrolled = session.get("terminal")
    session.clear()  # a fresh session at log-in, under a new id: no session fixation
    if isinstance(session, ServerSession):
        session.rotate()
    if enrolled:
        session["terminal"] = enrolled
    session.permanent = True
    session["sid"] = secret
    session["last"] = time.time()
    return csrf_token()


#: the years a date or time given by a user may name: none of the plant's records lies outside
YEARS = (1970, 2199)


def parse_utc(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 date-time with zone from user input, or a 422 naming the field."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(f"{field} must be an ISO 8601 date-time with time zone.", field=field) from None
    if parsed.tzinfo is None:
        raise ValidationFailed(f"{field} needs a time zone (e.g. 2027-01-01T00:00:00Z).", field=field)
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not YEARS[0] <= utc.year <= YEARS[1]:
        raise ValidationFailed(f"{field} must lie between the years {YEARS[0]} and {YEARS[1]}.", field=field)
    return parsed


def parse_date(value: str | None, field: str) -> date | None:
    """A calendar date (YYYY-MM-DD) from user input, or a 422 naming the field."""
    if value is None:
        return None
    try:
        parsed = date.fromisoformat(value)
    except (ValueError, TypeError):
        raise ValidationFailed(f"{field} is not a calendar date (YYYY-MM-DD).", field=field) from None
    if not YEARS[0] <= parsed.year <= YEARS[1]:
        raise ValidationFailed(f"{field} must lie between the years {YEARS[0]} and {YEARS[1]}.", field=field)
    return parsed


def query_int(name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high], or a 422 naming it (never an
    overflow in the database: ``limit=0``, ``limit=-1`` and 30-digit numbers are refused)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if len(raw) <= 20 else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValidationFailed(f"{name} must be a whole number from {low} to {high}.", field=name)
    return value


def created(payload: dict[str, Any]) -> Response:
    """A 201 JSON response."""
    response = jsonify(payload)
    response.status_code = 201
    return response


def local_time(value: datetime | str | None) -> str:
    """A UTC time shown in the plant's zone with the zone named (Part 11 §11.50)."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    local = value.astimezone(plant_zone())
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()} (UTC{offset[:3]}:{offset[3:]})"


def endpoint(
    permission: Permission | None = None,
    *,
    public: str | None = None,
    terminal: bool = False,
    schema: dict[str, Any] | None = None,
    tags: tuple[str, ...] = (),
    query: dict[str, dict[str, Any]] | None = None,
    media_type: str = "application/json",
    csrf: bool = True,
) -> Callable[[F], F]:
    """Declare and enforce a view's access. ``public`` must say why no login is needed;
    ``query`` declares the query parameters the view reads, for the OpenAPI description.
    ``csrf=False`` only for a public view that authenticates each request by its own
    signature and never by a cookie (the inbound webhook)."""
    if not csrf and public is None:
        raise ValueError("only a public, signature-checked view may skip the CSRF check")
    if (permission is None) == (public is None):
        raise ValueError("an endpoint needs exactly one of permission= or public=")

    def decorate(view: F) -> F:
        access = Access(permission, public, terminal, (view.__doc__ or "").strip().split("\n")[0], schema, tags, query,
                        media_type)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if access.permission is not None:
                who = _principal()
                g.principal = who
                if who.session_id is not None and request.method in UNSAFE_METHODS:
                    _check_csrf()
                if not allowed(who.roles, access.permission):
                    raise Forbidden(f"Your role may not do this ({access.permission.value}).")
                if who.token is not None and access.permission.value not in who.token.scopes:
                    raise Forbidden(f"The API token lacks the scope {access.permission.value}.")
            elif csrf and request.method in UNSAFE_METHODS and not request.headers.get("Authorization"):
                _check_csrf()
            if access.terminal_required and current_terminal_id() is None:
                raise TerminalRequired("This action must come from a registered, active terminal.")
            if access.request_schema is not None:
                g.body = validated_body(access.request_schema)
            return view(*args, **kwargs)

        wrapper._mes_access = access  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def access_of(view: Callable[..., Any]) -> Access | None:
    return getattr(view, "_mes_access", None)


_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.Draft202012Validator]] = {}


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """One compiled validator per request schema (building one costs more than checking a body)."""
    found = _VALIDATORS.get(id(schema))
    if found is None or found[0] is not schema:
        found = (schema, jsonschema.Draft202012Validator(schema))
        _VALIDATORS[id(schema)] = found
    return found[1]


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"the member {key!r} is given twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"the number {text[:24]}{'...' if len(text) > 24 else ''} is beyond 64 bits")
    return value


def strict_json(raw: bytes | str) -> Any:
    """Parse a request body as strict JSON: a member given twice, NaN/Infinity and integers
    beyond 64 bits are refused (ValueError), never 'last one wins' or an overflow later."""
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def _body_limits(schema: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """The body size limit and the fields whose schema allows strings longer than BODY_STRING_MAX."""
    big = {name: int(spec["maxLength"]) for name, spec in (schema.get("properties") or {}).items()
           if isinstance(spec, dict) and int(spec.get("maxLength", 0)) > BODY_STRING_MAX}
    return BODY_MAX + sum(big.values()) * 4, big


def _check_values(value: Any, path: str, depth: int, big: dict[str, int]) -> None:
    """Nesting depth, string sizes and hidden characters of every value in a body."""
    if depth > JSON_DEPTH_MAX:
        raise ValidationFailed(f"{path or 'body'}: nested deeper than {JSON_DEPTH_MAX} levels.", field=path or "body")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, path, depth + 1, big)
            _check_values(item, f"{path}/{key}" if path else str(key), depth + 1, big)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(item, f"{path}/{i}", depth + 1, big)
    elif isinstance(value, str):
        limit = big.get(path, BODY_STRING_MAX)
        if len(value) > limit:
            raise ValidationFailed(f"{path or 'body'}: at most {limit} characters.", field=path or "body")
        bad = hidden_character(value)
        if bad is not None:
            raise ValidationFailed(f"{path or 'body'}: contains a control or direction-override character ({bad}).",
                                   field=path or "body")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValidationFailed(f"{path or 'body'}: the number is out of range.", field=path or "body")


def validated_body(schema: dict[str, Any]) -> dict[str, Any]:
    """The request's JSON object checked against ``schema``, or a 422 naming the first problem.

    Every body is also held to the documented limits (:mod:`mes.validation`): at most
    ``BODY_MAX`` bytes (413), ``JSON_DEPTH_MAX`` levels, ``BODY_STRING_MAX`` characters per
    string unless the field's schema allows more, no member twice, no NaN, no integer beyond
    64 bits, no control or direction-override character."""
    if not request.is_json:
        raise ValidationFailed("The request body must be a JSON object (Content-Type: application/json).")
    size_limit, big = _body_limits(schema)
    if (request.content_length or 0) > size_limit:
        raise RequestEntityTooLarge(f"The request body is larger than {size_limit} bytes.")
    raw = request.get_data(cache=True)
    if len(raw) > size_limit:
        raise RequestEntityTooLarge(f"The request body is larger than {size_limit} bytes.")
    try:
        data = strict_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise ValidationFailed("The request body must be a JSON object (Content-Type: application/json).")
    _check_values(data, "", 0, big)
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "body"
        raise ValidationFailed(f"{where}: {error.message}", field=where)
    return data


def obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed JSON Schema object (unknown members are refused, not silently dropped)."""
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STR = {"type": "string", "minLength": 1, "maxLength": 500}


# ---------------------------------------------------------------- rate limiting


def limit_login() -> None:
    """Count a credential attempt from this terminal (else the client address, as the trusted
    proxies report it); 429 past ``MES_LOGIN_RATE_PER_MINUTE``. Keyed per terminal, kiosks
    behind one nginx do not share one bucket; failures per account are limited in the
    service (:mod:`mes.users.ratelimit`)."""
    count_attempt(_login_key(), current_app.config["MES_LOGIN_RATE_PER_MINUTE"], "log-in attempts from here")


def _login_key() -> str:
    terminal = current_terminal_id()  # only a registered terminal's own key: a made-up id is no escape
    return f"terminal:{terminal}" if terminal else f"address:{request.remote_addr or '?'}"


@contextmanager
def checking_credentials() -> Iterator[None]:
    """Around a credential check that opens no session (the kiosk naming a signer before a
    signature): refused while this terminal is over ``MES_LOGIN_RATE_PER_MINUTE``, and only a
    failed check counts toward it, so a shift's signatures never use up the log-ins' rate."""
    key, rate = _login_key(), current_app.config["MES_LOGIN_RATE_PER_MINUTE"]
    count_attempt(key, rate, "log-in attempts from here", count=False)
    try:
        yield
    except AuthenticationFailed:
        current_app.extensions["mes_login_limiter"].hit(key, rate)
        raise


# ---------------------------------------------------------------------- wiring

HTML_PREFIXES = ("/qa/", "/kiosk/")
ERROR_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<link rel="stylesheet" href="/static/mes.css"></head><body><main>
<h1>{{ title }}</h1><p role="alert">{{ detail }}</p><p><a href="{{ back }}">Back</a></p></main></body></html>"""


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
FORM_TOO_LARGE = f"The form is larger than {FORM_MAX // 1024} KiB; nothing was recorded."


def check_form_size(mimetype: str, content_length: int | None) -> None:
    """Refuse a form body over :data:`~mes.validation.FORM_MAX` bytes before it is read (413);
    a body streamed without a length is held to the same limit by ``MAX_FORM_MEMORY_SIZE``."""
    if mimetype in FORM_TYPES and (content_length or 0) > FORM_MAX:
        raise ContentTooLarge(FORM_TOO_LARGE)


def html_error(status: int, detail: str) -> Response:
    """A plain sentence for people at a screen; a log-in page when the session is gone."""
    from urllib.parse import quote

    from flask import redirect, render_template_string

    if status == 401 and request.path.startswith("/qa/"):
        return redirect("/qa/login?next=" + quote(request.full_path.rstrip("?")))  # type: ignore[return-value]
    title = "Not permitted" if status == 403 else "Not found" if status == 404 else "That did not work"
    body = render_template_string(ERROR_PAGE, title=title, detail=detail, back=request.referrer or "/qa/audit")
    return Response(body, status=status, mimetype="text/html")


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


def leave_session_cookie_alone() -> None:
    """This response must not (re-)set the session cookie (heartbeats, polls)."""
    g.mes_leave_session_cookie = True


def init_app(app: Flask) -> None:
    """Error handlers, security headers, the session cookie and the log-in rate limiter."""
    app.extensions["mes_login_limiter"] = limiter_for(app.config.get("MES_REDIS_URL") or None)
    hops = int(app.config.get("MES_PROXY_HOPS", 0) or 0)
    if hops:  # behind nginx: the client address is the one the trusted proxies saw
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    app.session_interface = ServerSessionInterface()

    @app.before_request
    def _fresh_request_state() -> None:
        # g lives in the app context, which tests (and CLI code) may keep across requests.
        for key in ("mes_terminal", "mes_terminal_id", "principal", "body"):
            g.pop(key, None)
        if request.method in ("GET", "HEAD") and db.engine.dialect.name == "sqlite" and not db.session().in_transaction():
            # Reads must not queue behind (or hold up) writers on SQLite's single write lock.
            db.session.connection(execution_options={"mes_read_only": True})
            g.mes_read_transaction = True

    @app.teardown_request
    def _end_the_read(_exc: BaseException | None) -> None:
        # The read ends with the request, also where the app context outlives it (tests, CLI).
        if g.pop("mes_read_transaction", False) and in_read_transaction(db.session):
            db.session.rollback()

    @app.before_request
    def _form_size_limit() -> None:
        check_form_size(request.mimetype, request.content_length)

    @app.errorhandler(MESError)
    def _mes_error(exc: MESError) -> Response:
        db.session.rollback()  # a refusal records nothing of the refused change
        if request.path.startswith(HTML_PREFIXES):
            return html_error(exc.status, exc.detail)
        response = problem(exc.status, exc.slug, exc.title, exc.detail, **exc.extra)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.extra.get("retry_after", 60))
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        original = getattr(exc, "original_exception", None)
        if exc.code == 500 and isinstance(original, Exception):  # raised outside the view (e.g. saving the session)
            return _unexpected(original)
        if exc.code == 413 and request.path.startswith(HTML_PREFIXES):  # a form streamed past FORM_MAX
            return html_error(413, FORM_TOO_LARGE)
        slug = (exc.name or "error").lower().replace(" ", "-")
        response = problem(exc.code or 500, slug, exc.name or "Error", exc.description or "")
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        try:
            db.session.rollback()
        except Exception:  # noqa: BLE001 - the connection itself failed: drop it, answer anyway
            db.session.close()
        from mes.system.storage import database_problem

        known = database_problem(exc)
        if known is not None:  # a full disk, a lost connection: rolled back whole; say so, not "internal error"
            app.logger.error("database: %s", known.title, extra={"request_id": getattr(g, "request_id", None)})
            response = _mes_error(known)
            if known.status == 503:
                response.headers["Retry-After"] = "1"
            return response
        app.logger.exception("unhandled error", extra={"request_id": getattr(g, "request_id", None)})
        return problem(500, "internal-error", "Internal error",
                       "Something went wrong on the server; nothing was recorded. Quote the request id to support.")

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        if app.config.get("SESSION_COOKIE_SECURE"):
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response
