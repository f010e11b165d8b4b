"""The shape of an answer to "may this be used now?" (a lot, a piece of equipment): a
``code`` that is ``ok`` or says why not, true in a condition only when ``ok``, and its JSON."""

from __future__ import annotations

from typing import Any, ClassVar


class Verdict:
    """Base of the frozen dataclasses that answer a usability check.

    A subclass has a ``code`` field and names in ``json_fields`` the fields its JSON shows
    after ``ok``, in that order."""

    code: str
    json_fields: ClassVar[tuple[str, ...]] = ("code",)

    @property
    def ok(self) -> bool:
        """Whether the answer is yes (``code`` is ``ok``)."""
        return self.code == "ok"

    def __bool__(self) -> bool:
        return self.ok

    def as_json(self) -> dict[str, Any]:
        """``ok`` and the fields ``json_fields`` names."""
        return {"ok": self.ok, **{name: getattr(self, name) for name in self.json_fields}}
