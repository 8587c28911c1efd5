"""``~=`` patterns: Go's regexp syntax, compiled and run by RE2 itself (``google-re2``), so a
match takes time linear in the value's length whatever the pattern (no backtracking:
``(a+)+$`` against a long value that does not match is as quick as ``a``).

containerd (2.3.4 ``pkg/filters/filter.go``) compiles a selector's value with Go's
``regexp.Compile`` (RE2 syntax, leftmost-first, unanchored ``MatchString``); an invalid one is
logged and matches nothing. ctrd compiles when the filter is parsed and answers an invalid
one with InvalidArgument in Go's words: ``error parsing regexp: <code>: `<text>```.

Go's regexp and C++ RE2 share their syntax; where they differ, Go's rules win, checked before
RE2 sees the pattern (:func:`_go_rules`) or by renaming RE2's error (:data:`_GO_CODES`):

- ``\\C`` (one byte, in C++ RE2) is an invalid escape, as in Go;
- a repeat count of ten digits or more is "invalid repeat count" (C++ RE2 reads it as
  literal text);
- parentheses nested 1000 deep are "expression nests too deeply" (Go's limit);
- ``(?<=`` and ``(?<!`` are "invalid named capture", as Go says.

Bounds, because the pattern comes from the client and matching runs on the event loop: a
pattern over :data:`MAX_PATTERN` characters is refused before compiling, and RE2 compiles it
within :data:`MAX_MEM` bytes (its program and its DFA cache; a program that does not fit is
"expression too large"): a match is then at most linear in the value times a bounded program.
"""

from __future__ import annotations

import functools
import re

import re2

MAX_PATTERN = 64 * 1024   # characters
MAX_MEM = 1 << 20         # bytes of RE2 program and DFA state per pattern
MAX_NESTING = 1000        # Go's maxHeight
_CONTEXT = 200            # characters of a pattern quoted in an error

# C++ RE2's error codes, as Go's regexp/syntax names them
_GO_CODES = {
    "missing ]": "missing closing ]",
    "missing )": "missing closing )",
    "trailing \\": "trailing backslash at end of expression",
    "no argument for repetition operator": "missing argument to repetition operator",
    "invalid repetition size": "invalid repeat count",
    "bad repetition operator": "invalid nested repetition operator",
    "invalid perl operator": "invalid or unsupported Perl syntax",
    "invalid named capture group": "invalid named capture",
    "pattern too large - compile failed": "expression too large",
}
_REPEAT = re.compile(r"\{([0-9]+)(?:,([0-9]*))?\}")
_SURROGATE = re.compile("[\ud800-\udfff]")


class RegexError(Exception):
    """A pattern Go's regexp.Compile would refuse, or one past the bounds; the text is Go's
    (``error parsing regexp: ...``)."""


def _error(code: str, text: str) -> RegexError:
    if len(text) > _CONTEXT:
        text = text[:_CONTEXT] + "..."
    return RegexError(f"error parsing regexp: {code}: `{text}`")


class Regex:
    """A compiled ``~=`` pattern. ``search(value)``: whether it matches somewhere in
    ``value`` (Go's ``MatchString``)."""

    __slots__ = ("pattern", "_rx")

    def __init__(self, pattern: str, rx) -> None:
        self.pattern, self._rx = pattern, rx

    def search(self, value: str) -> bool:
        # bytes: RE2 reads UTF-8; "surrogatepass" keeps a Python caller's lone surrogates
        # (invalid UTF-8 to RE2, which matches them as Go matches invalid bytes: as U+FFFD
        # for nothing but "any character").
        return self._rx.search(value.encode("utf-8", "surrogatepass")) is not None

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


def _options() -> re2.Options:
    o = re2.Options()
    o.max_mem = MAX_MEM
    o.never_capture = True  # only whether there is a match matters
    o.log_errors = False
    return o


def _go_rules(p: str) -> None:
    """Raise RegexError where Go refuses what C++ RE2 accepts (module doc). One pass, the
    way RE2's parser skips escapes, ``\\Q...\\E`` and classes."""
    i, n, depth, in_class = 0, len(p), 0, False
    while i < n:
        c = p[i]
        if c == "\\":
            nxt = p[i + 1:i + 2]
            if nxt == "Q" and not in_class:
                end = p.find("\\E", i + 2)
                if end < 0:
                    return  # literal to the end
                i = end + 2
                continue
            if nxt == "C":
                raise _error("invalid escape sequence", "\\C")
            i += 2
            continue
        if in_class:
            if p.startswith("[:", i) and (end := p.find(":]", i + 2)) >= 0:
                i = end + 2
                continue
            in_class = c != "]"
            i += 1
            continue
        if c == "[":
            in_class = True
            i += 1
            if p.startswith("^", i):
                i += 1
            if p.startswith("]", i):
                i += 1  # a leading ] is a member
            continue
        if c == "(":
            depth += 1
            if depth >= MAX_NESTING:
                raise _error("expression nests too deeply", p)
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == "{" and (m := _REPEAT.match(p, i)):
            groups = [g for g in m.groups() if g]
            if not any(len(g) > 1 and g[0] == "0" for g in groups) and \
                    any(len(g) >= 10 for g in groups):
                raise _error("invalid repeat count", m.group())
        i += 1


def _re2_error(pattern: str, message: bytes) -> RegexError:
    text = message.decode("utf-8", "replace")
    code, _, arg = text.partition(": ")
    if code == "pattern too large - compile failed":
        return _error("expression too large", pattern)
    if code == "invalid perl operator" and (bad := _bad_named_capture(pattern, arg)):
        return _error("invalid named capture", bad)
    if code == "invalid UTF-8":
        # the pattern is valid UTF-8 (checked before): C++ RE2 says this of a "\\x{" that
        # ends the pattern, which Go calls an invalid escape
        return _error("invalid escape sequence", pattern[pattern.rfind("\\"):])
    return _error(_GO_CODES.get(code, code), arg)


_NAMED = re.compile(r"\(\?P?<[A-Za-z0-9_]+>")


def _bad_named_capture(pattern: str, arg: str) -> str:
    """Go's text for a "(?<" or "(?P<" that C++ RE2 calls an invalid Perl operator (Go
    reads a named capture there, its name running to ">" or the end), or ""."""
    i = pattern.find(arg)
    while i >= 0:
        rest = pattern[i:]
        if rest.startswith(("(?<", "(?P<")) and not _NAMED.match(rest):
            end = rest.find(">")
            return rest if end < 0 else rest[:end + 1]
        i = pattern.find(arg, i + 1)
    return ""


@functools.lru_cache(maxsize=512)
def _compile_cached(pattern: str) -> Regex | str:
    """The compiled pattern, or the error text for a bad one (cached too: a client repeating
    a bad pattern costs one compile)."""
    try:
        if _SURROGATE.search(pattern):
            m = _SURROGATE.search(pattern)
            raise _error("invalid UTF-8", pattern[m.start():])
        if len(pattern) > MAX_PATTERN:
            raise _error("expression too large", pattern)
        _go_rules(pattern)
        try:
            rx = re2.compile(pattern, _options())
        except re2.error as e:
            msg = e.args[0] if e.args else b""
            raise _re2_error(pattern, msg if isinstance(msg, bytes) else str(msg).encode()) \
                from None
        return Regex(pattern, rx)
    except RegexError as e:
        return str(e)


def compile_re2(pattern: str) -> Regex:
    """Compile a ``~=`` value (RegexError if Go would refuse it or it is past the bounds)."""
    compiled = _compile_cached(pattern)
    if isinstance(compiled, str):
        raise RegexError(compiled)
    return compiled
