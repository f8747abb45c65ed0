"""Read an etsy statsd configuration file: a JavaScript object literal, without running it.

etsy statsd ``eval``s its configuration file, so real files use whatever JavaScript allows
in a literal: ``//`` and ``/* */`` comments, unquoted keys, single or double quoted strings
with escapes, trailing commas, hex and signed numbers, regular-expression literals (the
AppOptics and Librato backends document ``includeMetrics: [/^my\\.metric/]``), and a
``( ... )`` wrapper or a trailing ``;``.  This module accepts exactly those literals and
refuses anything that would need evaluation (``require('os').hostname()``, ``"a" + "b"``,
``process.env.X``) with an `EtsyConfigError` that names the line and column.

Values come back as plain Python: dict (keys in file order; a repeated key keeps its first
position and its last value, as in JavaScript), list, str, int (integer literals), float,
bool, None (``null`` and ``undefined``) and `JsRegExp`.  Any exception other than
`EtsyConfigError` raised on any text is a bug.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

# Nesting deeper than this is refused rather than allowed to exhaust Python's recursion
# limit; real configurations nest three or four levels.
MAX_DEPTH = 64
# Decimal integer literals longer than this are read as floats: a JavaScript number is a
# double anyway, and Python refuses int() on strings past 4,300 digits.
MAX_INT_DIGITS = 4000

# JavaScript's WhiteSpace and LineTerminator characters.
_SPACE = frozenset(
    "\t\n\v\f\r \xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_LINE_END = frozenset("\n\r\u2028\u2029")
_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_WORDS: dict[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "undefined": None,
    "Infinity": math.inf,
    "NaN": math.nan,
}
_HEX = frozenset("0123456789abcdefABCDEF")
_OCTAL = frozenset("01234567")
_DIGITS = frozenset("0123456789")
_RADIX = {"x": 16, "o": 8, "b": 2}
# Unicode categories of JavaScript's ID_Start and ID_Continue characters.
_ID_START = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nl"})
_ID_PART = _ID_START | {"Mn", "Mc", "Nd", "Pc"}
_ID_JOINERS = frozenset({"$", "\u200c", "\u200d"})
# Keys whose values are secrets (``token``, ``apiKey``, ``password``...): an error inside
# such a value names the line and column but quotes none of its text.
_SECRET_KEY = re.compile(r"token|key|secret|pass|auth|credential", re.IGNORECASE)
HIDDEN = "(text not shown: it is the value of a secret)"


class EtsyConfigError(ValueError):
    """The file is not a literal this reader understands; the message says where and why."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        self.line = line
        self.column = column
        self.reason = message
        super().__init__(f"{line}:{column}: {message}" if line else message)


@dataclass(frozen=True, slots=True)
class JsRegExp:
    """A regular-expression literal ``/source/flags``, kept as written."""

    source: str
    flags: str = ""

    def __str__(self) -> str:
        return f"/{self.source}/{self.flags}"


def load_config(path: Path) -> dict[str, Any]:
    """Read and parse the file at ``path``; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise EtsyConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise EtsyConfigError(f"{path}: not UTF-8 text ({error.reason})") from None
    try:
        return parse_config(text)
    except EtsyConfigError as error:
        raise EtsyConfigError(f"{path}:{error}") from None


def parse_config(text: str) -> dict[str, Any]:
    """The object literal in ``text``, optionally wrapped in parentheses and ending in ``;``."""
    return _Parser(text).document()


def is_identifier(name: str) -> bool:
    """True when ``name`` can be written as an unquoted key (a JavaScript IdentifierName)."""
    return bool(name) and _is_id_start(name[0]) and all(_is_id_part(c) for c in name[1:])


def _is_id_start(char: str) -> bool:
    return char in ("$", "_") or (len(char) == 1 and unicodedata.category(char) in _ID_START)


def _is_id_part(char: str) -> bool:
    return char in _ID_JOINERS or (len(char) == 1 and unicodedata.category(char) in _ID_PART)


class _Parser:
    """Recursive descent over the text; ``pos`` always points at the next unread character."""

    def __init__(self, text: str) -> None:
        self.text = text.removeprefix("\ufeff")
        self.pos = 0
        self.depth = 0
        self.in_secret = False  # parsing the value of a key that names a secret

    # --- errors and scanning ----------------------------------------------------------------

    def fail(self, message: str, at: int | None = None) -> EtsyConfigError:
        where = self.pos if at is None else at
        line = self.text.count("\n", 0, where) + 1
        column = where - (self.text.rfind("\n", 0, where) + 1) + 1
        return EtsyConfigError(message, line, column)

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def describe_here(self) -> str:
        char = self.peek()
        return "end of file" if not char else self.quote(char)

    def quote(self, text: str) -> str:
        """``text`` quoted for an error message, unless it is part of a secret."""
        return HIDDEN if self.in_secret else repr(text)

    def skip_space(self) -> None:
        """Skip whitespace and comments."""
        text, end = self.text, len(self.text)
        while self.pos < end:
            char = text[self.pos]
            if char in _SPACE:
                self.pos += 1
            elif text.startswith("//", self.pos):
                while self.pos < end and text[self.pos] not in _LINE_END:
                    self.pos += 1
            elif text.startswith("/*", self.pos):
                close = text.find("*/", self.pos + 2)
                if close < 0:
                    raise self.fail("unterminated /* comment")
                self.pos = close + 2
            else:
                return

    def expect(self, char: str) -> None:
        self.skip_space()
        if self.peek() != char:
            raise self.fail(f"expected {char!r}, found {self.describe_here()}")
        self.pos += 1

    # --- grammar ----------------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        self.skip_space()
        value = self.value()
        if not isinstance(value, dict):
            raise self.fail("the configuration must be an object literal { ... }", 0)
        self.skip_space()
        while self.peek() == ";":
            self.pos += 1
            self.skip_space()
        if self.pos < len(self.text):
            raise self.fail(
                f"unexpected {self.describe_here()} after the configuration object"
                " (statsd-ao reads literal values only, not JavaScript expressions)"
            )
        return value

    def value(self) -> Any:
        self.skip_space()
        char = self.peek()
        if not char:
            raise self.fail("expected a value, found end of file")
        if char in "{[(":
            return self.nested(char)
        if char in "'\"":
            return self.string()
        if char == "/":
            return self.regexp()
        if char in "+-":
            return self.signed_number()
        if char in _DIGITS or (char == "." and self.peek(1) in _DIGITS):
            return self.number()
        return self.word()

    def nested(self, char: str) -> Any:
        """An object, an array, or a value in parentheses."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nested more than {MAX_DEPTH} levels deep")
        try:
            if char == "{":
                return self.object()
            if char == "[":
                return self.array()
            self.pos += 1
            inner = self.value()
            self.expect(")")
            return inner
        finally:
            self.depth -= 1

    def word(self) -> Any:
        """``true``, ``false``, ``null``, ``undefined``, ``Infinity``, ``NaN``; nothing else."""
        start = self.pos
        if not _is_id_start(self.peek()):
            raise self.fail(f"expected a value, found {self.describe_here()}")
        word = self.identifier()
        if word not in _WORDS:
            raise self.fail(
                f"unsupported JavaScript expression starting with {self.quote(word)}"
                " (statsd-ao reads literal values only)",
                start,
            )
        return _WORDS[word]

    def object(self) -> dict[str, Any]:
        self.pos += 1  # {
        result: dict[str, Any] = {}
        while True:
            self.skip_space()
            if self.peek() == "}":
                self.pos += 1
                return result
            key = self.key()
            self.expect(":")
            outer, self.in_secret = self.in_secret, self.in_secret or bool(_SECRET_KEY.search(key))
            result[key] = self.value()
            self.in_secret = outer
            self.skip_space()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "}":
                raise self.fail(f"expected ',' or '}}' after a value, found {self.describe_here()}")

    def key(self) -> str:
        char = self.peek()
        if not char:
            raise self.fail("expected a key, found end of file")
        if char in "'\"":
            return self.string()
        if char in _DIGITS or (char == "." and self.peek(1) in _DIGITS):
            return js_number_string(self.number())
        if char and _is_id_start(char):
            return self.identifier()
        raise self.fail(f"expected a key, found {self.describe_here()}")

    def array(self) -> list[Any]:
        self.pos += 1  # [
        result: list[Any] = []
        while True:
            self.skip_space()
            if self.peek() == "]":
                self.pos += 1
                return result
            if self.peek() == ",":
                raise self.fail("empty array element (two commas in a row)")
            result.append(self.value())
            self.skip_space()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "]":
                raise self.fail(f"expected ',' or ']' after a value, found {self.describe_here()}")

    def identifier(self) -> str:
        start = self.pos
        self.pos += 1
        while self.pos < len(self.text) and _is_id_part(self.text[self.pos]):
            self.pos += 1
        return self.text[start : self.pos]

    # --- strings ----------------------------------------------------------------------------

    def string(self) -> str:
        quote = self.text[self.pos]
        start = self.pos
        self.pos += 1
        parts: list[str] = []
        text, end = self.text, len(self.text)
        while True:
            run = self.pos
            while self.pos < end and text[self.pos] not in (quote, "\\", "\n", "\r"):
                self.pos += 1
            parts.append(text[run : self.pos])
            if self.pos >= end or text[self.pos] in "\n\r":
                raise self.fail("unterminated string", start)
            if text[self.pos] == quote:
                self.pos += 1
                return _join_surrogates("".join(parts))
            self.pos += 1  # backslash
            parts.append(self.escape())

    def escape(self) -> str:
        """The character(s) meant by the escape after a backslash (sloppy-mode rules)."""
        char = self.peek()
        if not char:
            raise self.fail("unterminated string")
        self.pos += 1
        if char in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[char]
        if char in _LINE_END:  # a line continuation; \r\n counts as one line end
            if char == "\r" and self.peek() == "\n":
                self.pos += 1
            return ""
        if char == "x":
            return chr(self.hex_digits(2))
        if char == "u":
            return self.unicode_escape()
        if char in _OCTAL:
            return self.octal_escape(char)
        return char  # \' \" \\ \/ and any other character stand for themselves

    def hex_digits(self, count: int) -> int:
        digits = self.text[self.pos : self.pos + count]
        if len(digits) != count or not all(c in _HEX for c in digits):
            raise self.fail(f"expected {count} hexadecimal digits in an escape")
        self.pos += count
        return int(digits, 16)

    def unicode_escape(self) -> str:
        if self.peek() != "{":
            return chr(self.hex_digits(4))
        close = self.text.find("}", self.pos)
        digits = self.text[self.pos + 1 : close] if close > 0 else ""
        if not digits or len(digits) > 8 or not all(c in _HEX for c in digits):
            raise self.fail("malformed \\u{...} escape")
        code = int(digits, 16)
        if code > 0x10FFFF:
            raise self.fail("\\u{...} escape beyond U+10FFFF")
        self.pos = close + 1
        return chr(code)

    def octal_escape(self, first: str) -> str:
        digits = first
        limit = 3 if first in "0123" else 2
        while len(digits) < limit and self.peek() in _OCTAL:
            digits += self.peek()
            self.pos += 1
        return chr(int(digits, 8))

    # --- numbers and regular expressions ----------------------------------------------------

    def signed_number(self) -> float | int:
        sign = self.text[self.pos]
        self.pos += 1
        self.skip_space()
        char = self.peek()
        if char in _DIGITS or (char == "." and self.peek(1) in _DIGITS):
            number = self.number()
        elif self.text.startswith("Infinity", self.pos) or self.text.startswith("NaN", self.pos):
            number = _WORDS[self.identifier()]
        else:
            raise self.fail(f"expected a number after {sign!r}")
        return -number if sign == "-" else number

    def number(self) -> float | int:
        start = self.pos
        if self.text[start] == "0" and self.peek(1).lower() in _RADIX:
            return self.radix_number()
        self.digits()
        integer = self.text[start : self.pos]
        is_float = self.peek() in (".", "e", "E")
        if self.peek() == ".":
            self.pos += 1
            self.digits()
        if self.peek() in ("e", "E"):
            self.pos += 1
            if self.peek() in ("+", "-"):
                self.pos += 1
            if self.peek() not in _DIGITS:
                raise self.fail("malformed exponent in a number", start)
            self.digits()
        if self.peek() and (_is_id_start(self.peek()) or self.peek() in _DIGITS):
            malformed = self.quote(self.text[start : self.pos + 1])
            raise self.fail(f"malformed number {malformed}", start)
        if is_float:
            return float(self.text[start : self.pos])
        if len(integer) > 1 and integer[0] == "0" and all(c in _OCTAL for c in integer):
            return int(integer, 8)  # sloppy-mode legacy octal: 0755
        return float(integer) if len(integer) > MAX_INT_DIGITS else int(integer)

    def digits(self) -> None:
        while self.peek() in _DIGITS:
            self.pos += 1

    def radix_number(self) -> int:
        """``0x1F``, ``0o17``, ``0b101``."""
        start = self.pos
        radix = _RADIX[self.peek(1).lower()]
        self.pos += 2
        while self.peek().isalnum():
            self.pos += 1
        try:
            return int(self.text[start + 2 : self.pos], radix)
        except ValueError:
            malformed = self.quote(self.text[start : self.pos])
            raise self.fail(f"malformed number {malformed}", start) from None

    def regexp(self) -> JsRegExp:
        start = self.pos
        self.pos += 1
        in_class = False
        text, end = self.text, len(self.text)
        while True:
            if self.pos >= end or text[self.pos] in _LINE_END:
                raise self.fail("unterminated regular expression", start)
            char = text[self.pos]
            self.pos += 1
            if char == "\\":
                if self.pos >= end or text[self.pos] in _LINE_END:
                    raise self.fail("unterminated regular expression", start)
                self.pos += 1
            elif char == "[":
                in_class = True
            elif char == "]":
                in_class = False
            elif char == "/" and not in_class:
                break
        source = text[start + 1 : self.pos - 1]
        flags_start = self.pos
        while self.peek() and _is_id_part(self.peek()):
            self.pos += 1
        flags = text[flags_start : self.pos]
        if not source or set(flags) - set("dgimsuvy") or len(set(flags)) != len(flags):
            malformed = self.quote(text[start : self.pos])
            raise self.fail(f"malformed regular expression {malformed}", start)
        return JsRegExp(source, flags)


def _join_surrogates(text: str) -> str:
    """Combine escaped UTF-16 surrogate pairs (``\\ud83d\\ude00``) into one character."""
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    try:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        return text  # a lone surrogate stays as it is, as in JavaScript


def js_number_string(value: float) -> str:
    """JavaScript's ``String(number)``: ``1``, ``1.5``, ``1e+21``, ``1e-7``, ``NaN``."""
    if isinstance(value, int) and abs(value) < 2**53:
        return str(value)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf if value > 0 else -math.inf
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    # Python's repr and JavaScript both print the shortest digits that read back exactly.
    _, digit_tuple, exponent = Decimal(repr(abs(number))).as_tuple()
    if not isinstance(exponent, int):  # pragma: no cover - finite numbers have int exponents
        return repr(number)
    digits = "".join(map(str, digit_tuple))
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    # point: where the decimal point goes relative to the digits (ECMA-262 Number::toString).
    point = exponent + len(digits)
    k = len(digits)
    if k <= point <= 21:
        text = digits + "0" * (point - k)
    elif 0 < point <= 21:
        text = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        power = point - 1
        mark = "+" if power >= 0 else "-"
        head = digits[0] if k == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{head}e{mark}{abs(power)}"
    return sign + text
