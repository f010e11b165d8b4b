"""Service layer for people and access: users, roles, log-in, sessions, terminals, tokens,
alarms. Every state change here is one transaction with its audit entry
(Part 11 §11.10(d), §11.100, §11.300; Annex 11 §12.3).

These functions take an :class:`~mes.audit.log.Actor` (who is acting) explicitly and
never look at the web request, so the web layer and the CLI are thin shells over them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select

from mes.audit.log import Actor, record
from mes.db import as_utc, begin_writing, db, driver_queries, utcnow
from mes.errors import (
    AccountLocked,
    AuthenticationFailed,
    Conflict,
    Forbidden,
    PasswordExpired,
    SessionExpired,
    TerminalRequired,
    ValidationFailed,
)
from mes.users import secrets as hashing
from mes.users.models import Alarm, ApiToken, PasswordHistory, Role, Terminal, TerminalKind, User, UserRole, UserSession
from mes.users.permissions import PRODUCTION_ROLES, Permission, allowed, check_role_combination
from mes.users.ratelimit import count_account_failure, refuse_if_account_limited
from mes.validation import NAME_MAX, SHORT_MAX, get_or_404, identifier, optional_text, required_text

PASSWORD_HISTORY_DEPTH = 5
AUTH = Actor.system("auth")


@dataclass(frozen=True)
class Policy:
    """Access policy from configuration."""

    lockout_threshold: int
    password_min_length: int
    password_max_age: timedelta
    kiosk_idle: timedelta
    workstation_idle: timedelta
    session_max: timedelta

    @classmethod
    def current(cls) -> Policy:
        c = current_app.config
        return cls(
            lockout_threshold=c["MES_LOCKOUT_THRESHOLD"],
            password_min_length=c["MES_PASSWORD_MIN_LENGTH"],
            password_max_age=timedelta(days=c["MES_PASSWORD_MAX_AGE_DAYS"]),
            kiosk_idle=timedelta(seconds=c["MES_KIOSK_IDLE_SECONDS"]),
            workstation_idle=timedelta(seconds=c["MES_WORKSTATION_IDLE_SECONDS"]),
            session_max=timedelta(hours=c.get("MES_SESSION_MAX_HOURS", 12)),
        )


def actor_for(user: User, role: str | None = None, terminal: str | None = None) -> Actor:
    """The Actor for a user acting in ``role`` (default: their first role)."""
    names = sorted(user.role_names())
    return Actor(id=user.id, name=user.full_name, role=role or (names[0] if names else "none"), terminal=terminal)


# ------------------------------------------------------------------------- users


def get_user(user_id: str) -> User:
    return get_or_404(User, user_id, "User")


def _check_password(user_id: str, password: str) -> None:
    problems = hashing.password_problems(password, user_id, Policy.current().password_min_length)
    if problems:
        raise ValidationFailed("The password " + "; ".join(problems) + ".", field="password")


def _check_pin(pin: str) -> None:
    problems = hashing.pin_problems(pin)
    if problems:
        raise ValidationFailed("The PIN " + "; ".join(problems) + ".", field="pin")


def create_user(
    actor: Actor,
    user_id: str,
    full_name: str,
    roles: set[str],
    *,
    password: str | None = None,
    badge_id: str | None = None,
    pin: str | None = None,
    language: str = "en",
    qualified_until: datetime | None = None,
    email: str | None = None,
) -> User:
    """Create a user. User ids are never reused: a deactivated user's id stays taken."""
    user_id = identifier(user_id, "user id", "id")
    full_name = required_text(full_name, "The printed name", "full_name", NAME_MAX)
    try:
        check_role_combination(roles)
    except ValueError as exc:
        raise ValidationFailed(str(exc).capitalize() + ".", field="roles") from None
    if not roles:
        raise ValidationFailed("A user needs at least one role.", field="roles")
    existing = db.session.execute(select(User).where(User.id.ilike(user_id))).scalar()
    if existing is not None:
        raise Conflict(f"The user id {user_id!r} is taken (user ids are never reused).")
    if password is None and badge_id is None:
        raise ValidationFailed("A user needs a password or a badge and PIN.", field="password")
    if badge_id is not None:
        if pin is None:
            raise ValidationFailed("A badge needs a PIN.", field="pin")
        if db.session.execute(select(User).where(User.badge_id == badge_id)).scalar() is not None:
            raise Conflict(f"Badge {badge_id!r} is already assigned.")
        _check_pin(pin)
    if password is not None:
        _check_password(user_id, password)
    now = utcnow()
    user = User(
        id=user_id, full_name=full_name.strip(), email=email, language=language, badge_id=badge_id,
        pin_hash=hashing.hash_secret(pin) if pin else None,
        password_hash=hashing.hash_secret(password) if password else None,
        password_changed_at=now if password else None, active=True, locked=False, failed_attempts=0,
        created_at=now,
    )
    db.session.add(user)
    db.session.flush()
    for role in sorted(roles):
        db.session.add(UserRole(user=user, role=role, qualified_until=qualified_until, granted_by=actor.id, granted_at=now))
    if password:
        db.session.add(PasswordHistory(user_id=user_id, password_hash=user.password_hash, set_at=now))
    record(
        actor, "user.created", ("user", user_id),
        after={
            "full_name": user.full_name, "roles": sorted(roles), "badge_id": badge_id, "language": language,
            "qualified_until": qualified_until.isoformat() if qualified_until else None,
        },
    )
    db.session.commit()
    return user


def grant_role(actor: Actor, user_id: str, role: str, qualified_until: datetime | None, reason: str) -> None:
    """Grant or re-qualify a role (audited: access changes are records, Annex 11 §12.3)."""
    user = get_user(user_id)
    try:
        check_role_combination(user.role_names() | {role})
    except ValueError as exc:
        raise ValidationFailed(str(exc).capitalize() + ".", field="role") from None
    current = next((r for r in user.roles if r.role == role), None)  # a revoked grant is granted again
    before = None
    if current is None:
        db.session.add(UserRole(user=user, role=role, qualified_until=qualified_until, granted_by=actor.id))
    else:
        before = {"role": role, "qualified_until": current.qualified_until.isoformat() if current.qualified_until else None}
        if current.revoked_at is not None:
            before["revoked_at"] = current.revoked_at.isoformat()
        current.qualified_until = qualified_until
        current.granted_by = actor.id
        current.granted_at = utcnow()
        current.revoked_at = None
        current.revoked_by = None
    record(
        actor, "user.role.granted", ("user", user_id), before=before, reason=reason,
        after={"role": role, "qualified_until": qualified_until.isoformat() if qualified_until else None},
    )
    db.session.commit()


def revoke_role(actor: Actor, user_id: str, role: str, reason: str) -> None:
    """Remove a role from a user (Annex 11 §12.3: removing access rights is itself audited). The
    grant is marked revoked, never deleted; it takes effect on the user's next request. The last
    role is not removed (deactivate the account instead), nor an administrator's own."""
    reason = required_text(reason, "A reason to remove a role", "reason")
    user = get_user(user_id)
    current = user.qualification(role)
    if current is None:
        raise Conflict(f"{user_id} does not hold the role {role!r}.")
    if actor.id == user_id:
        raise Conflict("You cannot remove your own role; another administrator does.")
    if user.role_names() == {role}:
        raise Conflict(f"{role} is the last role of {user_id}; deactivate the account instead.")
    before = {"role": role, "qualified_until": current.qualified_until.isoformat() if current.qualified_until else None}
    current.revoked_at = utcnow()
    current.revoked_by = actor.id
    record(actor, "user.role.revoked", ("user", user_id), before=before, after={"role": role, "revoked": True},
           reason=reason)
    db.session.commit()


def deactivate_user(actor: Actor, user_id: str, reason: str) -> None:
    """Deactivate (never delete) a user and end their open sessions."""
    reason = required_text(reason, "A reason to deactivate a user", "reason")
    user = get_user(user_id)
    if not user.active:
        raise Conflict(f"User {user_id!r} is already deactivated.")
    if actor.id == user_id:
        raise Conflict("You cannot deactivate your own account.")
    user.active = False
    user.deactivated_at = utcnow()
    for open_session in db.session.execute(
        select(UserSession).where(UserSession.user_id == user_id, UserSession.ended_at.is_(None))
    ).scalars():
        open_session.ended_at = utcnow()
        open_session.end_reason = "deactivated"
    record(actor, "user.deactivated", ("user", user_id), before={"active": True}, after={"active": False}, reason=reason)
    db.session.commit()
    _close_live(f"user:{user_id}")


#: how long a password or PIN set by an administrator may be used to set the owner's own
TEMPORARY_CREDENTIAL_LIFETIME = timedelta(hours=24)


def reset_credentials(
    actor: Actor, user_id: str, reason: str, *, password: str | None = None, pin: str | None = None
) -> None:
    """Unlock and set a temporary password or PIN. It is temporary: its owner must change it at
    first use, within :data:`TEMPORARY_CREDENTIAL_LIFETIME`, and it signs nothing until then
    (no one can take over an account through a reset). Audited with both parties: the
    administrator (actor) and the owner (entity)."""
    reason = required_text(reason, "A reason to reset credentials", "reason")
    user = get_user(user_id)
    if actor.id == user.id:
        raise Conflict("You cannot reset your own credentials; another administrator does.")
    before = {"locked": user.locked, "failed_attempts": user.failed_attempts}
    after: dict[str, object] = {"owner": user.id, "reset_by": actor.id, "locked": False, "failed_attempts": 0}
    now = utcnow()
    if password is not None:
        _check_password(user_id, password)
        user.password_hash = hashing.hash_secret(password)
        user.password_changed_at = None  # forces a change at the next log-in
        user.password_reset_at = now
        after["password"] = "temporary (the owner must change it at first use)"
    if pin is not None:
        if user.badge_id is None:
            raise ValidationFailed(f"{user_id} has no badge, so no PIN.", field="pin")
        _check_pin(pin)
        user.pin_hash = hashing.hash_secret(pin)
        user.pin_reset_at = now
        after["pin"] = "temporary (the owner must change it at first use)"
    if password is not None or pin is not None:
        after["valid_until"] = (now + TEMPORARY_CREDENTIAL_LIFETIME).isoformat()
    user.locked = False
    user.failed_attempts = 0
    record(actor, "user.credentials.reset", ("user", user_id), before=before, after=after, reason=reason)
    db.session.commit()


def _temporary_expired(reset_at: datetime | None) -> bool:
    return reset_at is not None and utcnow() - reset_at > TEMPORARY_CREDENTIAL_LIFETIME


def change_password(user_id: str, old_password: str, new_password: str, terminal: str | None = None) -> None:
    """A user changes their own password (also the way out of an expired or reset one).

    Anonymous callers may use it, so it must not be a password oracle: the new password's
    rules are checked only after the current password matched, every refusal before that
    answers alike, and a wrong current password counts toward the lockout (audited)."""
    _check_password(str(user_id).strip(), new_password)  # before the current password: no oracle
    user = db.session.execute(select(User).where(User.id.ilike(str(user_id).strip()))).scalar()
    if user is not None:
        refuse_if_account_limited(user.id)
    matches = hashing.verify_secret(user.password_hash if user is not None else None, old_password)  # same time
    if user is None or not user.active or user.locked or not matches:
        usable = user is not None and user.active and not user.locked
        _fail(user, user_id, "wrong user id or current password" if user is None or usable else "unusable account",
              terminal, action="auth.password.failed", attempts="password change")
        raise AuthenticationFailed("The user id or current password is wrong.")
    if _temporary_expired(user.password_reset_at):
        raise AuthenticationFailed("The temporary password has expired; ask an administrator for a new one.")
    user_id = user.id
    recent = db.session.execute(
        select(PasswordHistory.password_hash).where(PasswordHistory.user_id == user_id)
        .order_by(PasswordHistory.set_at.desc()).limit(PASSWORD_HISTORY_DEPTH)
    ).scalars()
    if any(hashing.verify_secret(h, new_password) for h in recent) or new_password == old_password:
        raise ValidationFailed(f"The new password must differ from the last {PASSWORD_HISTORY_DEPTH}.", field="password")
    now = utcnow()
    user.password_hash = hashing.hash_secret(new_password)
    user.password_changed_at = now
    user.password_reset_at = None
    db.session.flush()
    db.session.add(PasswordHistory(user_id=user_id, password_hash=user.password_hash, set_at=now))
    record(actor_for(user, terminal=terminal), "user.password.changed", ("user", user_id), after={"password_changed_at": now.isoformat()})
    db.session.commit()


def acknowledge_esig_accountability(user_id: str, terminal: str | None, *, commit: bool = True) -> None:
    """Store the user's acknowledgement that their e-signature binds like a handwritten one
    (``commit=False``: in the caller's transaction, e.g. with the signature it comes with)."""
    user = get_user(user_id)
    if user.esig_acknowledged_at is not None:
        return
    user.esig_acknowledged_at = utcnow()
    record(
        actor_for(user, terminal=terminal), "user.esig.acknowledged", ("user", user_id),
        after={"statement": "My electronic signature is the legally binding equivalent of my handwritten signature.",
               "acknowledged_at": user.esig_acknowledged_at.isoformat()},
    )
    if commit:
        db.session.commit()


# ------------------------------------------------------------------ authentication


def _fail(user: User | None, given_id: str, why: str, terminal: str | None, *,
          action: str = "auth.login.failed", attempts: str = "log-in") -> None:
    """Record a failed credential attempt (log-in, password change, signature): audited,
    counted toward the account's lockout and its per-account rate; at the threshold the
    account locks and a security alarm is raised (Part 11 §11.300(d))."""
    if user is not None:
        count_account_failure(user.id)
    if user is None or not user.active or user.locked:
        record(replace(AUTH, terminal=terminal), action, ("user", given_id), after={"why": why})
        if action == SIGNATURE_FAILED:
            _signature_alarm(replace(AUTH, terminal=terminal), user.id if user is not None else given_id, terminal, why)
        db.session.commit()
        return
    policy = Policy.current()
    before = user.failed_attempts
    user.failed_attempts = before + 1
    actor = replace(AUTH, terminal=terminal)
    record(actor, action, ("user", user.id),
           before={"failed_attempts": before}, after={"failed_attempts": user.failed_attempts, "why": why})
    if user.failed_attempts >= policy.lockout_threshold:
        user.locked = True
        record(actor, "user.locked", ("user", user.id), before={"locked": False}, after={"locked": True},
               reason=f"{user.failed_attempts} failed attempts (last: {attempts})")
        raise_alarm(actor, "security", f"Account {user.id} locked after {user.failed_attempts} failed attempts "
                    f"(last: {attempts})", {"user": user.id, "terminal": terminal}, commit=False)
    if action == SIGNATURE_FAILED:
        _signature_alarm(actor, user.id, terminal, why)
    db.session.commit()
    if user.locked:
        _close_live(f"user:{user.id}")


SIGNATURE_FAILED = "auth.signature.failed"


def _signature_alarm(actor: Actor, account: str, terminal: str | None, why: str) -> Alarm:
    """Raise the account's security alarm for failed signature attempts, or count one more on
    the alarm still open (one open alarm per account, not one per attempt): audited either way,
    in the caller's transaction."""
    open_security = db.session.execute(
        select(Alarm).where(Alarm.acknowledged_at.is_(None), Alarm.kind == "security").order_by(Alarm.id)
    ).scalars()
    alarm = next((a for a in open_security if (a.details or {}).get("cause") == SIGNATURE_FAILED
                  and (a.details or {}).get("user") == account), None)
    now = utcnow()
    if alarm is None:
        return raise_alarm(actor, "security", f"Failed signature attempt for account {account}",
                           {"cause": SIGNATURE_FAILED, "user": account, "count": 1, "terminal": terminal,
                            "last_why": why, "last_at": now.isoformat()}, commit=False)
    before = dict(alarm.details or {})
    before_message, count = alarm.message, int(before.get("count", 1)) + 1
    alarm.details = {**before, "count": count, "terminal": terminal, "last_why": why, "last_at": now.isoformat()}
    alarm.message = f"{count} failed signature attempts for account {account}"
    record(actor, "alarm.updated", ("alarm", str(alarm.id)),
           before={"count": count - 1, "message": before_message},
           after={"count": count, "message": alarm.message, "terminal": terminal})
    return alarm


def signature_failed(user_id: str, terminal: str | None, why: str) -> None:
    """A signature was refused for a wrong secret or another person's identification
    component: the refused change is rolled back, and the attempt is audited, counted
    toward the signer's lockout and raises (or counts on) the account's open security alarm,
    in its own transaction (Part 11 §11.300(d))."""
    db.session.rollback()
    _fail(db.session.get(User, user_id), user_id, why, terminal, action=SIGNATURE_FAILED, attempts="signature")


def _refuse_unusable(user: User, matches: bool) -> None:
    """After a failed log-in: a locked account says so only to the right secret; a wrong one
    gets the same answer as any other failure (no hint which accounts are locked)."""
    if matches and user.active and user.locked:
        raise AccountLocked("This account is locked after too many failed attempts; ask an administrator to reset it.")


def login_with_password(user_id: str, password: str, terminal: Terminal | None) -> tuple[UserSession, str]:
    """Log in with user id + password; returns the session and its bearer secret."""
    user = db.session.execute(select(User).where(User.id.ilike(user_id.strip()))).scalar()
    tid = terminal.id if terminal else None
    if user is not None:
        refuse_if_account_limited(user.id)
    matches = hashing.verify_secret(user.password_hash if user is not None else None, password)  # always: same time
    if user is None or not user.active or user.locked or not matches:
        usable = user is not None and user.active and not user.locked
        _fail(user, user_id, "wrong user id or password" if user is None or usable else "unusable account", tid)
        if user is not None:
            _refuse_unusable(user, matches)
        raise AuthenticationFailed("The user id or password is wrong.")
    if _temporary_expired(user.password_reset_at):
        raise AuthenticationFailed("The temporary password has expired; ask an administrator for a new one.")
    policy = Policy.current()
    if user.password_reset_at is not None:
        raise PasswordExpired("The password was reset: set your own to continue.", user=user.id)
    if user.password_changed_at is None or utcnow() - user.password_changed_at > policy.password_max_age:
        raise PasswordExpired("The password has expired; change it to continue.", user=user.id)
    return _open_session(user, terminal, "password")


def check_password(user_id: str, password: str, terminal: str | None) -> User:
    """The account whose password this is (a command-line caller), or AuthenticationFailed:
    a wrong password is audited and counted toward the lockout like a failed log-in; a
    password reset by an administrator does not authorise a command either."""
    user = db.session.execute(select(User).where(User.id.ilike(str(user_id).strip()))).scalar()
    if user is not None:
        refuse_if_account_limited(user.id)
    matches = hashing.verify_secret(user.password_hash if user is not None else None, password)  # always: same time
    if user is None or not user.active or user.locked or not matches:
        usable = user is not None and user.active and not user.locked
        _fail(user, user_id, "wrong user id or password" if user is None or usable else "unusable account", terminal)
        raise AuthenticationFailed("The user id or password is wrong, or the account is locked or deactivated.")
    if user.password_reset_at is not None:
        raise PasswordExpired("The password was reset: set your own to continue.", user=user.id)
    return user


def login_with_badge(badge_id: str, pin: str, terminal: Terminal | None) -> tuple[UserSession, str]:
    """Log in on a kiosk with badge + PIN (a registered kiosk terminal is required)."""
    return _open_session(check_badge(badge_id, pin, terminal), terminal, "badge")


def check_badge(badge_id: str, pin: str, terminal: Terminal | None) -> User:
    """The holder of the badge whose PIN this is, checked as for a log-in (a wrong PIN is
    audited and counted toward the lockout; a reset PIN must be changed first), without
    opening a session: the kiosk names the signer on the confirm dialog before the signature."""
    if terminal is None or terminal.kind != TerminalKind.KIOSK.value:
        raise TerminalRequired("Badge log-in works only on a registered kiosk.")
    user = db.session.execute(select(User).where(User.badge_id == badge_id.strip())).scalar()
    if user is not None:
        refuse_if_account_limited(user.id)
    matches = hashing.verify_secret(user.pin_hash if user is not None else None, pin)  # always: same time
    if user is None or not user.active or user.locked or not matches:
        why = "unknown badge or wrong PIN" if user is None or (user.active and not user.locked) else "unusable account"
        _fail(user, f"badge:{badge_id}", why, terminal.id)
        if user is not None:
            _refuse_unusable(user, matches)
        raise AuthenticationFailed("The badge or PIN is wrong.")
    if _temporary_expired(user.pin_reset_at):
        raise AuthenticationFailed("The temporary PIN has expired; ask an administrator for a new one.")
    if user.pin_reset_at is not None:
        raise PasswordExpired("Your PIN was reset: set your own PIN to continue.", user=user.id, credential="pin")
    return user


def change_pin(badge_id: str, old_pin: str, new_pin: str, terminal: Terminal | None) -> None:
    """A badge holder changes their own PIN on a kiosk (also the way out of a reset PIN).
    Like :func:`change_password`: the new PIN's rules first, a wrong current PIN counted."""
    if terminal is None or terminal.kind != TerminalKind.KIOSK.value:
        raise TerminalRequired("A PIN is changed on a registered kiosk.")
    _check_pin(new_pin)
    user = db.session.execute(select(User).where(User.badge_id == str(badge_id).strip())).scalar()
    if user is not None:
        refuse_if_account_limited(user.id)
    matches = hashing.verify_secret(user.pin_hash if user is not None else None, old_pin)
    if user is None or not user.active or user.locked or not matches:
        usable = user is not None and user.active and not user.locked
        _fail(user, f"badge:{badge_id}", "unknown badge or wrong PIN" if user is None or usable else "unusable account",
              terminal.id, action="auth.pin.failed", attempts="PIN change")
        raise AuthenticationFailed("The badge or PIN is wrong.")
    if _temporary_expired(user.pin_reset_at):
        raise AuthenticationFailed("The temporary PIN has expired; ask an administrator for a new one.")
    if new_pin == old_pin:
        raise ValidationFailed("The new PIN must differ from the current one.", field="pin")
    user.pin_hash = hashing.hash_secret(new_pin)
    user.pin_reset_at = None
    record(actor_for(user, terminal=terminal.id), "user.pin.changed", ("user", user.id), after={"pin": "changed"})
    db.session.commit()


def _open_session(user: User, terminal: Terminal | None, method: str) -> tuple[UserSession, str]:
    secret = secrets.token_urlsafe(32)
    tid = terminal.id if terminal else None
    session_row = UserSession(id=hashing.digest(secret), user_id=user.id, terminal_id=tid, method=method, started_at=utcnow())
    db.session.add(session_row)
    before = {"failed_attempts": user.failed_attempts} if user.failed_attempts else None
    user.failed_attempts = 0
    record(actor_for(user, terminal=tid), "auth.login", ("user", user.id), before=before,
           after={"method": method, "session": session_row.id[:12], "failed_attempts": 0})
    db.session.commit()
    return session_row, secret


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A live log-in as every request checks it: the session, its user's name, state and
    roles, and its terminal's state and key hash, read in one Core query without building
    ORM objects (it runs on every request; the ORM rows load only when a view asks)."""

    id: str
    user_id: str
    full_name: str
    roles: frozenset[str]
    terminal_id: str | None
    terminal_kind: str | None
    terminal_active: bool
    terminal_key_hash: str | None
    #: how long it may stay idle (the kiosk's or the workstation's idle time-out)
    idle: timedelta

    def terminal_matches(self, terminal_id: str, key: str) -> bool:
        """Whether ``terminal_id``/``key`` authenticate this session's own, active terminal."""
        return (self.terminal_id is not None and terminal_id == self.terminal_id and self.terminal_active
                and self.terminal_key_hash is not None and hashing.digest_matches(self.terminal_key_hash, key))


_LIVE_SESSION_SQL = (
    "SELECT s.id, s.user_id, s.terminal_id, s.ended_at, u.full_name, u.active, u.locked, r.role, "
    "t.kind, t.active, t.key_hash, s.started_at FROM user_sessions s JOIN users u ON u.id = s.user_id "
    "LEFT JOIN user_roles r ON r.user_id = u.id AND r.revoked_at IS NULL LEFT JOIN terminals t ON t.id = s.terminal_id WHERE s.id = ?")


#: The same rows for the user session named in a browser session's data (PostgreSQL), so the
#: browser session and its user session are read in one round trip (:func:`prefetch_live_session`).
LIVE_SESSION_BY_BROWSER_SQL = _LIVE_SESSION_SQL.replace(
    "WHERE s.id = ?", "WHERE s.id = (SELECT encode(sha256(convert_to(w.data::json->>'sid', 'UTF8')), 'hex') "
    "FROM web_sessions w WHERE w.id = ?)")
_PREFETCHED = "mes_live_session_rows"


def prefetch_live_session(rows: list[tuple[object, ...]]) -> None:
    """Keep the user-session rows read beside the browser session, for this request's
    :func:`resolve_session` (kept in the request's database session, used once)."""
    db.session.info[_PREFETCHED] = rows


def resolve_session(secret: str, last_activity: datetime | None) -> LiveSession:
    """The live session for a cookie secret; ends it (audited) if idle too long or if its
    account can no longer be used. It runs on every request, so it costs no round trip of its
    own when the browser session's read fetched its rows (PostgreSQL), else one query through
    the driver with the transaction's ``BEGIN`` in the same round trip."""
    sid = hashing.digest(secret)
    rows = db.session.info.pop(_PREFETCHED, None)
    if not rows or rows[0][0] != sid:
        [rows] = driver_queries(db.session.connection(), [(_LIVE_SESSION_SQL, (sid,))])
    if not rows or rows[0][3] is not None:
        raise SessionExpired("The session has ended; log in again.")
    _, user_id, terminal_id, _, full_name, user_active, locked, _, terminal_kind, terminal_active, key_hash, started = rows[0]
    if not user_active or locked:
        end_session(db.session.get(UserSession, sid), "account_unusable")
        raise SessionExpired("This account can no longer be used; log in again.")
    policy = Policy.current()
    started_at = as_utc(started)
    if started_at is not None and utcnow() - started_at > policy.session_max:
        end_session(db.session.get(UserSession, sid), "absolute_timeout")
        raise SessionExpired(f"A session lasts at most {policy.session_max.total_seconds() / 3600:g} hours; "
                             "log in again.")
    idle = policy.kiosk_idle if terminal_kind == TerminalKind.KIOSK.value else policy.workstation_idle
    if last_activity is not None and utcnow() - last_activity > idle:
        end_session(db.session.get(UserSession, sid), "idle_timeout")
        raise SessionExpired("The session timed out after inactivity; log in again.")
    return LiveSession(id=sid, user_id=user_id, full_name=full_name,
                       roles=frozenset(row[7] for row in rows if row[7] is not None), terminal_id=terminal_id,
                       terminal_kind=terminal_kind, terminal_active=bool(terminal_active), terminal_key_hash=key_hash,
                       idle=idle)


def end_session(row: UserSession, reason: str) -> None:
    """Close a session once (log-out, idle timeout, deactivation), audited. It may follow a
    read (a GET whose session ran out), so it starts its own writing transaction."""
    begin_writing()
    if row.ended_at is not None:
        return
    row.ended_at = utcnow()
    row.end_reason = reason
    record(actor_for(row.user, terminal=row.terminal_id), "auth.logout", ("user", row.user_id),
           after={"session": row.id[:12], "reason": reason})
    db.session.commit()
    _close_live(session_room(row.id))


def _close_live(room: str) -> None:
    """Close the live (Socket.IO) connections of a session or user that can no longer be used."""
    from mes.realtime import close_room_sockets

    close_room_sockets(room)


def session_room(session_id: str) -> str:
    from mes.realtime import session_room as room

    return room(session_id)


# ----------------------------------------------------------------------- terminals


def register_terminal(actor: Actor, terminal_id: str, kind: str, description: str = "",
                      line: str | None = None, key: str | None = None) -> tuple[Terminal, str]:
    """Register a kiosk or workstation; returns it and its enrolment key (shown once)."""
    if kind not in {k.value for k in TerminalKind}:
        raise ValidationFailed("A terminal is a kiosk or a workstation.", field="kind")
    terminal_id = identifier(terminal_id, "terminal id", "id")
    description = optional_text(description, "The description", "description", NAME_MAX) or ""
    line = optional_text(line, "The line", "line", SHORT_MAX)
    if db.session.get(Terminal, terminal_id) is not None:
        raise Conflict(f"Terminal {terminal_id!r} is already registered.")
    key = key or hashing.new_token_secret()
    terminal = Terminal(id=terminal_id, kind=kind, description=description, line=line, key_hash=hashing.digest(key), active=True)
    db.session.add(terminal)
    record(actor, "terminal.registered", ("terminal", terminal_id), after={"kind": kind, "description": description, "line": line})
    db.session.commit()
    return terminal, key


def deactivate_terminal(actor: Actor, terminal_id: str, reason: str) -> None:
    terminal = get_or_404(Terminal, terminal_id, "Terminal")
    if not terminal.active:
        raise Conflict(f"Terminal {terminal_id!r} is already deactivated.")
    terminal.active = False
    record(actor, "terminal.deactivated", ("terminal", terminal_id), before={"active": True}, after={"active": False}, reason=reason)
    db.session.commit()


def authenticate_terminal(terminal_id: str, key: str) -> Terminal | None:
    """The active terminal for an id + key, or None."""
    terminal = db.session.get(Terminal, terminal_id)
    if terminal is None or not terminal.active or not hashing.digest_matches(terminal.key_hash, key):
        return None
    return terminal


_TERMINAL_SCOPE: dict[tuple[str, str], tuple[str, str | None]] = {}


def check_terminal_line(terminal_id: str | None, line: str | None) -> None:
    """A kiosk serves its own line: it starts and executes batches of that line only (a
    workstation, or a kiosk registered without a line, is not bound to one). A terminal's kind
    and line never change after registration, so they are read once per process."""
    if terminal_id is None:
        return
    cache_key = (str(db.engine.url), terminal_id)
    scope = _TERMINAL_SCOPE.get(cache_key)
    if scope is None:
        terminal = db.session.get(Terminal, terminal_id)
        if terminal is None:
            return
        scope = _TERMINAL_SCOPE[cache_key] = (terminal.kind, terminal.line)
    kind, own = scope
    if kind == TerminalKind.KIOSK.value and own is not None and line != own:
        raise Forbidden(f"Kiosk {terminal_id} serves line {own}; this batch is on {line or 'no line'}.")


# -------------------------------------------------------------------------- tokens

TOKEN_PREFIX = "mes_"
TOKEN_MAX_LIFETIME = timedelta(days=3 * 366)


def token_account_problem(user: User) -> str | None:
    """Why ``user`` may not hold an API token, or None. Tokens are for integration and system
    accounts only: a person who enters or signs GMP data (operator, supervisor, QA) acts in
    an interactive session, so no one can act in their name through a token."""
    production = sorted(user.role_names() & {r.value for r in PRODUCTION_ROLES})
    if production:
        return (f"API tokens are for integration and system accounts only; {user.id} holds the production "
                f"role {', '.join(production)}.")
    return None


def issue_token(actor: Actor, user_id: str, scopes: list[str], description: str = "",
                expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Issue an API token for an integration or system account, with scopes its roles hold
    (tokens for integration only); only the secret's hash is stored."""
    user = get_user(user_id)
    if not user.active:
        raise Conflict(f"User {user_id!r} is deactivated.")
    problem = token_account_problem(user)
    if problem is not None:
        raise Forbidden(problem)
    description = optional_text(description, "The description", "description", NAME_MAX) or ""
    valid = {p.value for p in Permission}
    bad = [s for s in scopes if s not in valid]
    if bad or not scopes:
        raise ValidationFailed(f"Unknown or missing scopes: {', '.join(bad) or '(none given)'}.", field="scopes")
    roles = user.role_names()
    beyond = sorted(s for s in set(scopes) if not allowed(roles, Permission(s)))
    if beyond:
        raise Forbidden(f"{user_id}'s roles do not hold the scope(s) {', '.join(beyond)}; a token never grants more "
                        "than its account's role.")
    if expires_at is not None and expires_at <= utcnow():
        raise ValidationFailed("A token cannot expire in the past.", field="expires_at")
    if expires_at is not None and expires_at > utcnow() + TOKEN_MAX_LIFETIME:
        raise ValidationFailed(f"A token expires within {TOKEN_MAX_LIFETIME.days} days.", field="expires_at")
    token_id = secrets.token_hex(8)
    secret = hashing.new_token_secret()
    token = ApiToken(id=token_id, user_id=user_id, description=description, secret_sha256=hashing.digest(secret),
                     scopes=sorted(set(scopes)), expires_at=expires_at)
    db.session.add(token)
    record(actor, "api_token.issued", ("api_token", token_id),
           after={"user": user_id, "scopes": token.scopes, "description": description,
                  "expires_at": expires_at.isoformat() if expires_at else None})
    db.session.commit()
    return token, f"{TOKEN_PREFIX}{token_id}.{secret}"


def revoke_token(actor: Actor, token_id: str, reason: str) -> None:
    token = get_or_404(ApiToken, token_id, "API token")
    if token.revoked_at is not None:
        raise Conflict("The token is already revoked.")
    token.revoked_at = utcnow()
    record(actor, "api_token.revoked", ("api_token", token_id), before={"revoked": False}, after={"revoked": True}, reason=reason)
    db.session.commit()


def authenticate_token(presented: str) -> ApiToken:
    """The live token for a presented bearer value, or AuthenticationFailed."""
    if not presented.startswith(TOKEN_PREFIX) or "." not in presented:
        raise AuthenticationFailed("The API token is malformed.")
    token_id, _, secret = presented[len(TOKEN_PREFIX):].partition(".")
    token = db.session.get(ApiToken, token_id)
    if token is None or not hashing.digest_matches(token.secret_sha256, secret):
        raise AuthenticationFailed("The API token is not valid.")
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at < utcnow()):
        raise AuthenticationFailed("The API token is revoked or expired.")
    if not token.user.active or token.user.locked:
        raise AuthenticationFailed("The token's user is deactivated or locked.")
    if token_account_problem(token.user) is not None:  # e.g. a production role granted after issue
        raise AuthenticationFailed("The API token's account is not an integration or system account.")
    return token


# -------------------------------------------------------------------------- alarms


def raise_alarm(actor: Actor, kind: str, message: str, details: dict | None = None, *, commit: bool = True) -> Alarm:
    """Raise an alarm that QA and admin see (audited)."""
    alarm = Alarm(kind=kind, message=message, details=details, raised_at=utcnow())
    db.session.add(alarm)
    db.session.flush()
    record(actor, "alarm.raised", ("alarm", str(alarm.id)), after={"kind": kind, "message": message})
    if commit:
        db.session.commit()
    return alarm


def acknowledge_alarm(actor: Actor, alarm_id: int, comment: str) -> None:
    alarm = get_or_404(Alarm, alarm_id, "Alarm")
    if alarm.acknowledged_at is not None:
        raise Conflict("The alarm is already acknowledged.")
    alarm.acknowledged_at = utcnow()
    alarm.acknowledged_by = actor.id
    record(actor, "alarm.acknowledged", ("alarm", str(alarm_id)), before={"acknowledged": False},
           after={"acknowledged": True}, reason=comment or None)
    db.session.commit()


def open_alarms() -> list[Alarm]:
    return list(db.session.execute(select(Alarm).where(Alarm.acknowledged_at.is_(None)).order_by(Alarm.id)).scalars())


def role_is_known(role: str) -> bool:
    return role in Role._value2member_map_
