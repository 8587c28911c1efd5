"""The daemon's command line: the argparse-free fast path reads exactly what argparse reads,
and leaves everything else (help, errors, abbreviations, the config command) to argparse."""

from __future__ import annotations

import pytest

from ctrd.cli.daemon import _fast_args, _parser


@pytest.mark.parametrize("argv", [
    [],
    ["--root", "/r", "--state", "/s", "-a", "/s/x.sock"],
    ["--root=/r", "--state=/s", "--address=/s/x.sock"],
    ["-c", "/etc/ctrd/config.toml", "-l", "debug", "--log-format", "json"],
    ["--log-level=warn", "--root", "/a", "--root", "/b"],  # the last one wins
    ["--root=-odd", "--state", "with space"],  # "=": a value may start with "-"
])
def test_fast_path_reads_what_argparse_reads(argv):
    fast = _fast_args(argv)
    assert fast is not None
    assert vars(fast) == vars(_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [
    ["--help"], ["-h"], ["--version"], ["-v"], ["config", "default"],
    ["--ro", "/r"],                 # an abbreviation argparse would accept
    ["--root"],                     # missing value: argparse's error
    ["--root", "--state", "/s"],    # argparse reads --state as an option
    ["-l", "loud"],                 # not a choice: argparse's error names the choices
    ["--log-format=xml"],
    ["--root", ""],
    ["-a=/x.sock"],
    ["--bogus", "1"],
    ["/r"],
])
def test_everything_else_goes_to_argparse(argv):
    assert _fast_args(argv) is None


def test_bad_choice_is_argparse_error(capsys):
    from ctrd.cli.daemon import main

    with pytest.raises(SystemExit) as e:
        main(["-l", "loud"])
    assert e.value.code == 2
    assert "invalid choice: 'loud'" in capsys.readouterr().err
