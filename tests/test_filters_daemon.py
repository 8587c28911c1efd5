"""Hostile ``~=`` patterns through the real daemon's List calls (the real ``ctr``): patterns
that backtrack exponentially in a backtracking engine, matched against a long label value;
patterns too large to compile; invalid syntax and backreferences (RE2 has none). Each call
is answered (a match, no match, or InvalidArgument naming the pattern's problem), and the
daemon keeps serving. The deadline on each call is generous: it catches a hang, it does not
measure speed."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import CTR, ctr, launch_ctrd
from support.cmd import ok

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]

CALL_DEADLINE = 60  # seconds: a hung event loop fails here
LONG = "a" * 4000 + "!"  # a label value (containerd allows 4096 bytes of key and value)

# Classic catastrophic-backtracking patterns: none matches LONG (each wants an end that the
# "!" spoils), a backtracking engine tries exponentially many ways first.
CATASTROPHIC = ["(a+)+$", "(a|a)*b", "(a*)*b", "^(a|aa)+$", "^(a|a?)+$", "(.*a){20}$",
                "^(([a-z])+.)+[A-Z]([a-z])+$"]


@pytest.fixture(scope="module")
def daemon():
    base = Path(tempfile.mkdtemp(prefix="ctrd-filt-", dir="/tmp"))
    d = launch_ctrd(base)
    try:
        ok(ctr(d.address, "leases", "create", "--id", "long", f"v={LONG}", "k=plain",
               timeout=CALL_DEADLINE))
        yield d
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


def leases(d, *filters: str):
    return ctr(d.address, "leases", "ls", "-q", *filters, timeout=CALL_DEADLINE)


def still_serving(d) -> None:
    assert leases(d, "labels.k~=^pl.in$").stdout.split() == ["long"]
    ok(ctr(d.address, "version", timeout=CALL_DEADLINE))


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_answer(daemon, pattern):
    r = leases(daemon, f"labels.v~={pattern}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == []
    still_serving(daemon)


def test_linear_patterns_still_match(daemon):
    assert leases(daemon, "labels.v~=^(a+)+!$").stdout.split() == ["long"]
    assert leases(daemon, "labels.v~=(?i)^A+!$").stdout.split() == ["long"]


@pytest.mark.parametrize("pattern, error", [
    ("(a)\\1", "invalid escape sequence: `\\1`"),          # backreference: not RE2
    ("(?=a)", "invalid or unsupported Perl syntax"),          # lookahead: not RE2
    ("a**", "invalid nested repetition operator"),
    ("[", "missing closing ]"),
    ("\\C", "invalid escape sequence: `\\C`"),
    ("a{1001}", "invalid repeat count"),
    ("[\\pL]{1000}", "expression too large"),                 # a program past the bound
    ("((((a{100}){100}){100}){100})", "invalid repeat count"),
    ("(" * 1000 + "a" + ")" * 1000, "expression nests too deeply"),
    ("a" * 70_000, "expression too large"),                   # past the length bound
])
@pytest.mark.parametrize("call", ["images", "leases"])
def test_bad_patterns_are_invalid_argument(daemon, call, pattern, error):
    args = ("images", "ls", "-q") if call == "images" else ("leases", "ls", "-q")
    r = ctr(daemon.address, *args, f"name~={pattern}", timeout=CALL_DEADLINE)
    assert r.returncode != 0
    assert "error parsing regexp: " + error in r.stderr, r.stderr[:2000]
    assert "invalid argument" in r.stderr.lower() or "invalidargument" in r.stderr.lower(), \
        r.stderr[:2000]
    still_serving(daemon)
