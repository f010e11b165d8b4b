"""The one set of input rules every feature package uses: ids, required and optional text
with length caps, and the "not known" lookup.

Each rule raises the project's own errors (:mod:`mes.errors`) with a plain sentence and the
field it is about, so the API answers 422/404 problem+json, the CLI one line, and the kiosk
a sentence. The caps match the database columns (``String(64)``, ``String(200)``) or, for
free text kept in ``Text`` columns (reasons, comments), a limit a person can review; a value
over a cap is refused, never cut short.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar

from sqlalchemy import BigInteger

from mes.db import db
from mes.errors import NotFound, ValidationFailed

__all__ = [
    "ID_JSON_PATTERN",
    "ID_MAX",
    "ID_PATTERN",
    "ID_RE",
    "NAME_MAX",
    "SHORT_MAX",
    "TEXT_MAX",
    "BODY_MAX",
    "BODY_STRING_MAX",
    "JSON_DEPTH_MAX",
    "check_plain",
    "get_or_404",
    "hidden_character",
    "identifier",
    "optional_text",
    "required_text",
]

T = TypeVar("T")

ID_MAX: Final = 64
"""Ids (items, lots, containers, holds, batches, equipment, lines, terminals, users)."""
ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
"""1 to 64 ASCII letters, digits, dots, dashes or underscores, starting with a letter or digit."""
ID_RE: Final = re.compile(ID_PATTERN)
ID_JSON_PATTERN: Final = f"^{ID_PATTERN}$"
"""The same rule as a JSON Schema ``pattern`` (anchored), for request and config schemas."""

SHORT_MAX: Final = 64
"""Short codes and places: a location, a line, an NCR or step reference (``String(64)``)."""
NAME_MAX: Final = 200
"""Names and descriptions: an item name, an equipment class, a certificate (``String(200)``)."""
TEXT_MAX: Final = 2000
"""Free text: a reason, a comment, release conditions (``Text``)."""


BODY_STRING_MAX: Final = 4000
"""Any string in a JSON request body (evidence values included), unless its field's schema
states a larger ``maxLength`` (a recipe's YAML source)."""
BODY_MAX: Final = 256 * 1024
"""A JSON request body in bytes (413 above), unless a field of its schema allows more."""
FORM_MAX: Final = 256 * 1024
"""A form body (``application/x-www-form-urlencoded`` or ``multipart/form-data``: the kiosk's and
QA pages' posts) in bytes: 413 above, a plain sentence on a page, problem+json elsewhere. No form
carries a file; only a JSON body may be larger, and only where its schema says so."""
JSON_DEPTH_MAX: Final = 32
"""Nesting of objects and arrays in a JSON request body."""

#: C0 and C1 controls (tab, line feed and carriage return allowed in free text), and the
#: bidirectional embedding, override and isolate characters that make text read other than it is
_HIDDEN_RE: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_LINE_BREAK_RE: Final = re.compile("[\t\n\r]")


def hidden_character(text: str, *, multiline: bool = True) -> str | None:
    """The first control or bidirectional-override character in ``text`` (``U+202E``, NUL,
    ...), as ``U+XXXX``, or None. ``multiline=False`` (names, ids) refuses tab and line breaks too."""
    found = _HIDDEN_RE.search(text) or (None if multiline else _LINE_BREAK_RE.search(text))
    return f"U+{ord(found.group()):04X}" if found else None


def check_plain(text: str, what: str, field: str, *, multiline: bool = True) -> str:
    """``text`` if it holds no control or bidirectional-override character; ValidationFailed otherwise."""
    bad = hidden_character(text, multiline=multiline)
    if bad is not None:
        raise ValidationFailed(f"{what} contains a control or direction-override character ({bad}).", field=field)
    return text


def identifier(value: Any, what: str, field: str) -> str:
    """``value`` stripped, if it is an id (:data:`ID_PATTERN`); ValidationFailed otherwise.

    ``what`` names the id in the sentence (``"lot id"``), ``field`` is the input it came from.
    """
    text = value.strip() if isinstance(value, str) else ""
    if not ID_RE.fullmatch(text):
        raise ValidationFailed(f"A {what} is 1 to {ID_MAX} letters, digits, dots, dashes or underscores, "
                               "starting with a letter or digit.", field=field)
    return text


def required_text(value: Any, what: str, field: str, max_len: int = TEXT_MAX) -> str:
    """``value`` stripped: present, text, and at most ``max_len`` characters.

    ``what`` starts the sentence (``"A reason"`` -> "A reason is required.").
    """
    if value is not None and not isinstance(value, str):
        raise ValidationFailed(f"{what} must be text.", field=field)
    text = (value or "").strip()
    if not text:
        raise ValidationFailed(f"{what} is required.", field=field)
    if len(text) > max_len:
        raise ValidationFailed(f"{what} is at most {max_len} characters.", field=field)
    return check_plain(text, what, field, multiline=max_len > NAME_MAX)


def optional_text(value: Any, what: str, field: str, max_len: int = SHORT_MAX) -> str | None:
    """``value`` stripped, or None when it is missing or blank; at most ``max_len`` characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f"{what} must be text.", field=field)
    text = value.strip()
    if len(text) > max_len:
        raise ValidationFailed(f"{what} is at most {max_len} characters.", field=field)
    return check_plain(text, what, field, multiline=max_len > NAME_MAX) or None


def _int_key_limit(model: Any) -> int:
    """The integers a model's primary key column can hold (32 or 64 bits): a larger key names
    no row, and must not reach the database as an overflow."""
    columns = list(model.__table__.primary_key.columns)
    wide = len(columns) == 1 and isinstance(columns[0].type, BigInteger)
    return 2**63 if wide else 2**31


def get_or_404(model: type[T], key: Any, what: str | None = None, *, detail: str | None = None) -> T:
    """The ``model`` row with primary key ``key``, or NotFound with a plain sentence.

    The sentence is ``detail`` if given, else "<what> <key> is not known." (``what``
    defaults to the model's name). A key that is not a string or an integer cannot name a
    row and is not known either.
    """
    usable = (isinstance(key, str) and len(key) <= 200 and hidden_character(key, multiline=False) is None) or (
        isinstance(key, int) and not isinstance(key, bool) and abs(key) < _int_key_limit(model))  # beyond: no row
    row = db.session.get(model, key) if usable else None
    if row is None:
        raise NotFound(detail or f"{what or model.__name__} {key} is not known.")
    return row
