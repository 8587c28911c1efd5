"""containerd's filter language, as accepted by every List call and by event subscriptions.

A filter string is one or more *selectors* separated by ``,``; an object matches when every
selector matches. There is no OR inside a string: a request carries several strings and
:func:`parse_all` ORs them. A selector is ``fieldpath [operator value]``:

- ``fieldpath``: fields joined by ``.``; a field is ``[A-Za-z0-9_]+`` or a double-quoted
  string, so ``labels."io.containerd/gc.root"`` names one label key.
- no operator: the field is present. ``==``: present and equal. ``!=``: not equal (an absent
  field compares as ``""``). ``~=``: the value is a Go RE2 regular expression that matches
  somewhere in the field (absent compares as ``""``).
- ``value``: a run of printable characters other than ``,`` and whitespace, or a double-quoted
  string; after ``~=`` it may also be quoted as ``/.../`` or ``|...|``. Quoted strings take Go's
  escapes (``\\n``, ``\\"``, ``\\x41``, ``\\101``, ``\\u00e9``, ``\\U0001F600``).

Acceptance follows containerd 1.6 (``filters/parser.go``, ``scanner.go``) input for input,
quirks included: ``'`` is an ordinary character, spaces may precede a token but not follow
the last value, ``=`` alone is an unsupported operator. Errors are :class:`ParseError`, an
:class:`~ctrd.errdefs.InvalidArgument` whose text reads like containerd's::

    filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated

Unlike containerd 1.6 (which logs and matches nothing), an invalid regular expression is
rejected when the filter is parsed. RE2 syntax is translated to Python's :mod:`re`; see
:func:`_translate_re2` for what differs.

Usage::

    match = filters.parse_all(*request.filters)
    found = [img for img in images
             if match.match(filters.adaptor_from({"name": img.name}, img.labels))]
"""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias, Union

from ctrd.errdefs import InvalidArgument

__all__ = [
    "ALWAYS",
    "Adaptor",
    "Filter",
    "Operator",
    "ParseError",
    "Selector",
    "adaptor_from",
    "parse",
    "parse_all",
]

Adaptor: TypeAlias = Callable[[tuple[str, ...]], Union[str, None]]
"""Maps a fieldpath such as ``("labels", "foo")`` to the field's value, or None if absent."""

FieldValue: TypeAlias = Union[str, None, Mapping[str, str], Adaptor]


# --------------------------------------------------------------------------------------------
# Filters


class Filter:
    """A parsed filter. ``match(adaptor)`` says whether the adapted object is selected."""

    __slots__ = ()

    def match(self, adaptor: Adaptor) -> bool:
        raise NotImplementedError


class _Always(Filter):
    __slots__ = ()

    def match(self, adaptor: Adaptor) -> bool:
        return True

    def __repr__(self) -> str:
        return "ALWAYS"


ALWAYS: Filter = _Always()
"""Matches everything: what an empty filter string or an empty filter list means."""


class Operator(enum.Enum):
    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


@dataclass(slots=True)
class Selector(Filter):
    """One ``fieldpath [operator value]`` test. Treat as immutable."""

    fieldpath: tuple[str, ...]
    operator: Operator = Operator.PRESENT
    value: str = ""
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def match(self, adaptor: Adaptor) -> bool:
        got = adaptor(self.fieldpath)
        op = self.operator
        if op is Operator.PRESENT:
            return got is not None
        if op is Operator.EQUAL:
            return got is not None and got == self.value
        if got is None:
            got = ""
        if op is Operator.NOT_EQUAL:
            return got != self.value
        assert self.pattern is not None
        return self.pattern.search(got) is not None


@dataclass(frozen=True, slots=True)
class _All(Filter):
    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return all(f.match(adaptor) for f in self.filters)


@dataclass(frozen=True, slots=True)
class _Any(Filter):
    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return any(f.match(adaptor) for f in self.filters)


def parse(expr: str) -> Filter:
    """Parse one filter string; ``""`` matches everything. Raises :class:`ParseError`."""
    if expr == "":
        return ALWAYS
    return _Parser(expr).parse()


def parse_all(*exprs: str) -> Filter:
    """Parse several filter strings into one filter matching any of them (none: everything)."""
    if not exprs:
        return ALWAYS
    filters = tuple(parse(e) for e in exprs)
    return filters[0] if len(filters) == 1 else _Any(filters)


def parse_store_filters(exprs: list[str]) -> Filter:
    """:func:`parse_all` as containerd's metadata stores (containers, sandboxes) call it: a
    parse error (already "...: invalid argument") wrapped as invalid argument once more."""
    try:
        return parse_all(*exprs)
    except InvalidArgument as e:
        raise InvalidArgument(str(e)) from None


def adaptor_from(fields: Mapping[str, FieldValue], labels: Mapping[str, str] | None = None,
                 *, empty_is_absent: bool = True) -> Adaptor:
    """An adaptor over plain values, shaped like containerd's metadata adaptors.

    ``fields`` maps a fieldpath's first component to what answers the rest of the path:

    - a ``str``: the value (remaining components are ignored, as containerd's adaptors do);
      ``""`` counts as absent unless ``empty_is_absent`` is false (snapshots and content
      report empty names/parents as present);
    - a mapping: the remaining components joined with ``.`` are its key, as for labels
      (``labels.a.b`` looks up key ``"a.b"``); an empty mapping has no fields;
    - a callable: another adaptor, given the remaining components (nested messages);
    - None: absent.

    ``labels`` is shorthand for ``fields["labels"]``. For example::

        adaptor_from({"name": img.name,
                      "target": {"digest": d, "mediatype": mt},
                      "annotations": img.target.annotations}, img.labels)
    """

    def adaptor(path: tuple[str, ...]) -> str | None:
        if not path:
            return None
        head = path[0]
        value = labels if head == "labels" and labels is not None else fields.get(head)
        if isinstance(value, str):
            return None if empty_is_absent and value == "" else value
        if value is None:
            return None
        if isinstance(value, Mapping):
            if not value:
                return None
            return value.get(".".join(path[1:]))
        return value(path[1:])

    return adaptor


# --------------------------------------------------------------------------------------------
# Errors


class ParseError(InvalidArgument):
    """A filter string that does not parse; ``position`` indexes ``expr`` (in characters)."""

    def __init__(self, expr: str, position: int, reason: str) -> None:
        self.expr = expr
        self.position = position
        self.reason = reason
        super().__init__(f"filters: parse error: [{_context(expr, position)}]: {reason}")


_CONTEXT = 100  # characters of input shown on each side of the error position
_SURROGATES = re.compile("[\ud800-\udfff]")


def _context(expr: str, pos: int) -> str:
    if pos < len(expr):
        before, here, after = expr[:pos], expr[pos], expr[pos + 1:]
        if len(before) > _CONTEXT:
            before = "..." + before[-_CONTEXT:]
        if len(after) > _CONTEXT:
            after = after[:_CONTEXT] + "..."
        text = f"{before} >|{here}|< {after}"
    else:
        text = expr if len(expr) <= 2 * _CONTEXT else "..." + expr[-2 * _CONTEXT:]
    # Lone surrogates can only come from Python callers; keep the message encodable.
    return _SURROGATES.sub("\ufffd", text)


def _show(ch: str) -> str:
    if ch in '"\\':
        return f'"\\{ch}"'
    return f'"{ch}"' if ch.isprintable() else f'"{ch.encode("unicode_escape").decode()}"'


# --------------------------------------------------------------------------------------------
# Scanner

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
        m = _unicode().value_stop.search(text, end)
        end = m.start() if m else len(text)
    return end


# --------------------------------------------------------------------------------------------
# Parser


# The common selector, all ASCII and unquoted (``name``, ``labels.a.b==x-y``, ``id~=^a+$``),
# ending at "," or the end. The general parser gives the same result for what this matches
# (a value starts with anything but a quote, a separator or an operator character).
_SIMPLE = (r"[\t\n\v\f\r ]*"                             # spaces, which scan() skips
           r"([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)"            # fieldpath
           r"(?:(==|!=|~=)([#-&'-+\-0-<>-{}][!-+\--~]*))?")  # operator value
_SIMPLE_SELECTOR = re.compile(_SIMPLE + r"(?=,|\Z)")
_SIMPLE_ITEM = re.compile(_SIMPLE)


class _Parser:
    def __init__(self, text: str, fast: bool = True) -> None:
        self.text = text
        self.scanner = _Scanner(text)
        self.fast = fast
        self.seen: dict[str, Selector] = {}  # "a,a,a,..." need not make many objects

    def error(self, pos: int, reason: str) -> ParseError:
        return ParseError(self.text, pos, reason)

    def parse(self) -> Filter:
        if self.fast:
            simple = self.parse_simple()
            if simple is not None:
                return simple
        selectors = [self.selector()]
        sc, text, n = self.scanner, self.text, len(self.text)
        while sc.off < n:
            off = sc.off
            if text[off] != ",":
                raise self.error(off, f"unexpected input: {_show(text[off])}")
            sc.pos, sc.off, sc.after_operator = off, off + 1, False
            selectors.append(self.selector())
        if len(selectors) == 1:
            return selectors[0]
        return _All(tuple({id(s): s for s in selectors}.values()))  # repeats add nothing

    def parse_simple(self) -> Filter | None:
        """If all selectors are simple, split on "," and parse each distinct one once."""
        items = []
        for item in dict.fromkeys(self.text.split(",")):
            m = _SIMPLE_ITEM.fullmatch(item)
            if m is None:
                return None
            items.append(m)
        try:
            unique = [self.simple_selector(m) for m in items]
        except ParseError:
            return None  # a bad regexp: the general parser reports where it is
        return unique[0] if len(unique) == 1 else _All(tuple(unique))

    def selector(self) -> Selector:
        m = _SIMPLE_SELECTOR.match(self.text, self.scanner.off) if self.fast else None
        if m is not None:
            self.scanner._advance_to(m.end())
            key = m.group()
            found = self.seen.get(key)
            if found is None:
                found = self.seen[key] = self.simple_selector(m)
            return found
        path = self.fieldpath()
        if self.scanner.peek_char() in (",", _EOF):
            return Selector(path)
        op = self.operator()
        pos, value = self.value(allow_alt_quotes=op is Operator.MATCHES)
        if op is not Operator.MATCHES:
            return Selector(path, op, value)
        return self.matches(path, pos, value)

    def simple_selector(self, m: re.Match[str]) -> Selector:
        path = tuple(m.group(1).split("."))
        if m.group(2) is None:
            return Selector(path)
        op = Operator(m.group(2))
        if op is not Operator.MATCHES:
            return Selector(path, op, m.group(3))
        return self.matches(path, m.start(3), m.group(3))

    def matches(self, path: tuple[str, ...], pos: int, value: str) -> Selector:
        try:
            pattern = _compile_re2(value)
        except _RegexError as e:
            raise self.error(pos, str(e)) from None
        return Selector(path, Operator.MATCHES, value, pattern)

    def fieldpath(self) -> tuple[str, ...]:
        path = [self.field()]
        while self.scanner.peek_char() == ".":
            self.scanner.scan()
            path.append(self.field())
        return tuple(path)

    def field(self) -> str:
        pos, tok, text = self.scanner.scan()
        if tok is _Tok.FIELD:
            return text
        if tok is _Tok.QUOTED:
            return self.unquote(pos, text, allow_alt_quotes=False)
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        raise self.error(pos, "expected field or quoted")

    def operator(self) -> Operator:
        pos, tok, text = self.scanner.scan()
        if tok is _Tok.OPERATOR:
            if text in ("==", "!=", "~="):
                return Operator(text)
            raise self.error(pos, f'unsupported operator "{text}"')
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        raise self.error(pos, 'expected an operator ("=="|"!="|"~=")')

    def value(self, allow_alt_quotes: bool) -> tuple[int, str]:
        pos, tok, text = self.scanner.scan()
        if tok is _Tok.VALUE or tok is _Tok.FIELD:
            return pos, text
        if tok is _Tok.QUOTED:
            return pos, self.unquote(pos, text, allow_alt_quotes)
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        raise self.error(pos, "expected value or quoted")

    def unquote(self, pos: int, quoted: str, allow_alt_quotes: bool) -> str:
        if not allow_alt_quotes and quoted[0] != '"':
            raise self.error(pos, "invalid quote encountered")
        body = quoted[1:-1]
        if "\\" not in body:
            return body
        try:
            return _unescape(body)
        except ValueError as e:
            raise self.error(pos, f"unquoting failed: quote syntax error: {e}") from None


def _unescape(body: str) -> str:
    """Decode Go escapes in a quoted string the scanner accepted.

    Octal and ``\\x`` escapes are bytes, so they may spell UTF-8 sequences (``\\xc3\\xa9``
    is "é"); bytes that are not valid UTF-8 become lone surrogates (``surrogateescape``), which
    never equal a field value, as in Go where such a string matches no valid UTF-8 field.
    """
    out = bytearray()
    i = 0
    for m in _ESCAPE.finditer(body):
        if m.start() != i and "\\" in body[i:m.start()]:
            raise ValueError("bad escape")
        out += body[i:m.start()].encode()
        esc = m.group()
        kind = esc[1]
        if kind in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[kind]
        elif kind in "01234567":
            value = int(esc[1:], 8)
            if value > 0xFF:
                raise ValueError(f"octal escape {esc} is above \\377")
            out.append(value)
        elif kind == "x":
            out.append(int(esc[2:], 16))
        else:
            value = int(esc[2:], 16)
            if value > 0x10FFFF:
                raise ValueError(f"{esc} is beyond Unicode")
            if 0xD800 <= value <= 0xDFFF:
                value = 0xFFFD  # Go encodes surrogate code points as U+FFFD
            out += chr(value).encode()
        i = m.end()
    if "\\" in body[i:]:
        raise ValueError("bad escape")
    out += body[i:].encode()
    return out.decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------------------
# Unicode tables (built on first use: one pass over all code points; its cost: bench/README.md)


@dataclass(frozen=True)
class _UnicodeTables:
    categories: dict[str, tuple[tuple[int, int], ...]]
    value_stop: re.Pattern[str]


@functools.cache
def _unicode() -> _UnicodeTables:
    category = unicodedata.category
    spans: dict[str, list[list[int]]] = {}
    prev = None
    for cp in range(0x110000):
        cat = category(chr(cp))
        if cat == prev:
            spans[cat][-1][1] = cp
        else:
            spans.setdefault(cat, []).append([cp, cp])
            prev = cat
    tables = {cat: tuple((lo, hi) for lo, hi in r) for cat, r in spans.items() if cat != "Cn"}
    for major in "CLMNPSZ":
        tables[major] = tuple(_clean([r for cat, rs in tables.items()
                                      if len(cat) == 2 and cat[0] == major for r in rs]))
    # A value ends at ",", whitespace, U+FFFD or anything not a letter, mark, number,
    # punctuation or symbol (Go's isValueRune).
    graphic = _clean([r for cat, rs in tables.items() if len(cat) == 2 and cat[0] in "LMNPS"
                      for r in rs])
    stops = _clean(_complement(graphic) + [(ord(c), ord(c)) for c in _SPACES | {",", "\ufffd"}])
    return _UnicodeTables(tables, re.compile(f"[{_class_body(stops)}]"))


# --------------------------------------------------------------------------------------------
# RE2 -> Python re

_MAX_RUNE = 0x10FFFF
_MAX_REGEX_LEN = 64 * 1024     # longer patterns are refused (RE2 itself allows more)
_MAX_TRANSLATED = 512 * 1024   # size of the translated pattern, bounds compile time
_MAX_DEPTH = 200               # Python's re parser recurses per group (RE2 allows 1000)
_MAX_REPEAT = 1000

_FOLD, _MULTILINE, _DOTNL, _UNGREEDY = 1, 2, 4, 8
_FLAG_BITS = {"i": _FOLD, "m": _MULTILINE, "s": _DOTNL, "U": _UNGREEDY}

Ranges: TypeAlias = list[tuple[int, int]]

_PERL_CLASSES: dict[str, Ranges] = {
    "d": [(0x30, 0x39)],
    "s": [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
}
_POSIX_CLASSES: dict[str, Ranges] = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": [(0x30, 0x39)],
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}
_WORD = "[0-9A-Za-z_]"
_ANY_CHAR = "(?s:.)"
_NO_CHAR = "[^\\x00-\\U0010ffff]"
_PLAIN_RUN = re.compile(r"[^\\.+*?()|\[{^$]+")
_REPEAT = re.compile(r"\{([0-9]+)(?:(,)([0-9]*))?\}")


class _RegexError(Exception):
    """A pattern RE2 would reject (or that is beyond what ctrd translates)."""


def _regex_error(code: str, expr: str, note: str = "") -> _RegexError:
    if len(expr) > 2 * _CONTEXT:
        expr = expr[:2 * _CONTEXT] + "..."
    return _RegexError(f"error parsing regexp: {code}: `{expr}`{note}")


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


def _class_text(ranges: Ranges) -> str:
    if not ranges:
        return _NO_CHAR
    if ranges == [(0, _MAX_RUNE)]:
        return _ANY_CHAR
    return f"[{_class_body(ranges)}]"


def _escape_literal(text: str) -> str:
    if text.isprintable():
        return re.escape(text)
    return "".join(re.escape(c) if c.isprintable() else _escape_cp(ord(c)) for c in text)


@dataclass(slots=True)
class _Atom:
    """One translated piece a quantifier can follow."""

    text: str
    depth: int = 0          # nesting of Python groups in text
    weight: int = 1         # largest product of counted repeats on any path (RE2 caps it)
    quantified: bool = False


@dataclass(slots=True)
class _Group:
    """An open group: its flags (which (?i) etc. change until it closes) and its contents."""

    flags: int
    atoms: list[_Atom] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)
    depth: int = 0
    weight: int = 1

    def end_branch(self) -> None:
        for a in self.atoms:
            self.depth = max(self.depth, a.depth)
            self.weight = max(self.weight, a.weight)
        self.branches.append("".join(a.text for a in self.atoms))
        self.atoms = []

    def close(self) -> _Atom:
        self.end_branch()
        return _Atom("(?:" + "|".join(self.branches) + ")", self.depth + 1, self.weight)


class _Class:
    """A bracket expression or class escape being assembled."""

    def __init__(self) -> None:
        self.ranges: Ranges = []
        self.negated_groups: list[Ranges] = []

    def add_group(self, ranges: Ranges, negated: bool) -> None:
        if negated:
            self.negated_groups.append(ranges)
        else:
            self.ranges.extend(ranges)

    def text(self, negated: bool, fold: bool) -> str:
        positive = _clean(self.ranges)
        if not fold:
            ranges = _clean(positive + [r for g in self.negated_groups for r in _complement(g)])
            return _class_text(_complement(ranges) if negated else ranges)
        # Under (?i) RE2 case-folds each part before negating it. Python's (?i:[^...]) does
        # the same for one set, so each negated part keeps its own brackets.
        if not self.negated_groups:
            if negated:
                return f"(?i:[^{_class_body(positive)}])" if positive else _ANY_CHAR
            return f"(?i:{_class_text(positive)})"
        parts = [f"(?i:{_class_text(positive)})"] if positive else []
        parts += [f"(?i:[^{_class_body(g)}])" if g else _ANY_CHAR for g in self.negated_groups]
        union = "(?:" + "|".join(parts) + ")"
        return f"(?:(?!{union}){_ANY_CHAR})" if negated else union


class _RE2Translator:
    """One pass over an RE2 pattern, following the order of checks of Go's regexp/syntax
    parser so the same patterns are refused, emitting Python syntax as it goes."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.n = len(pattern)
        self.stack = [_Group(0)]
        self.size = 0
        self.repeat_start = -1

    # -- output ------------------------------------------------------------------------------

    def push(self, atom: _Atom, added: int) -> None:
        """Append atom to the open group; ``added`` is how much output it adds."""
        if atom.depth > _MAX_DEPTH:
            raise _regex_error("expression nests too deeply", self.p)
        self.size += added
        if self.size > _MAX_TRANSLATED:
            raise _regex_error("expression too large", self.p)
        self.stack[-1].atoms.append(atom)

    def leaf(self, text: str, depth: int = 0) -> None:
        self.push(_Atom(text, depth), len(text))

    def literal(self, text: str) -> None:
        escaped = _escape_literal(text)
        if self.stack[-1].flags & _FOLD and not text.lower() == text == text.upper():
            self.leaf(f"(?i:{escaped})", 1)
        else:
            self.leaf(escaped)

    def literals(self, text: str) -> None:
        # The last character stays apart: a quantifier after it applies to it alone.
        if len(text) > 1:
            self.literal(text[:-1])
        if text:
            self.literal(text[-1])

    def char_class(self, cls: _Class, negated: bool = False) -> None:
        text = cls.text(negated, bool(self.stack[-1].flags & _FOLD))
        self.leaf(text, 0 if text[0] == "[" else 3)

    # -- parsing -----------------------------------------------------------------------------

    def translate(self) -> str:
        p, n = self.p, self.n
        i = 0
        last_repeat = -1  # where the repetition operator just before began, or -1
        while i < n:
            c = p[i]
            repeat_at = -1
            group = self.stack[-1]
            if c == "(":
                if p.startswith("(?", i):
                    i = self.perl_group(i)
                else:
                    self.open_group(group.flags)
                    i += 1
            elif c == "|":
                group.end_branch()
                self.size += 1
                i += 1
            elif c == ")":
                if len(self.stack) == 1:
                    raise _regex_error("unexpected )", p)
                self.stack.pop()
                self.push(group.close(), 4)
                i += 1
            elif c == "^":
                self.leaf("(?m:^)" if group.flags & _MULTILINE else "(?:\\A)", 1)
                i += 1
            elif c == "$":
                self.leaf("(?m:$)" if group.flags & _MULTILINE else "(?:\\Z)", 1)
                i += 1
            elif c == ".":
                self.leaf(_ANY_CHAR if group.flags & _DOTNL else "[^\\n]", 1)
                i += 1
            elif c == "[":
                i = self.bracket(i)
            elif c in "*+?":
                lo, hi = {"*": (0, -1), "+": (1, -1), "?": (0, 1)}[c]
                i = self.repeat(i, i + 1, c, lo, hi, False, last_repeat)
                repeat_at = self.repeat_start
            elif c == "{":
                m = _REPEAT.match(p, i)
                if m is None or _leading_zero(m.group(1)) or _leading_zero(m.group(3) or ""):
                    self.literal("{")  # not a repetition: RE2 takes the brace literally
                    i += 1
                else:
                    lo = _repeat_count(m.group(1))
                    if m.group(2) is None:
                        hi, op = lo, f"{{{lo}}}"
                    elif m.group(3):
                        hi = _repeat_count(m.group(3))
                        op = f"{{{lo},{hi}}}"
                    else:
                        hi, op = -1, f"{{{lo},}}"
                    if lo > _MAX_REPEAT or hi > _MAX_REPEAT or (hi >= 0 and lo > hi):
                        raise _regex_error("invalid repeat count", m.group())
                    i = self.repeat(i, m.end(), op, lo, hi, True, last_repeat)
                    repeat_at = self.repeat_start
            elif c == "\\":
                i = self.escape(i)
            else:
                m = _PLAIN_RUN.match(p, i)
                self.literals(m.group())
                i = m.end()
            last_repeat = repeat_at
        if len(self.stack) > 1:
            raise _regex_error("missing closing )", p)
        root = self.stack[0]
        root.end_branch()
        return "|".join(root.branches)

    def open_group(self, flags: int) -> None:
        if len(self.stack) > _MAX_DEPTH:
            raise _regex_error("expression nests too deeply", self.p)
        self.stack.append(_Group(flags))

    def perl_group(self, i: int) -> int:
        """``(?P<name>``, ``(?<name>``, ``(?flags)`` or ``(?flags:`` at ``p[i]``."""
        p, n = self.p, self.n
        name_at = -1
        if n - i > 4 and p[i + 2] == "P" and p[i + 3] == "<":
            name_at = i + 4
        elif n - i > 3 and p[i + 2] == "<":
            name_at = i + 3
        if name_at >= 0:
            end = p.find(">", i)
            if end < 0:
                raise _regex_error("invalid named capture", p[i:])
            name = p[name_at:end]
            if not name or not all(ch == "_" or (ch < "\x80" and ch.isalnum()) for ch in name):
                raise _regex_error("invalid named capture", p[i:end + 1])
            self.open_group(self.stack[-1].flags)
            return end + 1
        flags = self.stack[-1].flags
        negate = saw_flag = False
        j = i + 2
        while j < n:
            c = p[j]
            j += 1
            if c in _FLAG_BITS:
                flags = flags & ~_FLAG_BITS[c] if negate else flags | _FLAG_BITS[c]
                saw_flag = True
            elif c == "-":
                if negate:
                    break
                negate, saw_flag = True, False
            elif c == ":" or c == ")":
                if negate and not saw_flag:
                    break
                if c == ":":
                    self.open_group(flags)
                else:
                    self.stack[-1].flags = flags
                return j
            else:
                break
        raise _regex_error("invalid or unsupported Perl syntax", p[i:j])

    def repeat(self, start: int, after: int, op: str, lo: int, hi: int, counted: bool,
               last_repeat: int) -> int:
        """Apply the operator ``p[start:after]`` to the last atom; returns where to go on."""
        p = self.p
        group = self.stack[-1]
        lazy = after < self.n and p[after] == "?"
        if lazy:
            after += 1
        if last_repeat >= 0:
            raise _regex_error("invalid nested repetition operator", p[last_repeat:after])
        if not group.atoms:
            raise _regex_error("missing argument to repetition operator", p[start:after])
        atom = group.atoms.pop()
        weight = atom.weight
        if counted:
            m = hi if hi >= 0 else lo
            if (lo >= 2 or hi >= 2) and m * atom.weight > _MAX_REPEAT:
                raise _regex_error("invalid repeat count", p[start:after])
            weight = m * atom.weight if m > 0 else 1
        text, depth, added = atom.text, atom.depth, len(op) + 1
        if atom.quantified:  # a*(?i)* and a*\Q\E*: RE2 nests the repetitions
            text, depth, added = f"(?:{text})", depth + 1, added + 4
        if lazy != bool(group.flags & _UNGREEDY):
            op += "?"
        self.push(_Atom(text + op, depth, weight, quantified=True), added)
        self.repeat_start = start
        return after

    def escape(self, i: int) -> int:
        p, n = self.p, self.n
        if i + 1 >= n:
            raise _regex_error("trailing backslash at end of expression", "")
        c = p[i + 1]
        if c == "A":
            self.leaf("(?:\\A)", 1)
        elif c == "z":
            self.leaf("(?:\\Z)", 1)
        elif c == "b":  # ASCII word boundary; Python's \b is Unicode-aware
            self.leaf(f"(?:(?<={_WORD})(?!{_WORD})|(?<!{_WORD})(?={_WORD}))", 2)
        elif c == "B":  # spelled out too: Python 3.11's \B never matches an empty string
            self.leaf(f"(?:(?<={_WORD})(?={_WORD})|(?<!{_WORD})(?!{_WORD}))", 2)
        elif c == "C":
            raise _regex_error("invalid escape sequence", "\\C")
        elif c == "Q":
            end = p.find("\\E", i + 2)
            self.literals(p[i + 2:] if end < 0 else p[i + 2:end])
            return n if end < 0 else end + 2
        elif c == "p" or c == "P":
            cls = _Class()
            j = self.unicode_class(i, cls)
            self.char_class(cls)
            return j
        elif c in "dDsSwW":
            cls = _Class()
            cls.add_group(_PERL_CLASSES[c.lower()], negated=c.isupper())
            self.char_class(cls)
        else:
            cp, j = self.parse_escape(i)
            self.literal(chr(cp))
            return j
        return i + 2

    def parse_escape(self, i: int) -> tuple[int, int]:
        """A one-character escape at ``p[i] == "\\"``: (code point, index after it)."""
        p, n = self.p, self.n
        j = i + 1
        if j >= n:
            raise _regex_error("trailing backslash at end of expression", "")
        c = p[j]
        j += 1
        if c < "\x80" and not c.isalnum():
            return ord(c), j
        if c in "01234567" and (c == "0" or (j < n and p[j] in "01234567")):
            value = int(c)
            for _ in range(2):
                if j < n and p[j] in "01234567":
                    value = value * 8 + int(p[j])
                    j += 1
            return value, j
        if c == "x" and j < n:
            c2 = p[j]
            j += 1
            if c2 == "{":
                value = digits = 0
                while j < n:
                    c3 = p[j]
                    j += 1
                    if c3 == "}":
                        if digits:
                            return value, j
                        break
                    d = _hexval(c3)
                    if d < 0:
                        break
                    value = value * 16 + d
                    if value > _MAX_RUNE:
                        break
                    digits += 1
            else:
                hi = _hexval(c2)
                lo = _hexval(p[j]) if j < n else -1
                j = min(j + 1, n)
                if hi >= 0 and lo >= 0:
                    return hi * 16 + lo, j
        elif c in "afnrtv":
            return ord({"a": "\a", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}[c]), j
        raise _regex_error("invalid escape sequence", p[i:j])

    def unicode_class(self, i: int, cls: _Class) -> int:
        """``\\pL``, ``\\p{Lu}``, ``\\P{^N}``... at ``p[i]``; adds it to cls."""
        p, n = self.p, self.n
        negated = p[i + 1] == "P"
        k = i + 2
        if k >= n:
            name, end = "", k
        elif p[k] != "{":
            name, end = p[k], k + 1
        else:
            close = p.find("}", i)
            if close < 0:
                raise _regex_error("invalid character class range", p[i:])
            name, end = p[k + 1:close], close + 1
        if name.startswith("^"):
            negated, name = not negated, name[1:]
        if name == "Any":
            ranges: Ranges = [(0, _MAX_RUNE)]
        else:
            found = _unicode().categories.get(name) if 1 <= len(name) <= 2 else None
            if found is None:
                raise _regex_error("invalid character class range", p[i:end],
                                   " (ctrd knows Unicode general categories and Any,"
                                   " not scripts)")
            ranges = list(found)
        cls.add_group(ranges, negated)
        return end

    def bracket(self, i: int) -> int:
        """A bracket expression at ``p[i] == "["``."""
        p, n = self.p, self.n
        cls = _Class()
        j = i + 1
        negated = j < n and p[j] == "^"
        if negated:
            j += 1
        first = True  # "]" first is a literal
        while j >= n or p[j] != "]" or first:
            first = False
            if n - j > 2 and p[j] == "[" and p[j + 1] == ":":
                close = p.find(":]", j + 2)
                if close >= 0:
                    name = p[j + 2:close]
                    neg = name.startswith("^")
                    ranges = _POSIX_CLASSES.get(name[1:] if neg else name)
                    if ranges is None:
                        raise _regex_error("invalid character class range", p[j:close + 2])
                    cls.add_group(ranges, neg)
                    j = close + 2
                    continue
            if n - j >= 2 and p[j] == "\\" and p[j + 1] in "pP":
                j = self.unicode_class(j, cls)
                continue
            if n - j >= 2 and p[j] == "\\" and p[j + 1] in "dDsSwW":
                cls.add_group(_PERL_CLASSES[p[j + 1].lower()], negated=p[j + 1].isupper())
                j += 2
                continue
            start = j
            lo, j = self.class_char(i, j)
            hi = lo
            if n - j >= 2 and p[j] == "-" and p[j + 1] != "]":
                hi, j = self.class_char(i, j + 1)
                if hi < lo:
                    raise _regex_error("invalid character class range", p[start:j])
            cls.ranges.append((lo, hi))
        self.char_class(cls, negated)
        return j + 1

    def class_char(self, class_start: int, j: int) -> tuple[int, int]:
        if j >= self.n:
            raise _regex_error("missing closing ]", self.p[class_start:])
        if self.p[j] == "\\":
            return self.parse_escape(j)
        return ord(self.p[j]), j + 1


def _hexval(c: str) -> int:
    return int(c, 16) if len(c) == 1 and c in "0123456789abcdefABCDEF" else -1


def _leading_zero(digits: str) -> bool:
    return len(digits) >= 2 and digits[0] == "0"


def _repeat_count(digits: str) -> int:
    return int(digits) if len(digits) <= 9 else 10**9


_INVALID_UTF8 = re.compile("[\udc80-\udcff]")


def _translate_re2(pattern: str) -> str:
    """Translate a Go RE2 pattern into an equivalent Python ``re`` pattern.

    Accepts and rejects what Go's ``regexp.Compile`` does, except:

    - Unicode scripts (``\\p{Greek}``) are refused; general categories (``\\pL``,
      ``\\p{Lu}``) come from Python's Unicode database, whose version may differ from Go's.
    - Limits: patterns over 64 KiB, translations over 512 KiB and nesting deeper than 200
      groups are refused (RE2: about 3 MB of program, 1000 levels).
    - Matching uses Python's backtracking engine: a pattern like ``(a|a)*b`` can take
      exponential time on a long value that does not match, where RE2 is linear.

    RE2 semantics kept: ``$`` and ``\\z`` match only at the very end (Python's ``\\Z``);
    ``\\d``, ``\\s``, ``\\w``, ``\\b`` and POSIX classes are ASCII; ``(?U)`` swaps greediness;
    a flag set mid-group (``a(?i)b|c``) lasts to the end of the group; ``\\Q...\\E``,
    ``\\x{...}``, octal escapes and ``[[:alpha:]]`` work; ``{,n}`` is literal text. Python-only
    syntax (lookaround, backreferences, possessive quantifiers, ``(?x)``...) is rejected.
    Groups become non-capturing: only whether a match exists matters here.
    """
    m = _INVALID_UTF8.search(pattern)
    if m:
        raise _regex_error("invalid UTF-8", pattern[m.start():])
    if len(pattern) > _MAX_REGEX_LEN:
        raise _regex_error("expression too large", pattern)
    return _RE2Translator(pattern).translate()


@functools.lru_cache(maxsize=512)
def _compile_cached(pattern: str) -> re.Pattern[str] | str:
    """The compiled pattern, or the error message for a bad one."""
    try:
        return re.compile(_translate_re2(pattern))
    except _RegexError as e:
        return str(e)
    except (re.error, RecursionError, OverflowError, MemoryError) as e:
        # The translation should always compile; if not, still answer InvalidArgument.
        return f"error parsing regexp: {e}: `{pattern[:2 * _CONTEXT]}`"


def _compile_re2(pattern: str) -> re.Pattern[str]:
    compiled = _compile_cached(pattern)
    if isinstance(compiled, str):
        raise _RegexError(compiled)
    return compiled
