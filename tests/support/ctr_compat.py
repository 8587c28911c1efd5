"""The same ctr script against ctrd and against containerd (``_compare``: every step's exit
status, stdout and stderr, normalised for times, ages and Go's map order), and ctrd's wording
mapped back to containerd 1.6's where 2.x reworded a message (``_as_16``)."""

from __future__ import annotations

import hashlib
import re
import subprocess

import conftest

def _normalise(text: str) -> str:
    # ctr 2.x prints the server's deprecation warnings first, in Go's map order (the
    # reference's enable_cdi one comes from its test config, tests/containerd2.py).
    lines = text.splitlines(keepends=True)
    text = "".join(sorted(ln for ln in lines if "DEPRECATION" in ln and "enable_cdi" not in ln)
                   + [ln for ln in lines if "DEPRECATION" not in ln])
    # ctr logs errors with a timestamp, lists ages and creation times: keep the rest.
    text = re.sub(r'time="[^"]*" ', "", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>", text)
    text = re.sub(r"Less than a second|About a minute|\d+ seconds", "<age>", text)
    # ctr prints label maps in Go's random map order: sort "a=b,c=d" lists.
    return re.sub(r"[^\s,=]+=[^\s,]*(?:,[^\s,=]+=[^\s,]*)+",
                  lambda m: ",".join(sorted(m.group(0).split(","))), text)


# Server messages containerd 2.x reworded: ctrd words them as 2.3.4 does, so against
# containerd 1.6 ctrd's text is compared in the 1.6 form (pattern in ctrd's text -> 1.6's).
REWORDED_SINCE_16 = [
    (r"label key and value length \(\d+ bytes\) greater", "label key and value greater"),
    (r"failed to commit snapshot [^:\s]+: snapshot", "failed to commit snapshot: snapshot"),
]


def _as_16(text: str) -> str:
    for pattern, old in REWORDED_SINCE_16:
        text = re.sub(pattern, old, text)
    return text


def _run_script(address: str, script: list[str], stdin: dict | None = None
                ) -> list[tuple[str, int, str, str]]:
    out = []
    for line in script:
        args = line.split()
        data = (stdin or {}).get(line)
        r = subprocess.run([conftest.CTR, "--address", address] + args, input=data,
                           capture_output=True, timeout=60)
        stdout = r.stdout.decode(errors="replace")
        if len(r.stdout) > 4096:  # a blob: compare its digest
            stdout = "sha256:" + hashlib.sha256(r.stdout).hexdigest()
        out.append((line, r.returncode, _normalise(stdout),
                    _normalise(r.stderr.decode(errors="replace"))))
    return out


def _compare(ctrd, containerd, script, stdin=None):
    theirs = _run_script(containerd.address, script, stdin)
    ours = _run_script(ctrd.address, script, stdin)
    differences = []
    for (line, *t), (_, *o) in zip(theirs, ours):
        t = [x.replace(str(containerd.root), "<root>") if isinstance(x, str) else x for x in t]
        o = [x.replace(str(ctrd.root), "<root>") if isinstance(x, str) else x for x in o]
        if conftest.CTR == conftest.CTR16:
            o = [_as_16(x) if isinstance(x, str) else x for x in o]
        if o != t:
            differences.append(f"ctr {_short(line)}:\n  ctrd gave       {_short(repr(o))}"
                               f"\n  containerd gave {_short(repr(t))}")
    # Every differing step, not only the first: one run shows the whole gap.
    assert not differences, "\n".join(differences)


def _short(text: str) -> str:
    """Long runs of one character (the oversized labels of the scripts) shortened to read."""
    return re.sub(r"(.)\1{40,}", lambda m: f"{m.group(1)}*{len(m.group(0))}", text)
