"""Server-side browser sessions: the cookie holds a random id only.

What a browser session carries (the log-in's bearer secret, the terminal enrolment with its
key, the CSRF token, the last activity) stays in the ``web_sessions`` table; the cookie is an
opaque 256-bit id whose SHA-256 names the row, so neither the session secret nor a terminal
key can be read out of a cookie, and the idle timeout is computed from a time the server
keeps. A session has an absolute lifetime (``MES_SESSION_MAX_HOURS``) whatever its activity.

The rows are written through the engine, outside the request's ORM transaction (they are
plumbing, not records: nothing GMP is in them).
"""

from __future__ import annotations

import json
import random
import secrets
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, Request, Response, g
from flask.sessions import SessionInterface, SessionMixin
from sqlalchemy import delete, insert, update
from sqlalchemy.exc import DBAPIError
from werkzeug.datastructures import CallbackDict

from mes.db import as_utc, db, driver_queries, utcnow
from mes.users import operations as users
from mes.users import secrets as hashing
from mes.users.models import WebSession

_T = WebSession.__table__


class ServerSession(CallbackDict, SessionMixin):  # type: ignore[misc]
    """The session data of one browser, kept on the server."""

    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None,
                 expires_at: datetime | None = None) -> None:
        def on_update(_: Any) -> None:
            self.modified = True

        super().__init__(initial or {}, on_update)
        self.sid = sid  # the cookie's id (None: not stored yet)
        self.expires_at = expires_at
        self.modified = False
        self.regenerate = False

    def rotate(self) -> None:
        """Give this session a new id at the next save (log-in: no session fixation)."""
        self.regenerate = True
        self.modified = True


def _write(statement: Any) -> None:
    """Run a write in the request's own database session and commit it. The response is built,
    so the view has committed what it changed (a refusal was rolled back): what is still open
    is a read. That read is ended first: on SQLite a read transaction whose snapshot is older
    than another connection's commit cannot become a write (SQLITE_BUSY at once, without
    waiting), which showed as "database is locked" 500s under a busy kiosk line."""
    db.session.rollback()
    db.session.execute(statement)
    db.session.commit()


_READ_SQL = "SELECT data, expires_at FROM web_sessions WHERE id = ?"


def _read(row_id: str) -> tuple[Any, ...] | None:
    """The session row. On PostgreSQL it is the first statement of the request's own
    transaction, sent with its ``BEGIN`` and the read of the user session it names in one
    round trip (a connection of its own cost a checkout, a ``BEGIN``, the query and a
    ``ROLLBACK`` on every request, and the user session a round trip more). On SQLite it is
    read on a read-only connection: the request's own would begin with ``BEGIN IMMEDIATE``
    and take the write lock for every page."""
    if db.engine.dialect.name == "postgresql":
        try:
            rows, live = driver_queries(db.session.connection(), [(_READ_SQL, (row_id,)),
                                                                  (users.LIVE_SESSION_BY_BROWSER_SQL, (row_id,))])
        except DBAPIError:  # a row that is not JSON (written by hand): read it alone
            db.session.rollback()
            [rows] = driver_queries(db.session.connection(), [(_READ_SQL, (row_id,))])
        else:
            users.prefetch_live_session(live)
    else:
        with db.engine.connect() as conn:
            conn = conn.execution_options(mes_read_only=True)
            rows = conn.exec_driver_sql(_READ_SQL, (row_id,)).fetchall()
    return tuple(rows[0]) if rows else None


def _row_id(cookie_id: str) -> str:
    return hashing.digest(cookie_id)


class ServerSessionInterface(SessionInterface):
    """Flask sessions kept in ``web_sessions``; the cookie is only the session's id."""

    def _lifetime(self, app: Flask) -> timedelta:
        return timedelta(hours=int(app.config.get("MES_SESSION_MAX_HOURS", 12)))

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        cookie_id = request.cookies.get(self.get_cookie_name(app))
        if not cookie_id or len(cookie_id) > 100:
            return ServerSession()
        row = _read(_row_id(cookie_id))
        if row is None:
            return ServerSession()
        expires_at = as_utc(row[1])
        assert expires_at is not None
        if expires_at <= utcnow():
            return ServerSession()  # past its absolute lifetime: a new, empty session
        try:
            data = json.loads(row[0])
        except ValueError:
            data = {}
        return ServerSession(data if isinstance(data, dict) else {}, sid=cookie_id, expires_at=expires_at)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, ServerSession):  # it never opened (its read failed): nothing to save
            return
        name = self.get_cookie_name(app)
        domain, path = self.get_cookie_domain(app), self.get_cookie_path(app)
        if not session:
            if session.sid is not None and session.modified:
                self._delete(session.sid)
                response.delete_cookie(name, domain=domain, path=path)
            return
        if not session.modified:
            return
        now = utcnow()
        new_id = session.sid is None or session.regenerate
        if new_id:
            if session.sid is not None:
                self._delete(session.sid)
            session.sid = secrets.token_urlsafe(32)
            session.expires_at = now + self._lifetime(app)
            session.regenerate = False
        payload = json.dumps(dict(session), separators=(",", ":"))
        if new_id:
            _write(insert(_T).values(id=_row_id(session.sid), data=payload, created_at=now, expires_at=session.expires_at))
            if random.random() < 0.01:  # now and then, forget sessions past their lifetime  # noqa: S311
                _write(delete(_T).where(_T.c.expires_at < now))
        else:
            _write(update(_T).where(_T.c.id == _row_id(session.sid)).values(data=payload))
        if new_id and not g.get("mes_leave_session_cookie"):
            response.set_cookie(name, session.sid, expires=session.expires_at, httponly=self.get_cookie_httponly(app),
                                domain=domain, path=path, secure=self.get_cookie_secure(app),
                                samesite=self.get_cookie_samesite(app))

    def _delete(self, cookie_id: str) -> None:
        _write(delete(_T).where(_T.c.id == _row_id(cookie_id)))
