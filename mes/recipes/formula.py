"""Calculation formulas: a tiny, safe recursive-descent parser and exact evaluator.

The language is deliberately minimal, because a formula is shown to the operator and
reviewed by QA and must mean exactly one thing::

    expression := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*
    factor     := ("+" | "-") factor | primary
    primary    := DECIMAL | STEP_ID | "(" expression ")"

``DECIMAL`` is ``[0-9]+(.[0-9]+)?`` (no exponent), ``STEP_ID`` the id of an earlier step
(``[A-Za-z][A-Za-z0-9_]*``) whose recorded value is used. Nothing else exists: no names
other than step references, no attribute access, no function calls, no power operator,
no comparison. Python's ``eval``/``ast`` are never used.

Evaluation is exact: values are turned into fractions, the result is rounded once, with
ROUND_HALF_EVEN, to the requested decimals. Division by zero is a :class:`FormulaError`
that names the divisor sub-expression.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Final

from mes.quantities import exact_decimal, round_half_even

__all__ = ["Binary", "Formula", "FormulaError", "Num", "Ref", "Unary", "parse_formula"]

MAX_LENGTH: Final = 500
"""Longest formula accepted, in characters."""

MAX_DEPTH: Final = 32
"""Deepest nesting of parentheses and signs accepted."""

_TOKEN_RE = re.compile(
    r"(?P<ws>[ \t]+)|(?P<num>[0-9]+(?:\.[0-9]+)?)|(?P<name>[A-Za-z][A-Za-z0-9_]*)"
    r"|(?P<pow>\*\*)|(?P<op>[-+*/()])|(?P<other>.)",
    re.DOTALL,
)


class FormulaError(ValueError):
    """A formula cannot be parsed or evaluated; ``position`` is the 0-based character offset."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass(frozen=True, slots=True)
class Num:
    """A decimal literal."""

    value: Decimal
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to the recorded value of a step, by step id."""

    name: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Unary:
    """``+x`` or ``-x``."""

    op: str
    operand: Node
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Binary:
    """``left op right`` with op one of ``+ - * /``."""

    op: str
    left: Node
    right: Node
    start: int
    end: int


Node = Num | Ref | Unary | Binary


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # num, name, op, end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup or "other"
        value, pos = m.group(), m.start()
        if kind == "ws":
            continue
        if kind == "pow":
            raise FormulaError(f"'**' (power) is not supported at character {pos + 1}", pos)
        if kind == "other":
            if value == ".":
                if tokens and tokens[-1].kind == "name":
                    raise FormulaError(f"attribute access is not allowed: '.' after {tokens[-1].text!r} at character {pos + 1}", pos)
                raise FormulaError(f"a decimal number needs digits on both sides of '.' (character {pos + 1})", pos)
            if value == "_":
                raise FormulaError(f"names cannot start with '_' (character {pos + 1})", pos)
            if value in "[]{},;:=<>!%^&|~@'\"\\`?$#":
                raise FormulaError(f"{value!r} is not allowed in a formula (character {pos + 1}); "
                                   "use numbers, step ids, + - * / and parentheses", pos)
            raise FormulaError(f"unexpected character {value!r} at character {pos + 1}", pos)
        if kind == "num" and tokens and tokens[-1].kind in ("num", "name"):
            raise FormulaError(f"missing operator before {value!r} at character {pos + 1}", pos)
        if kind == "name" and tokens and tokens[-1].kind == "num":
            if value[0] in "eE" and value[1:].isdigit():
                raise FormulaError(f"exponent notation is not supported (character {pos + 1}); write the number out", pos)
            raise FormulaError(f"missing operator before {value!r} at character {pos + 1}", pos)
        tokens.append(_Token(kind if kind != "op" else "op", value, pos))
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise FormulaError("the formula is empty", 0)
        node = self.expression()
        if self.tok.kind != "end":
            tok = self.tok
            if tok.text == ")":
                raise FormulaError(f"unbalanced ')' at character {tok.pos + 1}", tok.pos)
            raise FormulaError(f"expected an operator, found {tok.text!r} at character {tok.pos + 1}", tok.pos)
        return node

    def expression(self) -> Node:
        node = self.term()
        while self.tok.kind == "op" and self.tok.text in "+-":
            op = self.take().text
            right = self.term()
            node = Binary(op, node, right, node.start, right.end)
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.tok.kind == "op" and self.tok.text in "*/":
            op = self.take().text
            right = self.factor()
            node = Binary(op, node, right, node.start, right.end)
        return node

    def factor(self) -> Node:
        tok = self.tok
        if tok.kind == "op" and tok.text in "+-":
            self.take()
            self.enter(tok.pos)
            operand = self.factor()
            self.depth -= 1
            return Unary(tok.text, operand, tok.pos, operand.end)
        return self.primary()

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FormulaError(f"the formula is nested too deeply (more than {MAX_DEPTH} levels)", pos)

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "num":
            return Num(Decimal(tok.text), tok.pos, tok.pos + len(tok.text))
        if tok.kind == "name":
            if self.tok.text == "(":
                raise FormulaError(f"function calls are not allowed: {tok.text}(...) at character {tok.pos + 1}", tok.pos)
            return Ref(tok.text, tok.pos, tok.pos + len(tok.text))
        if tok.text == "(":
            self.enter(tok.pos)
            inner = self.expression()
            close = self.take()
            if close.text != ")":
                raise FormulaError(f"missing ')' for the '(' at character {tok.pos + 1}", close.pos)
            self.depth -= 1
            return _respan(inner, tok.pos, close.pos + 1)
        if tok.kind == "end":
            raise FormulaError("the formula ends where a number, step id or '(' is expected", tok.pos)
        raise FormulaError(f"expected a number, step id or '(' at character {tok.pos + 1}, found {tok.text!r}", tok.pos)


def _respan(node: Node, start: int, end: int) -> Node:
    """The same node, spanning its parentheses (so error messages show them)."""
    if isinstance(node, Num):
        return Num(node.value, start, end)
    if isinstance(node, Ref):
        return Ref(node.name, start, end)
    if isinstance(node, Unary):
        return Unary(node.op, node.operand, start, end)
    return Binary(node.op, node.left, node.right, start, end)


@dataclass(frozen=True, slots=True)
class Formula:
    """A parsed formula: its text, syntax tree and the step ids it references (in order)."""

    text: str
    tree: Node
    references: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Formula:
        """Parse ``text``; FormulaError (with the character position) if it is not valid."""
        return parse_formula(text)

    def evaluate_exact(self, values: Mapping[str, Decimal]) -> Fraction:
        """The exact value for ``values`` (step id -> recorded Decimal value)."""
        return _eval(self.tree, values, self.text)

    def evaluate(self, values: Mapping[str, Decimal], places: int | None = None) -> Decimal:
        """The value rounded ROUND_HALF_EVEN to ``places`` decimals, computed exactly.

        With ``places=None`` the exact result is returned when it is a terminating decimal,
        otherwise it is rounded to 34 significant digits (the IEEE decimal128 precision).
        """
        exact = self.evaluate_exact(values)
        if places is not None:
            return round_half_even(exact, places)
        as_decimal = exact_decimal(exact)
        if as_decimal is not None:
            return as_decimal
        magnitude = abs(exact)
        digits = 0
        while magnitude >= 1:
            magnitude /= 10
            digits += 1
        return round_half_even(exact, max(0, 34 - digits))


@lru_cache(maxsize=512)
def parse_formula(text: str) -> Formula:
    """Parse a formula (cached: recipes reuse the same few formulas)."""
    if not isinstance(text, str):
        raise FormulaError("a formula is text")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"the formula is longer than {MAX_LENGTH} characters")
    if "\n" in text or "\r" in text:
        raise FormulaError("a formula is a single line")
    tree = _Parser(text).parse()
    refs: list[str] = []
    _collect(tree, refs)
    return Formula(text, tree, tuple(dict.fromkeys(refs)))


def _collect(node: Node, out: list[str]) -> None:
    if isinstance(node, Ref):
        out.append(node.name)
    elif isinstance(node, Unary):
        _collect(node.operand, out)
    elif isinstance(node, Binary):
        _collect(node.left, out)
        _collect(node.right, out)


def _eval(node: Node, values: Mapping[str, Decimal], text: str) -> Fraction:
    if isinstance(node, Num):
        return Fraction(node.value)
    if isinstance(node, Ref):
        if node.name not in values:
            raise FormulaError(f"no value for step {node.name!r}", node.start)
        value = values[node.name]
        if not isinstance(value, Decimal) or not value.is_finite():
            raise FormulaError(f"the value of step {node.name!r} is not a finite Decimal: {value!r}", node.start)
        return Fraction(value)
    if isinstance(node, Unary):
        operand = _eval(node.operand, values, text)
        return -operand if node.op == "-" else operand
    left = _eval(node.left, values, text)
    right = _eval(node.right, values, text)
    if node.op == "+":
        return left + right
    if node.op == "-":
        return left - right
    if node.op == "*":
        return left * right
    if right == 0:
        divisor = text[node.right.start:node.right.end].strip()
        raise FormulaError(f"division by zero: the divisor {divisor!r} is 0 in {text.strip()!r}", node.right.start)
    return left / right
