"""Go duration strings (ctrd.durations): Go's time.ParseDuration values and refusals (the cases
of Go's own format_test.go among them), hostile text, and the config fields and ctrctl options
that read durations through it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ctrd.durations import DurationError, check_duration, parse_duration, parse_seconds

NS, US, MS, S = 1, 1_000, 1_000_000, 1_000_000_000
M, H = 60 * S, 3600 * S
MAX, MIN = (1 << 63) - 1, -(1 << 63)


@pytest.mark.parametrize("text,ns", [
    ("0", 0), ("+0", 0), ("-0", 0), ("5s", 5 * S), ("30s", 30 * S), ("1478s", 1478 * S),
    ("-5s", -5 * S), ("+5s", 5 * S), ("-0s", 0), ("+0s", 0), ("5.0s", 5 * S),
    ("5.6s", 5 * S + 600 * MS), ("5.s", 5 * S), (".5s", 500 * MS), ("1.0s", S),
    ("1.00s", S), ("1.004s", S + 4 * MS), ("1.0040s", S + 4 * MS), ("100.00100s", 100 * S + MS),
    ("10ns", 10), ("11us", 11 * US), ("12µs", 12 * US), ("12μs", 12 * US), ("13ms", 13 * MS),
    ("14s", 14 * S), ("15m", 15 * M), ("16h", 16 * H), ("3h30m", 3 * H + 30 * M),
    ("10.5s4m", 4 * M + 10 * S + 500 * MS), ("-2m3.4s", -(2 * M + 3 * S + 400 * MS)),
    ("1h2m3s4ms5us6ns", H + 2 * M + 3 * S + 4 * MS + 5 * US + 6),
    ("39h9m14.425s", 39 * H + 9 * M + 14 * S + 425 * MS), ("300ms", 300 * MS),
    ("1h2m3.5s", H + 2 * M + 3 * S + 500 * MS), ("-1.5h", -(H + 30 * M)), ("1s1s", 2 * S),
    ("4h0m0s", 4 * H),
    # precision: a fraction scaled by float64 is exact to the nanosecond, as in Go
    ("52763797000ns", 52763797000), ("0.3333333333333333333h", 20 * M),
    ("9007199254740993ns", (1 << 53) + 1), ("0.100000000000000000000h", 6 * M),
    ("0.830103483285477580700h", 49 * M + 48 * S + 372539827),
    # the ends of int64
    ("9223372036854775807ns", MAX), ("9223372036854775.807us", MAX),
    ("9223372036.854775807s", MAX), ("2562047h47m16.854775807s", MAX),
    ("-9223372036854775808ns", MIN), ("-9223372036854775.808us", MIN),
    ("-2562047h47m16.854775808s", MIN),
    # fraction digits beyond int64 precision are dropped, not an error
    ("0.1234567890123456789012345678901234567890s", 123456789), ("0.5ns", 0),
    ("1." + "0" * 5000 + "1s", S),
])
def test_go_values(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text,message", [
    ("", "invalid duration ''"), ("-", "invalid duration '-'"), ("+", "invalid duration '+'"),
    ("3", "missing unit in duration '3'"), ("100", "missing unit in duration '100'"),
    ("0.0", "missing unit"), ("00", "missing unit"), ("-1", "missing unit"),
    ("s", "invalid duration 's'"), (".", "invalid duration '.'"), ("-.", "invalid"),
    (".s", "invalid duration '.s'"), ("+.s", "invalid"), ("1d", "unknown unit 'd'"),
    ("1.2.3s", "missing unit in duration '1.2.3s'"), ("1e9s", "unknown unit 'e'"),
    ("1E9s", "unknown unit 'E'"), ("0x10s", "unknown unit 'x'"), ("1_000s", "unknown unit '_'"),
    ("10 seconds", "unknown unit ' seconds'"), (" 1s", "invalid duration ' 1s'"),
    ("1s ", "unknown unit 's '"), ("1s\n", "unknown unit"), ("1 s", "unknown unit ' s'"),
    ("1h-1m", "unknown unit 'h-' in duration '1h-1m'"), ("+-1s", "invalid"), ("--1s", "invalid"),
    ("inf", "invalid duration 'inf'"), ("nan", "invalid"), ("1S", "unknown unit 'S'"),
    ("1Ms", "unknown unit 'Ms'"), ("1sec", "unknown unit 'sec'"), ("\x85\x85", "invalid"),
    ("\udcff", "invalid"), ("hello \xff world", "invalid"),
    # unicode digits are no digits (str.isdigit() would take them)
    ("١s", "invalid duration '١s'"), ("１s", "invalid"), ("²s", "invalid"),
    ("1١s", "unknown unit '١s'"),
    # overflow
    ("9223372036854775808ns", "out of range"), ("9223372036854775.808us", "out of range"),
    ("9223372036854.775808ms", "out of range"), ("-9223372036854775809ns", "out of range"),
    ("9223372036854775810ns", "out of range"), ("-9223372036854775810ns", "out of range"),
    ("3000000h", "out of range"), ("2562048h", "out of range"),
    ("2562047h47m16.854775808s", "out of range"), ("2562047h2562047h", "out of range"),
    ("1000000000000000000000s", "out of range"), ("9" * 100_000 + "s", "out of range"),
])
def test_go_refusals_name_the_text(text, message):
    with pytest.raises(DurationError) as e:
        parse_duration(text)
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)  # what config checks and callers catch
    assert check_duration(text) == str(e.value)


def test_not_a_string():
    for value in (None, 5, 1.5, b"1s", ["1s"]):
        with pytest.raises(DurationError, match="not a string"):
            parse_duration(value)  # type: ignore[arg-type]


def test_seconds():
    assert parse_seconds("1m30s") == 90.0
    assert parse_seconds("100ms") == pytest.approx(0.1)
    assert parse_seconds("-1.5h") == -5400.0
    assert check_duration("4h0m0s") is None


# --- config fields: containerd 2.3.4's decoding ----------------------------------------------

GC = '[plugins."io.containerd.gc.v1.scheduler"]\n'
CRI = '[plugins."io.containerd.grpc.v1.cri"]\n'


def _dump(tmp_path, text: str):
    cfg = tmp_path / "config.toml"
    cfg.write_text("version = 2\n" + text)
    return subprocess.run([sys.executable, "-m", "ctrd.cli.daemon", "-c", str(cfg), "config",
                           "dump"], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("value,decoded", [('"1m30s"', "1m30s"), ("0", "0"), ("-0", "0"),
                                           ('"-1s"', "-1s"), ('""', None), ("100", None),
                                           ("1.5", None), ('"1e9s"', None), ("true", None)])
def test_gc_delays_decode_as_containerd_does(tmp_path, value, decoded):
    """containerd's tomlext.Duration is a Go TextUnmarshaler: go-toml hands it a TOML number's
    text, so the integer 0 is a duration and 100 is refused for its missing unit."""
    import tomllib

    from ctrd.config import ConfigError, decode
    from ctrd.gc.config import SchedulerConfig

    r = _dump(tmp_path, f"{GC}schedule_delay = {value}\n")
    section = tomllib.loads(f"schedule_delay = {value}")
    if decoded is None:
        assert r.returncode == 1, r.stdout
        assert 'plugins."io.containerd.gc.v1.scheduler".schedule_delay' in r.stderr
        with pytest.raises(ConfigError, match="schedule_delay"):
            decode(SchedulerConfig, section, "gc", [])
    else:
        assert r.returncode == 0, r.stderr
        assert decode(SchedulerConfig, section, "gc", []).schedule_delay == decoded


def test_cri_durations_decode_as_containerd_does(tmp_path):
    """containerd's CRI duration fields are strings checked with time.ParseDuration."""
    r = _dump(tmp_path, f'{CRI}stream_idle_timeout = "1.2.3s"\n')
    assert r.returncode == 1 and "missing unit in duration '1.2.3s'" in r.stderr, r.stderr
    r = _dump(tmp_path, f"{CRI}stream_idle_timeout = 5\n")  # a string field: no number
    assert r.returncode == 1 and "expected string, got integer" in r.stderr, r.stderr
    r = _dump(tmp_path, f'{CRI}stream_idle_timeout = ""\n')  # containerd's default, 4h
    assert r.returncode == 0, r.stderr
    r = _dump(tmp_path, f'{CRI}image_pull_progress_timeout = "10 s"\n')
    assert r.returncode == 1 and "unknown unit ' s'" in r.stderr, r.stderr
    # version 3's runtime section: stats periods checked as containerd does
    r = subprocess.run([sys.executable, "-m", "ctrd.cli.daemon", "-c", "/dev/stdin",
                        "config", "dump"], input='version = 3\n[plugins."io.containerd.cri.v1'
                       '.runtime"]\nstats_retention_period = "2x"\n', capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "unknown unit 'x' in duration '2x'" in r.stderr, r.stderr


# --- ctrctl's options: seconds or a Go duration -----------------------------------------------

@pytest.mark.parametrize("text,seconds", [("30", 30.0), ("1.5", 1.5), (" 2s ", 2.0),
                                          ("1h2m3.5s", 3723.5), ("0", 0.0)])
def test_ctrctl_durations(text, seconds):
    from ctrd.cli.ctrctl import Duration

    assert Duration().convert(text, None, None) == seconds


@pytest.mark.parametrize("text,message", [("-1s", "negative"), ("-3", "negative"),
                                          ("1.2.3s", "missing unit"), ("inf", "not a duration"),
                                          ("nan", "not a duration"), ("", "invalid duration"),
                                          ("١s", "invalid duration")])
def test_ctrctl_refuses_bad_durations(text, message):
    import click

    from ctrd.cli.ctrctl import Duration

    with pytest.raises(click.BadParameter) as e:
        Duration().convert(text, None, None)
    assert message in str(e.value) and repr(text) in str(e.value)
