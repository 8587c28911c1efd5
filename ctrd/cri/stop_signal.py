"""A CRI container's stop signal: which signal StopContainer sends first (SIGKILL follows
after the timeout), and what ``ContainerStatus.stop_signal`` reports.

containerd 2.3.4 (``internal/cri/server/container_create.go``, ``container_stop.go``,
``container_stop_signal.go``): the request's ``ContainerConfig.stop_signal`` (a
``runtime.v1.Signal``; ``RUNTIME_DEFAULT`` = not set) wins, else the image config's
``StopSignal``, else SIGTERM; the chosen name is kept with the container (so a removed
image does not change it). Names are spelled as moby's ``signal.ParseSignal`` reads them
(``SIGUSR1``, ``USR1``, ``usr1``, ``10``, ``SIGRTMIN+3``, ``RTMAX-2``; RTMIN is 34 and RTMAX
64 as on Linux); the CRI enum spells ``+``/``-`` as ``PLUS``/``MINUS``.

Differences from containerd, both kinder to a user and invisible to a kubelet that sends
valid values:

- an image ``StopSignal`` that names no signal stops with SIGTERM (containerd's
  StopContainer then fails with "failed to parse stop signal" on every try, so the
  container only ever goes with a timeout-0 kill), and the status reports SIGTERM;
- the status reports an image signal spelled ``USR1`` or ``10`` as ``SIGUSR1``
  (containerd reports ``RUNTIME_DEFAULT`` for any spelling but the enum's own name).

Pure functions; no I/O.
"""

from __future__ import annotations

import signal as _signal

from ctrd.errdefs import InvalidArgument

SIGRTMIN, SIGRTMAX = 34, 64   # the kernel's, as moby's table has them (not glibc's 35)

# runtime.v1 Signal enum names in value order (RUNTIME_DEFAULT = 0): the proto's own list,
# so this module needs no generated code
ENUM_NAMES = (
    "RUNTIME_DEFAULT", "SIGABRT", "SIGALRM", "SIGBUS", "SIGCHLD", "SIGCLD", "SIGCONT",
    "SIGFPE", "SIGHUP", "SIGILL", "SIGINT", "SIGIO", "SIGIOT", "SIGKILL", "SIGPIPE",
    "SIGPOLL", "SIGPROF", "SIGPWR", "SIGQUIT", "SIGSEGV", "SIGSTKFLT", "SIGSTOP", "SIGSYS",
    "SIGTERM", "SIGTRAP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGUSR1", "SIGUSR2",
    "SIGVTALRM", "SIGWINCH", "SIGXCPU", "SIGXFSZ", "SIGRTMIN",
    *(f"SIGRTMINPLUS{i}" for i in range(1, 16)),
    *(f"SIGRTMAXMINUS{i}" for i in range(14, 0, -1)), "SIGRTMAX",
)
RUNTIME_DEFAULT = 0
SIGTERM_ENUM = ENUM_NAMES.index("SIGTERM")

# moby/sys/signal's Linux SignalMap (names without SIG)
_NUMBERS: dict[str, int] = {
    "ABRT": 6, "ALRM": 14, "BUS": 7, "CHLD": 17, "CLD": 17, "CONT": 18, "FPE": 8, "HUP": 1,
    "ILL": 4, "INT": 2, "IO": 29, "IOT": 6, "KILL": 9, "PIPE": 13, "POLL": 29, "PROF": 27,
    "PWR": 30, "QUIT": 3, "SEGV": 11, "STKFLT": 16, "STOP": 19, "SYS": 31, "TERM": 15,
    "TRAP": 5, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "USR1": 10, "USR2": 12,
    "VTALRM": 26, "WINCH": 28, "XCPU": 24, "XFSZ": 25, "RTMIN": SIGRTMIN, "RTMAX": SIGRTMAX,
    **{f"RTMIN+{i}": SIGRTMIN + i for i in range(1, 16)},
    **{f"RTMAX-{i}": SIGRTMAX - i for i in range(1, 15)},
}
# number -> the enum value reported for it (the first name in enum order: SIGCHLD, not
# SIGCLD; SIGABRT, not SIGIOT; SIGIO, not SIGPOLL)
_ENUM_OF_NUMBER: dict[int, int] = {}
for _i, _n in enumerate(ENUM_NAMES[1:], 1):
    _num = _NUMBERS[_n[3:].replace("PLUS", "+").replace("MINUS", "-")]
    _ENUM_OF_NUMBER.setdefault(_num, _i)


def from_enum(value: int, where: str = "stop_signal") -> str:
    """The signal name of a ``runtime.v1.Signal`` value (``SIGRTMIN+1`` for
    ``SIGRTMINPLUS1``); "" for RUNTIME_DEFAULT; InvalidArgument naming ``where`` for a value
    the enum does not have (containerd: "unknown CRI stop signal")."""
    if value == RUNTIME_DEFAULT:
        return ""
    if not 0 < value < len(ENUM_NAMES):
        raise InvalidArgument(f"{where}: unknown CRI stop signal {value}")
    return ENUM_NAMES[value].replace("PLUS", "+", 1).replace("MINUS", "-", 1)


def parse(name: str) -> int | None:
    """The signal number of a stop signal name or number as images spell it; None when it
    names no signal (0, out of 1..64, unknown names)."""
    name = name.strip()
    if name.isdigit():
        n = int(name)
        return n if 0 < n <= SIGRTMAX else None
    up = name.upper()
    return _NUMBERS.get(up[3:] if up.startswith("SIG") else up)


def number(kept: str) -> int:
    """The signal StopContainer sends first for the name kept with the container (the
    request's :func:`from_enum`, else the image's ``StopSignal``): SIGTERM when none, or
    when it names no signal."""
    return parse(kept) if kept and parse(kept) is not None else int(_signal.SIGTERM)


def to_enum(kept: str) -> int:
    """``ContainerStatus.stop_signal`` for the kept name: the enum's own name when it is
    one (so SIGCLD stays SIGCLD), else the signal :func:`number` sends, as the enum."""
    n = parse(kept) if kept else None
    if n is None:
        return SIGTERM_ENUM
    up = kept.strip().upper()
    up = (up if up.startswith("SIG") else "SIG" + up).replace("+", "PLUS", 1)
    up = up.replace("-", "MINUS", 1)
    if up in ENUM_NAMES:
        return ENUM_NAMES.index(up)
    return _ENUM_OF_NUMBER.get(n, SIGTERM_ENUM)


__all__ = ["ENUM_NAMES", "from_enum", "parse", "number", "to_enum"]
