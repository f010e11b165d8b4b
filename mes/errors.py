"""Domain errors. Each carries an HTTP status and a problem type slug, so the API turns
it into RFC 9457 problem+json, the CLI into one plain line, and the kiosk into a sentence.
"""

from __future__ import annotations

from typing import Any


class MESError(Exception):
    """Base of every refusal the MES explains to a user."""

    status: int = 400
    slug: str = "bad-request"
    title: str = "The request cannot be processed"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ValidationFailed(MESError):
    status, slug, title = 422, "validation-failed", "The input is not valid"


class ContentTooLarge(MESError):
    status, slug, title = 413, "content-too-large", "The request body is too large"


class NotFound(MESError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(MESError):
    status, slug, title = 409, "conflict", "The record changed or is in the wrong state"


class AuthenticationFailed(MESError):
    status, slug, title = 401, "authentication-failed", "Authentication failed"


class SessionExpired(MESError):
    status, slug, title = 401, "session-expired", "The session has ended"


class PasswordExpired(MESError):
    status, slug, title = 403, "password-expired", "The password has expired and must be changed"


class AccountLocked(MESError):
    status, slug, title = 423, "account-locked", "The account is locked"


class Forbidden(MESError):
    status, slug, title = 403, "forbidden", "Not permitted"


class TerminalRequired(MESError):
    status, slug, title = 403, "terminal-required", "This action needs a registered terminal"


class RateLimited(MESError):
    status, slug, title = 429, "rate-limited", "Too many attempts"
