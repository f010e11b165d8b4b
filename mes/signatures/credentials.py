"""The signature components a signer typed, taken from plain values (a request body already
parsed by the web layer, or a step payload): domain code builds :class:`Credentials` here,
never through a blueprint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mes.errors import ValidationFailed
from mes.signatures.operations import Credentials


def credentials_from(body: Mapping[str, Any]) -> Credentials:
    """The signature components from a body of plain values (secret: password or PIN)."""
    secret = body.get("password") or body.get("pin")
    if not secret:
        raise ValidationFailed("Signing needs your password (or PIN on a kiosk).", field="password")
    return Credentials(secret=secret, user_id=body.get("user_id"), badge=body.get("badge"))
