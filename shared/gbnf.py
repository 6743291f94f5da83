"""GBNF rule bodies for the JSON Schema keywords llama-cpp-python's converter ignores:
integer and number ranges, ``multipleOf``, the ``email`` format and ``pattern``.

Pure functions, each returning one rule body (llama.cpp's GBNF, what follows
``name ::=``) or raising :class:`RuleError` naming what cannot be expressed;
:mod:`shared.json_grammar` turns that into a refusal naming the keyword and path.

What must always hold, and why:

- Every text a rule admits is a value the keyword accepts (the grammar may admit
  fewer: numbers are written without exponent and with at most 15 fraction
  digits, an unbounded integer with at most :data:`MAX_DIGITS` digits, a
  pattern's ``.`` or ``[^...]`` never produces a character a JSON string must
  escape). Narrower is safe; wider would be a wrong answer.
- A pattern's rule is the *inside* of a JSON string, as raw JSON text: a ``"``,
  ``\\`` or control character the regex admits is written in its escaped JSON
  form (``\\"``), never raw, so the string always parses.
- Sizes stay small: a range is O(digits²) characters; repetition counts are the
  caller's to bound (:class:`shared.json_grammar.GrammarBudget`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

MAX_NESTING = 32  # groups inside groups in a pattern
LLAMA_REPETITIONS = 2000  # llama.cpp's parser refuses an {m,...} with m over this
MAX_DIGITS = 16  # an integer with no upper bound: at most this many digits (the converter's)
MAX_BOUND_DIGITS = 30  # a bound with more digits is refused
FRACTION = '("." [0-9]{1,15})'
NONZERO_FRACTION = '("." "0"{0,14} [1-9] [0-9]{0,14})'
ZERO_FRACTION = '("." "0"{1,15})'


class RuleError(ValueError):
    """What a keyword asks cannot be written as a grammar rule (the message says why)."""


# --- integers ----------------------------------------------------------------------------


def _digits(low: str, high: str) -> list[str]:
    """Alternatives (each a GBNF sequence) for the integers low..high, both written
    with the same number of digits (low <= high)."""
    if low == high:
        return [f'"{low}"']
    if len(low) == 1:
        return [f"[{low}-{high}]"]
    rest = len(low) - 1
    if low[0] == high[0]:
        return [f'"{low[0]}" ({" | ".join(_digits(low[1:], high[1:]))})']
    out: list[str] = []
    first, last = int(low[0]), int(high[0])
    if low[1:] != "0" * rest:
        out.append(f'"{low[0]}" ({" | ".join(_digits(low[1:], "9" * rest))})')
        first += 1
    if high[1:] != "9" * rest:
        last -= 1
    if first <= last:
        out.append(f"[{first}-{last}] [0-9]{{{rest}}}")
    if high[1:] != "9" * rest:
        out.append(f'"{high[0]}" ({" | ".join(_digits("0" * rest, high[1:]))})')
    return out


def _magnitude(low: int, high: int | None) -> list[str]:
    """Alternatives for the integers low..high (high None: no bound), low >= 0,
    written without leading zeros."""
    out: list[str] = []
    top = high if high is not None else 10 ** max(len(str(low)), 1) - 1
    for n in range(len(str(low)), len(str(top)) + 1):
        first = max(low, 10 ** (n - 1) if n > 1 else 0)
        last = min(top, 10 ** n - 1)
        if first <= last:
            out += _digits(str(first), str(last))
    if high is None and len(str(low)) < MAX_DIGITS:
        out.append(f"[1-9] [0-9]{{{len(str(low))},{MAX_DIGITS - 1}}}")
    return out


def _alts(alternatives: list[str]) -> str:
    return "(" + " | ".join(alternatives) + ")"


def _check_digits(*bounds: int | None) -> None:
    for b in bounds:
        if b is not None and len(str(abs(b))) > MAX_BOUND_DIGITS:
            raise RuleError(f"a bound of more than {MAX_BOUND_DIGITS} digits")


def integer_range(low: int | None, high: int | None) -> str:
    """The integers low..high (inclusive; None: unbounded on that side)."""
    _check_digits(low, high)
    if low is not None and high is not None and low > high:
        raise RuleError(f"no integer is between {low} and {high}")
    if low is not None and low >= 0:
        return _alts(_magnitude(low, high))
    if high is not None and high < 0:
        return f'"-" {_alts(_magnitude(-high, None if low is None else -low))}'
    negative = f'"-" {_alts(_magnitude(1, None if low is None else -low))}'
    return _alts([negative, *_magnitude(0, high)])


def integer_multiples(step: int, low: int | None, high: int | None,
                      max_values: int) -> str:
    """The multiples of ``step`` in low..high: listed when both bounds are given and
    there are at most ``max_values``; by their last two digits when there is no bound
    and ``step`` divides 100; otherwise refused."""
    if step <= 0:
        raise RuleError("multipleOf must be positive")
    if step == 1:
        return integer_range(low, high)
    if low is not None and high is not None:
        first = -(-low // step) * step
        if first > high:
            raise RuleError(f"no multiple of {step} is between {low} and {high}")
        if (high - first) // step + 1 > max_values:
            raise RuleError(f"more than {max_values} multiples of {step} between the bounds")
        return _alts([f'"{v}"' for v in range(first, high + 1, step)])
    if low is not None or high is not None or 100 % step:
        raise RuleError("multipleOf is enforced for an integer with both bounds, or with "
                        "none and a step dividing 100")
    small = [f'"{v}"' for v in range(0, 100, step)]
    ends = _alts([f'"{v:02d}"' for v in range(0, 100, step)])
    return f'"-"? ({" | ".join(small)} | [1-9] [0-9]{{0,{MAX_DIGITS - 3}}} {ends})'


# --- numbers -----------------------------------------------------------------------------


def _real_magnitude(low: int, low_open: bool, high: int | None, high_open: bool) -> list[str]:
    """Alternatives for the non-negative decimals in the interval (integer ends)."""
    if high is not None and high == low:
        return [] if low_open or high_open else [f'"{low}" {ZERO_FRACTION}?']
    at_low = f'"{low}" {NONZERO_FRACTION}' if low_open else f'"{low}" {FRACTION}?'
    inner_high = None if high is None else high - 1
    out = [at_low]
    if inner_high is None or inner_high >= low + 1:
        out.append(f"{_alts(_magnitude(low + 1, inner_high))} {FRACTION}?")
    if high is not None and not high_open:
        out.append(f'"{high}" {ZERO_FRACTION}?')
    return out


@dataclass(frozen=True)
class Bound:
    value: int
    open: bool  # exclusive


def _value(bound: Bound | None, sign: int = 1) -> int | None:
    return None if bound is None else sign * bound.value


def _open(bound: Bound | None) -> bool:
    return bound is not None and bound.open


def number_range(low: Bound | None, high: Bound | None) -> str:
    """The decimals between two integer bounds (None: unbounded on that side)."""
    _check_digits(_value(low), _value(high))
    if low is not None and high is not None and (
            low.value > high.value or (low.value == high.value and (low.open or high.open))):
        raise RuleError(f"no number is between {low.value} and {high.value}")
    if low is not None and low.value >= 0:
        return _alts(_real_magnitude(low.value, low.open, _value(high), _open(high)))
    if high is not None and high.value <= 0:
        # -x for x in [-high, -low]; 0 itself only as "-0" when high is 0 and closed
        return f'"-" {_alts(_real_magnitude(-high.value, high.open, _value(low, -1), _open(low)))}'
    negative = _real_magnitude(0, True, _value(low, -1), _open(low))
    positive = _real_magnitude(0, False, _value(high), _open(high))
    return _alts([f'"-" {_alts(negative)}', *positive])


# --- email -------------------------------------------------------------------------------

# A practical subset of RFC 5321 addresses: dot-separated atoms of letters, digits and
# ._%+- before the @, a domain of letter-digit-hyphen labels with a final alphabetic one.
EMAIL = ('[A-Za-z0-9_%+-]{1,64} ("." [A-Za-z0-9_%+-]{1,64}){0,8} "@" '
         '([A-Za-z0-9] [A-Za-z0-9-]{0,62} "."){1,8} [A-Za-z]{2,24}')


# --- dates and times ---------------------------------------------------------------------

# RFC 3339 as JSON Schema's formats have it (a time needs its offset); the converter's
# own rule takes exactly three fraction digits, pydantic writes six: here 1 to 9.
DATE = ('[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [1-2] [0-9] | "3" [0-1])')
TIME = ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,9})? '
        '("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])')
FORMATS = {"date": DATE, "time": TIME, "date-time": f'{DATE} "T" {TIME}', "email": EMAIL}


# --- patterns ----------------------------------------------------------------------------

_SAFE_EXCLUDED = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]
_MAX_CHAR = 0x10FFFF
_CLASS_ESCAPES: dict[str, list[tuple[int, int]]] = {
    "d": [(0x30, 0x39)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "s": [(0x09, 0x0D), (0x20, 0x20)],
}
_CONTROL_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
_META = set("^$\\.*+?()[]{}|/-")


def _json_text(char: str) -> str:
    """How ``char`` is written inside a JSON string."""
    return json.dumps(char)[1:-1]


def _literal(text: str) -> str:
    """A GBNF literal matching ``text`` exactly."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{out}"'


def _char_literal(char: str) -> str:
    """The GBNF for one character of the string's value, as JSON text."""
    return _literal(_json_text(char))


def _class_char(code: int) -> str:
    return f"\\U{code:08X}" if code > 0xFFFF else f"\\u{code:04X}" if code > 0x7E or (
        not chr(code).isalnum()) else chr(code)


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, start = [], 0
    for low, high in sorted(ranges):
        if low > start:
            out.append((start, low - 1))
        start = max(start, high + 1)
    if start <= _MAX_CHAR:
        out.append((start, _MAX_CHAR))
    return out


def _intersect_safe(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges without the characters a JSON string cannot hold raw."""
    out = []
    for low, high in ranges:
        start = low
        for ex_low, ex_high in _SAFE_EXCLUDED:
            if ex_high < start or ex_low > high:
                continue
            if ex_low > start:
                out.append((start, ex_low - 1))
            start = ex_high + 1
        if start <= high:
            out.append((start, high))
    return out


def _set_rule(ranges: list[tuple[int, int]], negated: bool) -> str:
    """A character set as JSON text: the raw characters it holds as a class, and (not
    negated) the ones JSON must escape in their escaped form; a negated set never
    produces those (narrower, never wrong)."""
    if negated:
        ranges = _complement(ranges)
    safe = _intersect_safe(ranges)
    parts = []
    if safe:
        parts.append("[" + "".join(_class_char(a) if a == b else
                                   f"{_class_char(a)}-{_class_char(b)}" for a, b in safe) + "]")
    if not negated:  # the few characters JSON escapes, never a walk over the whole range
        parts += [_char_literal(chr(c)) for a, b in _SAFE_EXCLUDED for c in range(a, b + 1)
                  if any(low <= c <= high for low, high in ranges)]
    if not parts:
        raise RuleError("a character class that admits no character")
    return parts[0] if len(parts) == 1 else _alts(parts)


DOT = _set_rule([(0x0A, 0x0A), (0x0D, 0x0D)], negated=True)


class _Pattern:
    """A recursive-descent reader of the ECMA-262 subset: literals, ``.``, classes
    (``[a-z]``, ``[^,]``, ``\\d \\w \\s`` and their negations), groups (``(...)``,
    ``(?:...)``), alternatives, ``* + ?`` and ``{m}``, ``{m,}``, ``{m,n}`` (a trailing
    lazy ``?`` changes nothing for a whole-string match), ``^`` first and ``$`` last."""

    def __init__(self, pattern: str, check_repeat: Callable[[int, int | None], None]) -> None:
        self.text, self.i, self.depth = pattern, 0, 0
        self.check_repeat = check_repeat

    def fail(self, message: str) -> RuleError:
        shown = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return RuleError(f"{message} (at {self.i} in /{shown}/)")

    def peek(self) -> str:
        return self.text[self.i:self.i + 1]

    def rule(self) -> str:
        start = self.peek() == "^"
        self.i += start
        end = self.text.endswith("$") and not self.text.endswith("\\$")
        body = self.text[:-1] if end else self.text
        self.text = body
        inner = self.alternatives()
        if self.i < len(self.text):
            raise self.fail(f"unexpected {self.peek()!r}")
        free = f"{DOT}*"
        return " ".join(p for p in ("" if start else free, f"({inner})", "" if end else free)
                        if p)

    def alternatives(self) -> str:
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        return " | ".join(o or '""' for o in options)

    def sequence(self) -> str:
        items = []
        while self.peek() and self.peek() not in "|)":
            atom = self.atom()
            items.append(atom + self.quantifier())
        return " ".join(items)

    def atom(self) -> str:
        c = self.peek()
        self.i += 1
        if c == "(":
            return self.group()
        if c == "[":
            return self.char_class()
        if c == ".":
            return DOT
        if c == "\\":
            return self.escape()
        if c in "^$":
            raise self.fail(f"`{c}` is supported only first (^) and last ($)")
        if c in "*+?{":
            raise self.fail(f"nothing to repeat before {c!r}")
        return _char_literal(c)

    def group(self) -> str:
        if self.text.startswith("?:", self.i):
            self.i += 2
        elif self.peek() == "?":
            raise self.fail("lookarounds and named groups are not supported")
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(f"groups nested deeper than {MAX_NESTING}")
        inner = self.alternatives()
        self.depth -= 1
        if self.peek() != ")":
            raise self.fail("unbalanced (")
        self.i += 1
        return f"({inner})"

    def escape(self) -> str:
        c = self.peek()
        self.i += 1
        if not c:
            raise self.fail("a trailing backslash")
        if c.lower() in _CLASS_ESCAPES:
            return _set_rule(_CLASS_ESCAPES[c.lower()], negated=c.isupper())
        return _char_literal(self.escaped_char(c))

    def escaped_char(self, c: str) -> str:
        if c in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[c]
        if c in "ux":
            size = 4 if c == "u" else 2
            digits = self.text[self.i:self.i + size]
            if len(digits) != size or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {size} hex digits")
            self.i += size
            return chr(int(digits, 16))
        if c in _META or not c.isalnum():
            return c
        raise self.fail(f"`\\{c}` is not supported (back-references, \\b and the like)")

    def char_class(self) -> str:
        negated = self.peek() == "^"
        self.i += negated
        ranges: list[tuple[int, int]] = []
        first = True
        while first or self.peek() != "]":
            first = False
            if not self.peek():
                raise self.fail("unbalanced [")
            ranges += self.class_item()
        self.i += 1
        return _set_rule(ranges, negated)

    def class_item(self) -> list[tuple[int, int]]:
        low = self.class_char()
        if isinstance(low, list):
            return low
        if self.peek() == "-" and self.text[self.i + 1:self.i + 2] not in ("]", ""):
            self.i += 1
            high = self.class_char()
            if isinstance(high, list) or ord(high) < ord(low):
                raise self.fail("an invalid range in a character class")
            return [(ord(low), ord(high))]
        return [(ord(low), ord(low))]

    def class_char(self) -> str | list[tuple[int, int]]:
        c = self.peek()
        self.i += 1
        if c != "\\":
            return c
        e = self.peek()
        self.i += 1
        if e.lower() in _CLASS_ESCAPES:
            ranges = _CLASS_ESCAPES[e.lower()]
            return _complement(ranges) if e.isupper() else ranges
        if e == "b":
            return "\b"
        return self.escaped_char(e)

    def quantifier(self) -> str:
        c = self.peek()
        if c in ("*", "+", "?") and c:
            self.i += 1
            self.lazy()
            return c
        if c != "{":
            return ""
        close = self.text.find("}", self.i)
        parts = [p.strip() for p in self.text[self.i + 1:close].split(",")] if close > 0 else []
        if not parts or len(parts) > 2 or not all(p.isdigit() for p in parts if p) or (
                not parts[0]):
            raise self.fail("an invalid {m,n} quantifier")
        low = int(parts[0])
        high = low if len(parts) == 1 else int(parts[1]) if parts[1] else None
        self.check_repeat(low, high)
        if low > LLAMA_REPETITIONS:
            raise self.fail(f"a quantifier's minimum over {LLAMA_REPETITIONS}")
        self.i = close + 1
        self.lazy()
        return f"{{{low}}}" if high == low else f"{{{low},{'' if high is None else high}}}"

    def lazy(self) -> None:
        if self.peek() == "?":
            self.i += 1


def pattern_rule(pattern: str, check_repeat: Callable[[int, int | None], None]) -> str:
    """The inside of a JSON string (as JSON text) whose value ``pattern`` matches:
    anchored at the ends it is anchored at, free (any characters) at the others.
    ``check_repeat(low, high)`` raises for a ``{m,n}`` over the caller's budget."""
    return _Pattern(pattern, check_repeat).rule()
