"""The filter language's tokens, scanned the way containerd's ``filters/scanner.go`` does
(input for input: which characters end a value, which escapes a quoted string takes, what is
illegal)."""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
from collections.abc import Iterable
from typing import TypeAlias

# Pseudo-characters returned by _Scanner.next_char; real characters are 1-char strings.
_EOF = ""
_BAD = "<illegal>"


class _Tok(enum.Enum):
    EOF = "EOF"
    QUOTED = "Quoted"
    VALUE = "Value"
    FIELD = "Field"
    SEPARATOR = "Separator"
    OPERATOR = "Operator"
    ILLEGAL = "Illegal"
    CHAR = "Char"  # any other single character


# Go's unicode.IsSpace.
_SPACES = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_QUOTES = frozenset('"/|')
_OPERATOR_RUN = re.compile(r"[=!~]*")
_FIELD_RUN = re.compile(r"[A-Za-z0-9_]*")
_ASCII_VALUE_RUN = re.compile(r"[!-+\--~]*")  # printable ASCII except "," and space
_SPECIAL_IN_QUOTES = {q: re.compile("[\\\\\n\0\ufffd\ud800-\udfff" + re.escape(q) + "]")
                      for q in _QUOTES}
_ESCAPE = re.compile(r"\\(?:[abfnrtv\\\"/|]|[0-7]{3}|x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}"
                     r"|U[0-9A-Fa-f]{8})")
_SIMPLE_ESCAPES = {"a": b"\a", "b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t",
                   "v": b"\v", "\\": b"\\", '"': b'"', "/": b"/", "|": b"|"}


def _is_digit(ch: str, base: int) -> bool:
    return len(ch) == 1 and ch in ("01234567" if base == 8 else "0123456789abcdefABCDEF")


class _Scanner:
    """Tokenizes a filter string the way containerd's scanner does.

    ``pos`` is the index of the character read last, ``off`` the index of the next one.
    ``err`` keeps the first problem seen, which is what an Illegal token reports.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.off = 0
        self.after_operator = False
        self.err = ""

    def _error(self, msg: str) -> None:
        if not self.err:
            self.err = msg

    def next_char(self) -> str:
        if self.off >= self.n:
            self.pos = self.n
            return _EOF
        self.pos = self.off
        ch = self.text[self.off]
        self.off += 1
        if ch == "\0":
            self._error("unexpected null")
            return _BAD
        if ch == "\ufffd" or "\ud800" <= ch <= "\udfff":
            # Go decodes UTF-8 and cannot tell U+FFFD from a decoding error.
            self._error("rune error")
            return _BAD
        return ch

    def peek_char(self) -> str:
        if self.off >= self.n:
            return _EOF
        ch = self.text[self.off]
        if ch == "\0":
            self._error("unexpected null")
            return _BAD
        if ch == "\ufffd" or "\ud800" <= ch <= "\udfff":
            self._error("rune error")
            return _BAD
        return ch

    def _advance_to(self, end: int) -> None:
        """Consume a run of ordinary characters ending before ``end``."""
        if end > self.off:
            self.pos, self.off = end - 1, end

    def scan(self) -> tuple[int, _Tok, str]:
        ch = self.next_char()
        while ch in _SPACES:
            ch = self.next_char()
        start = self.pos
        if ch == _EOF:
            return start, _Tok.EOF, ""
        if ch == _BAD:
            return start, _Tok.ILLEGAL, ""
        if ch in _QUOTES:
            kind = _Tok.QUOTED if self._scan_quoted(ch) else _Tok.ILLEGAL
            return start, kind, self.text[start:self.off]
        if ch == "," or ch == ".":
            self.after_operator = False
            return start, _Tok.SEPARATOR, ch
        if ch in "=!~":
            self._advance_to(_OPERATOR_RUN.match(self.text, self.off).end())
            self.after_operator = True
            return start, _Tok.OPERATOR, self.text[start:self.off]
        if self.after_operator:
            # Whatever starts a value, the rest of it is printable and not "," or space.
            self._advance_to(_value_end(self.text, self.off))
            self.after_operator = False
            return start, _Tok.VALUE, self.text[start:self.off]
        if "0" <= ch <= "9" or "A" <= ch <= "Z" or "a" <= ch <= "z" or ch == "_":
            self._advance_to(_FIELD_RUN.match(self.text, self.off).end())
            return start, _Tok.FIELD, self.text[start:self.off]
        return start, _Tok.CHAR, ch

    def _scan_quoted(self, quote: str) -> bool:
        """Consume a quoted string after its opening quote; False if it is malformed."""
        special = _SPECIAL_IN_QUOTES[quote]
        ok = True
        ch = self.next_char()
        while ch != quote:
            if ch == "\n" or ch == _EOF or ch == _BAD:
                self._error("quoted literal not terminated")
                return False
            if ch == "\\":
                ch, legal = self._scan_escape(quote)
                ok = ok and legal
                continue
            m = special.search(self.text, self.off)
            self._advance_to(m.start() if m else self.n)
            ch = self.next_char()
        return ok

    def _scan_escape(self, quote: str) -> tuple[str, bool]:
        """Consume an escape after its backslash; returns the character after it."""
        ch = self.next_char()
        if ch == quote or (len(ch) == 1 and ch in "abfnrtv\\"):
            return self.next_char(), True
        if len(ch) == 1 and ch in "01234567":
            return self._scan_digits(ch, 8, 3)
        if ch == "x":
            return self._scan_digits(self.next_char(), 16, 2)
        if ch == "u":
            return self._scan_digits(self.next_char(), 16, 4)
        if ch == "U":
            return self._scan_digits(self.next_char(), 16, 8)
        self._error("illegal escape sequence")
        return ch, False

    def _scan_digits(self, ch: str, base: int, count: int) -> tuple[str, bool]:
        while count > 0 and _is_digit(ch, base):
            ch = self.next_char()
            count -= 1
        if count > 0:
            self._error("illegal numeric escape sequence")
            return ch, False
        return ch, True


def _value_end(text: str, i: int) -> int:
    end = _ASCII_VALUE_RUN.match(text, i).end()
    if end < len(text) and text[end] >= "\x80":
        m = _value_stop().search(text, end)
        end = m.start() if m else len(text)
    return end


@functools.cache
def _value_stop() -> re.Pattern[str]:
    """What ends an unquoted non-ASCII value: ",", whitespace, U+FFFD or anything not a
    letter, mark, number, punctuation or symbol (Go's isValueRune). Built on first use (one
    pass over all code points, about 0.2 s)."""
    category = unicodedata.category
    graphic: Ranges = []
    for cp in range(0x110000):
        if category(chr(cp))[0] in "LMNPS":
            if graphic and graphic[-1][1] == cp - 1:
                graphic[-1] = (graphic[-1][0], cp)
            else:
                graphic.append((cp, cp))
    stops = _clean(_complement(graphic) + [(ord(c), ord(c)) for c in _SPACES | {",", "\ufffd"}])
    return re.compile(f"[{_class_body(stops)}]")


_MAX_RUNE = 0x10FFFF
Ranges: TypeAlias = list[tuple[int, int]]


def _clean(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: Ranges) -> Ranges:
    out: Ranges = []
    nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAX_RUNE:
        out.append((nxt, _MAX_RUNE))
    return out


def _escape_cp(cp: int) -> str:
    if cp < 0x80 and chr(cp).isalnum():
        return chr(cp)
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _class_body(ranges: Ranges) -> str:
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(_escape_cp(lo))
        elif hi == lo + 1:
            parts.append(_escape_cp(lo) + _escape_cp(hi))
        else:
            parts.append(f"{_escape_cp(lo)}-{_escape_cp(hi)}")
    return "".join(parts)
