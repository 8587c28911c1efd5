"""Parsing filter strings (containerd's ``filters/parser.go``): :func:`parse`, :func:`parse_all`
and :class:`ParseError`, whose text reads like containerd's. A ``~=`` value is compiled when
the filter is parsed (:func:`ctrd.filters.regex.compile_re2`); a pattern RE2 refuses, or one
past the size limits, is a ParseError at the value's position."""

from __future__ import annotations

import re

from ctrd.errdefs import InvalidArgument
from ctrd.filters.matcher import ALWAYS, Filter, Operator, Selector, _All, _Any
from ctrd.filters.regex import RegexError, compile_re2
from ctrd.filters.scanner import _EOF, _ESCAPE, _SIMPLE_ESCAPES, _Scanner, _Tok

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
            pattern = compile_re2(value)
        except RegexError as e:
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
