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

Unlike containerd (which logs and matches nothing), an invalid regular expression is
rejected when the filter is parsed. Patterns are compiled and matched by RE2 itself
(:mod:`ctrd.filters.regex`: linear time, bounded size).

Modules: :mod:`~ctrd.filters.scanner` (tokens), :mod:`~ctrd.filters.parser` (filter strings
to :class:`Filter` objects, :class:`ParseError`), :mod:`~ctrd.filters.matcher` (the filters and
:func:`adaptor_from`), :mod:`~ctrd.filters.regex` (``~=`` patterns).

Usage::

    match = filters.parse_all(*request.filters)
    found = [img for img in images
             if match.match(filters.adaptor_from({"name": img.name}, img.labels))]
"""

from ctrd.filters.matcher import (ALWAYS, Adaptor, FieldValue, Filter, Operator, Selector,
                                  adaptor_from)
from ctrd.filters.parser import (ParseError, _Parser, parse, parse_all,
                                 parse_store_filters)
from ctrd.filters.scanner import _Scanner, _Tok

__all__ = [
    "ALWAYS",
    "Adaptor",
    "FieldValue",
    "Filter",
    "Operator",
    "ParseError",
    "Selector",
    "adaptor_from",
    "parse",
    "parse_all",
    "parse_store_filters",
]

# _Parser, _Scanner and _Tok: for the tests of the scanner and of the parser's fast path.
_PRIVATE = (_Parser, _Scanner, _Tok)
