"""Go duration strings (``time.ParseDuration``): the one parser for config values (containerd's
duration fields), the GC scheduler and ctrctl's options.

Syntax, exactly Go's: an optional sign, then one or more ``<number><unit>`` parts, where a
number is ASCII digits with an optional fraction (``1``, ``1.5``, ``.5``, ``1.``) and a unit
one of ``ns``, ``us``, ``µs`` (U+00B5), ``μs`` (U+03BC), ``ms``, ``s``, ``m``, ``h``:
``"300ms"``, ``"1h2m3.5s"``, ``"-1.5h"``. ``"0"`` (signed or not) is the only number allowed
without a unit. No spaces, no exponent, no other digits than ASCII ones; the empty string is
an error. The value is an integer of nanoseconds within Go's ``int64`` (about +-292 years);
a fraction is scaled with a float64, as Go does, so results match Go's to the nanosecond.

Errors are :class:`DurationError` (a ValueError) whose text names the value, as Go's do.
"""

from __future__ import annotations

__all__ = ["DurationError", "parse_duration", "parse_seconds", "check_duration"]

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
          "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_LIMIT = 1 << 63  # Go's uint64 accumulator: a magnitude above this overflows
_DIGITS = "0123456789"  # ASCII only: str.isdigit() would take "١" or "²"
_EXAMPLES = "e.g. 300ms, 1.5s, 1h2m3s"


class DurationError(ValueError):
    """A text that is no Go duration; the message names the text."""


def _invalid(orig: str, why: str) -> DurationError:
    return DurationError(f"invalid duration {orig!r}: {why} ({_EXAMPLES})")


def parse_duration(text: str) -> int:
    """``text`` (Go ``time.ParseDuration`` syntax) in nanoseconds; DurationError if it is not
    one, or lies outside int64 nanoseconds."""
    if not isinstance(text, str):
        raise DurationError(f"invalid duration {text!r}: not a string ({_EXAMPLES})")
    orig, s = text, text
    neg = False
    if s[:1] in ("-", "+"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise _invalid(orig, "empty")
    total, pos, n = 0, 0, len(s)
    while pos < n:
        if s[pos] != "." and s[pos] not in _DIGITS:
            raise _invalid(orig, f"expected a number at {s[pos:]!r}")
        # [0-9]*: the integer part; overflow past 2**63 is an error (Go's leadingInt)
        start, whole = pos, 0
        while pos < n and s[pos] in _DIGITS:
            whole = whole * 10 + ord(s[pos]) - 48
            if whole > _LIMIT:
                raise _invalid(orig, "out of range")
            pos += 1
        pre = pos > start
        # (\.[0-9]*)?: the fraction; digits beyond int64 precision are dropped
        # (Go's leadingFraction), not an error
        frac, scale, post = 0, 1.0, False
        if pos < n and s[pos] == ".":
            pos += 1
            fstart, overflow = pos, False
            while pos < n and s[pos] in _DIGITS:
                if not overflow:
                    y = frac * 10 + ord(s[pos]) - 48
                    if frac > (_LIMIT - 1) // 10 or y > _LIMIT:
                        overflow = True
                    else:
                        frac, scale = y, scale * 10
                pos += 1
            post = pos > fstart
        if not pre and not post:
            raise _invalid(orig, "a number needs a digit")
        ustart = pos
        while pos < n and s[pos] != "." and s[pos] not in _DIGITS:
            pos += 1
        if pos == ustart:
            raise DurationError(f"missing unit in duration {orig!r} "
                                f"(units: ns, us, ms, s, m, h; {_EXAMPLES})")
        unit = _UNITS.get(s[ustart:pos])
        if unit is None:
            raise DurationError(f"unknown unit {s[ustart:pos]!r} in duration {orig!r} "
                                f"(units: ns, us, ms, s, m, h)")
        if whole > _LIMIT // unit:
            raise _invalid(orig, "out of range")
        v = whole * unit
        if frac > 0:
            # float64, as Go: nanosecond-exact for fractions of an hour
            v += int(float(frac) * (float(unit) / scale))
            if v > _LIMIT:
                raise _invalid(orig, "out of range")
        total += v
        if total > _LIMIT:
            raise _invalid(orig, "out of range")
    if neg:
        return -total
    if total > _LIMIT - 1:
        raise _invalid(orig, "out of range")
    return total


def parse_seconds(text: str) -> float:
    """``text`` (a Go duration) in seconds."""
    return parse_duration(text) / 1e9


def check_duration(value: object) -> str | None:
    """A config ``check``: None for a Go duration, else the reason it is not one."""
    try:
        parse_duration(value)  # type: ignore[arg-type]
    except DurationError as e:
        return str(e)
    return None
