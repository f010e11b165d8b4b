"""Recipe problems and the one exception the recipe layer raises for bad recipes.

A :class:`Problem` says what is wrong, where in the recipe (a path such as
``procedure[0].operations[1].steps[2].target``) and, when the recipe came from YAML, the
line and column in the source, so that every message reads like a compiler error::

    recipes/x.yaml:42:7: procedure[0].operations[1].steps[2].target: '12.5kg' is not a decimal quantity

:class:`RecipeError` carries all problems found (not just the first) and is a
:class:`mes.errors.ValidationFailed`, so the API renders it as problem+json (422) and the
CLI as one line per problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mes.errors import ValidationFailed

__all__ = ["Path", "Problem", "RecipeError", "format_path"]

Path = tuple[str | int, ...]
"""A location inside a recipe document: mapping keys and list indexes from the root."""


def format_path(path: Path) -> str:
    """``("procedure", 0, "operations", 1, "id")`` -> ``procedure[0].operations[1].id``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a recipe; ``line``/``column`` are 1-based, None without a source."""

    message: str
    path: str = ""
    line: int | None = None
    column: int | None = None
    source: str | None = None

    def __str__(self) -> str:
        where = self.source or "<recipe>"
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        return f"{where}: {self.path or '(root)'}: {self.message}"

    def sort_key(self) -> tuple[int, int, str, str]:
        """Source order first, then path and message, so reports are stable."""
        return (self.line or 0, self.column or 0, self.path, self.message)


class RecipeError(ValidationFailed):
    """A recipe is not valid; ``problems`` lists every problem found, in source order."""

    slug = "recipe-invalid"
    title = "The recipe is not valid"

    def __init__(self, problems: Iterable[Problem]) -> None:
        unique = {(p.source, p.line, p.column, p.path, p.message): p for p in problems}
        self.problems: list[Problem] = sorted(unique.values(), key=Problem.sort_key)
        if not self.problems:
            self.problems = [Problem("the recipe is not valid")]
        count = len(self.problems)
        head = str(self.problems[0])
        detail = head if count == 1 else f"{head} (and {count - 1} more problem{'s' if count > 2 else ''})"
        super().__init__(detail, problems=[str(p) for p in self.problems])

    def messages(self) -> list[str]:
        """One ``source:line:col: path: message`` line per problem."""
        return [str(p) for p in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.messages())
