"""Users, their roles and qualifications, sessions, terminals, API tokens and alarms.

Users are deactivated, never deleted, so a user id is never reused (Part 11 §11.100).
A session row is written at log-in and closed once (log-out or timeout), both audited;
the last-activity time rides in the signed session cookie, so an idle check needs no
database write.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mes.db import db, utcnow


class Role(str, enum.Enum):
    """The roles of the permission matrix (see :mod:`mes.users.permissions`)."""

    OPERATOR = "operator"
    SUPERVISOR = "supervisor"
    QA = "qa"
    ADMIN = "admin"
    INTEGRATOR = "integrator"


class TerminalKind(str, enum.Enum):
    """What a registered terminal is; the idle timeout depends on it."""

    KIOSK = "kiosk"
    WORKSTATION = "workstation"


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    full_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(16), default="en")
    password_hash: Mapped[str | None] = mapped_column(String(200))
    password_changed_at: Mapped[datetime | None]
    badge_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    pin_hash: Mapped[str | None] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(default=True)
    locked: Mapped[bool] = mapped_column(default=False)
    failed_attempts: Mapped[int] = mapped_column(default=0)
    esig_acknowledged_at: Mapped[datetime | None]
    #: set when an administrator reset the password / PIN: temporary until the owner changes it
    password_reset_at: Mapped[datetime | None]
    pin_reset_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deactivated_at: Mapped[datetime | None]

    roles: Mapped[list[UserRole]] = relationship(
        back_populates="user", lazy="selectin", order_by="UserRole.role"
    )

    def role_names(self) -> set[str]:
        """The roles the user holds now (revoked ones grant nothing)."""
        return {r.role for r in self.roles if r.revoked_at is None}

    def qualification(self, role: str) -> UserRole | None:
        """The user's grant of ``role``, None if never granted or revoked."""
        return next((r for r in self.roles if r.role == role and r.revoked_at is None), None)


class UserRole(db.Model):
    """A role granted to a user, with the date the user's qualification for it lapses (and,
    once removed, when and by whom it was revoked)."""

    __tablename__ = "user_roles"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    qualified_until: Mapped[datetime | None]
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)
    granted_by: Mapped[str] = mapped_column(String(64))
    #: set when an administrator removed the role (the row stays: access changes are records)
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship(back_populates="roles")


class PasswordHistory(db.Model):
    """Earlier password hashes, so a password change cannot reuse a recent one."""

    __tablename__ = "password_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    set_at: Mapped[datetime] = mapped_column(default=utcnow)


class Terminal(db.Model):
    """A registered kiosk or workstation; requests that need a terminal must name one."""

    __tablename__ = "terminals"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(200), default="")
    line: Mapped[str | None] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UserSession(db.Model):
    """One log-in: opened once, closed once; both are audit entries."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    terminal_id: Mapped[str | None] = mapped_column(ForeignKey("terminals.id"))
    method: Mapped[str] = mapped_column(String(16))  # password | badge
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(32))
    #: the first signature of this session (both components given); later ones need the secret only
    first_signed_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined")
    terminal: Mapped[Terminal | None] = relationship(lazy="select")


class ApiToken(db.Model):
    """An integration token: only a SHA-256 of the secret is stored; scopes limit it."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined")


class Alarm(db.Model):
    """Something QA or admin must see: a lockout, an audit verification failure, …"""

    __tablename__ = "alarms"
    __table_args__ = (Index("ix_alarms_open", "acknowledged_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # security | audit | integration | device
    severity: Mapped[str] = mapped_column(String(16), default="high")
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict | None] = mapped_column(JSON)
    raised_at: Mapped[datetime] = mapped_column(default=utcnow)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))



class WebSession(db.Model):
    """A browser session's data, kept on the server (the cookie holds a random id whose
    SHA-256 is ``id``): plumbing, not a record, so it is neither audited nor kept."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_expires", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
