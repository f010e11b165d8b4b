"""Part 11 electronic signatures: manifestation, binding, components, qualification.

A signature is an audit entry (action ``esig.signed``) whose ``signature`` member holds
the signer, printed name, meaning and the SHA-256 of the canonical form of the exact
record version signed (§11.50, §11.70). Verifying a signature recomputes that hash from
the record as it is now, so a signature copied onto another record, or a record changed
after signing, fails.

Components (§11.200): the first signature in a session needs the user id (or badge) and
the secret; further signatures in the same continuous session need only the secret; a
new session (after log-out or timeout) needs both again. API tokens never sign.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mes.audit import canonical
from mes.audit.log import AppendedEntry, record
from mes.db import db, utcnow
from mes.errors import AuthenticationFailed, Conflict, Forbidden, ValidationFailed
from mes.plant_time import plant_date
from mes.users import operations as users
from mes.users import secrets as hashing
from mes.users.models import User, UserSession
from mes.users.permissions import Permission, allowed
from mes.users.ratelimit import refuse_if_account_limited

MEANINGS = ("performed", "verified", "reviewed", "approved", "released", "rejected")

# Record providers: record type -> function(record id) -> the record's current canonical dict.
_PROVIDERS: dict[str, Callable[[str], dict[str, Any]]] = {}


def record_provider(record_type: str) -> Callable[[Callable[[str], dict[str, Any]]], Callable[[str], dict[str, Any]]]:
    """Register how to read the current version of a signable record type."""

    def register(fn: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
        _PROVIDERS[record_type] = fn
        return fn

    return register


def record_hash(content: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of one record version."""
    return hashlib.sha256(canonical.canonical_json(content)).hexdigest()


def current_record(record_type: str, record_id: str) -> dict[str, Any]:
    try:
        provider = _PROVIDERS[record_type]
    except KeyError:
        raise ValidationFailed(f"Records of type {record_type!r} cannot be signed.") from None
    return provider(record_id)


@dataclass(frozen=True)
class Credentials:
    """What the signer typed: the identification component (optional after the first
    signature of a session) and the secret (password or PIN)."""

    secret: str
    user_id: str | None = None
    badge: str | None = None


def _check_components(user: User, session_row: UserSession, creds: Credentials, terminal: str | None) -> None:
    """Part 11 §11.200(a)(1): the first signature of *this* session needs both components (a
    signature in another session of the same person does not count); the secret is always
    checked. A wrong secret is a failed attempt: audited, counted toward the lockout and the
    account's rate (§11.300(d)); a reset secret signs nothing until its owner changed it."""
    needs_id = session_row.first_signed_at is None
    by_badge = session_row.method == "badge"
    if needs_id and not (creds.badge if by_badge else creds.user_id):
        raise AuthenticationFailed(
            "The first signature of a session needs your " + ("badge" if by_badge else "user id") + " and "
            + ("PIN" if by_badge else "password") + ".", components="both")
    # whose the identification component is: check_signer (on every signature)
    refuse_if_account_limited(user.id)
    stored = user.pin_hash if by_badge else user.password_hash
    secret = "PIN" if by_badge else "password"
    if not hashing.verify_secret(stored, creds.secret):
        users.signature_failed(user.id, terminal, f"wrong {secret}")
        raise AuthenticationFailed(f"The signature was refused: wrong {secret}.")
    if (user.pin_reset_at if by_badge else user.password_reset_at) is not None:
        raise Forbidden(f"Your {secret} was reset by an administrator; change it before you sign.")
    if needs_id:
        session_row.first_signed_at = utcnow()


ACKNOWLEDGE_FIRST = "Acknowledge that your electronic signature is binding before your first signature."


def signing_session(session_row: UserSession | None) -> UserSession:
    """The session a signature is made in: only a person in an interactive session signs
    (API tokens never do), so the signer can be asked for their components."""
    if session_row is None:
        raise Forbidden("Only a person in an interactive session can sign; API tokens cannot.")
    return session_row


def check_signer(user: User, credentials: Credentials, terminal: str | None = None) -> None:
    """Sign with your own badge: an identification component the signer gives (badge or user
    id) must be their own, on every signature, also where the session no longer needs it
    (Part 11 §11.200(a)(2), §11.300: one person's components are never used by another).
    A secret (password or PIN) is always needed."""
    if not isinstance(credentials.secret, str) or not credentials.secret:
        raise ValidationFailed("Signing needs your password (or PIN on a kiosk).", field="password")
    badge = str(credentials.badge).strip() if credentials.badge is not None else ""
    if badge and badge.lower() != (user.badge_id or "").lower():
        users.signature_failed(user.id, terminal, "another person's badge")
        raise AuthenticationFailed("That badge is not yours; sign with your own badge.")
    user_id = str(credentials.user_id).strip() if credentials.user_id is not None else ""
    if user_id and user_id.lower() != user.id.lower():
        users.signature_failed(user.id, terminal, "another person's user id")
        raise AuthenticationFailed("The signature components do not belong to the logged-in user.")


def check_acknowledged(user: User, acknowledged: bool) -> bool:
    """A signer acknowledges once that their electronic signature binds like a handwritten one
    (Part 11 §11.100(c)), before or with their first signature; without it the signature is
    refused. ``acknowledged`` is the signer's tick (the kiosk's box, an API step payload's
    ``esig_acknowledged: true``). Returns whether this signature carries the acknowledgement:
    :func:`sign` then writes it in the signature's transaction, so a signature refused for
    another reason leaves no acknowledgement behind either."""
    if user.esig_acknowledged_at is not None:
        return False
    if acknowledged is not True:
        raise Forbidden(ACKNOWLEDGE_FIRST)
    return True


def sign(
    session_row: UserSession | None,
    credentials: Credentials,
    record_type: str,
    record_id: str,
    meaning: str,
    *,
    role: str,
    terminal: str | None,
    batch: str | None = None,
    performed_by: str | None = None,
    permission: Permission = Permission.ESIG_SIGN,
    comment: str | None = None,
    acknowledged: bool = False,
    commit: bool = True,
) -> AppendedEntry:
    """Sign the current version of a record; the signature is itself an audit entry.

    ``performed_by`` marks a second-person verification: the signer must be someone else.
    ``acknowledged``: the signer acknowledges with this signature that it binds (needed
    once, see :func:`check_acknowledged`).
    """
    session_row = signing_session(session_row)
    if meaning not in MEANINGS:
        raise ValidationFailed(f"The meaning must be one of: {', '.join(MEANINGS)}.", field="meaning")
    user = session_row.user
    if not user.active or user.locked:
        raise AuthenticationFailed("This account cannot sign.")
    if role not in user.role_names() or not allowed({role}, permission):
        raise Forbidden(f"Signing as {role} for {permission.value} is not permitted.")
    qualification = user.qualification(role)
    if qualification is not None and qualification.qualified_until is not None and qualification.qualified_until < utcnow():
        raise Forbidden(f"Your qualification as {role} expired on {plant_date(qualification.qualified_until).isoformat()}; "
                        "signing is refused until it is renewed.")
    acknowledging = check_acknowledged(user, acknowledged)
    if performed_by is not None and performed_by == user.id:
        raise Conflict("Second-person verification must be done by a different person.")
    check_signer(user, credentials, terminal)
    _check_components(user, session_row, credentials, terminal)
    if acknowledging:
        users.acknowledge_esig_accountability(user.id, terminal, commit=False)
    content = current_record(record_type, record_id)
    at = utcnow()
    signature = {"signer": user.id, "name": user.full_name, "meaning": meaning, "record_hash": record_hash(content),
                 "at": canonical.format_at(at)}
    entry = record(users.actor_for(user, role, terminal), "esig.signed", (record_type, record_id), batch=batch,
                   after={"comment": comment} if comment else None, signature=signature)
    if commit:
        db.session.commit()
    return entry


@dataclass(frozen=True)
class SignatureCheck:
    seq: int
    signer: str
    name: str
    meaning: str
    at: str
    valid: bool
    problem: str | None


def signatures_for(record_type: str, record_id: str) -> list[SignatureCheck]:
    """Every signature on a record, each checked against the record as it is now, and each
    checked to be an entry the MES wrote: an ``esig.*`` entry without a valid authentication
    tag, or whose index columns do not match its bytes, is a forgery (issue 17)."""
    from mes.audit import entry_tags
    from mes.audit.log import audit_log

    current = record_hash(current_record(record_type, record_id))
    key = audit_log().tag_key()
    checks = []
    conn = db.session.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    rows = conn.exec_driver_sql(
        f"SELECT {entry_tags.ROW_COLUMNS} FROM audit_entries WHERE action = {mark} AND entity_type = {mark} "
        f"AND entity_id = {mark} ORDER BY seq", ("esig.signed", record_type, record_id)).fetchall()
    for row in rows:
        entry = json.loads(bytes(row[1]))
        problem = entry_tags.row_problem(key, row)
        if problem is not None:
            checks.append(forged(entry, problem))
        else:
            checks.append(check_entry(entry, current))
    return checks


FORGED = "forged: this signature entry was not written by the MES"


def forged(entry: dict[str, Any], problem: str) -> SignatureCheck:
    """A signature entry that fails its tag or index-column check: never valid."""
    entry = entry if isinstance(entry, dict) else {}
    sig = entry.get("signature") if isinstance(entry.get("signature"), dict) else {}
    return SignatureCheck(entry.get("seq", -1), str(sig.get("signer", "")),
                          str(sig.get("name", "")), str(sig.get("meaning", "")), str(sig.get("at", "")), False,
                          f"{FORGED} ({problem})")


def check_entry(entry: dict[str, Any], current_hash: str) -> SignatureCheck:
    sig = entry.get("signature") or {}
    valid = sig.get("record_hash") == current_hash
    return SignatureCheck(entry["seq"], sig.get("signer", ""), sig.get("name", ""), sig.get("meaning", ""),
                          sig.get("at", ""), valid,
                          None if valid else "the record differs from the version that was signed")


def forged_signatures_in_batch(batch_id: str) -> list[str]:
    """Release check: one sentence per ``esig.*`` entry of the batch that the MES did not
    write (no valid tag, or index columns that disagree with its bytes)."""
    from mes.audit import entry_tags
    from mes.audit.log import audit_log

    key = audit_log().tag_key()
    conn = db.session.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    rows = conn.exec_driver_sql(
        f"SELECT {entry_tags.ROW_COLUMNS} FROM audit_entries WHERE batch_id = {mark} AND action LIKE {mark} "
        "ORDER BY seq", (batch_id, "esig.%")).fetchall()
    out = []
    for row in rows:
        problem = entry_tags.row_problem(key, row)
        if problem is not None:
            out.append(f"the signature entry at seq {row[0]} is forged, not written by the MES ({problem})")
    return out
