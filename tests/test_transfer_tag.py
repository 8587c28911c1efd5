"""``ctr`` 2.3.4 ``images tag`` through the Transfer service (ImageStore -> ImageStore),
against ctrd and containerd 2.3.4 side by side: new names, an existing name moved (with or
without ``--force``: over Transfer the name is always replaced, its labels dropped), a missing
source, a bad target reference; the Images service's events.
"""

from __future__ import annotations

import subprocess
import time

import pytest

import containerd2
import ctr2
from support.transfer import c2, pull  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not ctr2.available() or not containerd2.available(),
                                 reason=f"containerd 2.3.4 binaries absent ({ctr2.CTR})")]


def script(address: str, registry) -> list[tuple[int, str, str]]:
    a, m = registry.ref("busybox"), registry.ref("busybox-multi")
    x = f"{registry.address}/tagged/x:1"
    ctr2.ok(pull(address, a))
    ctr2.ok(pull(address, m))
    steps = [("images", "label", a, "from=source"),
             ("images", "tag", m, x),
             ("images", "label", x, "k=v"),
             ("images", "tag", a, x),            # exists: moved, labels replaced
             ("images", "tag", "--force", a, x),
             ("images", "tag", a, x, f"{x}-b", f"{x}-c"),
             ("images", "tag", registry.ref("busybox").replace("latest", "nope"), x),
             ("images", "tag", a, "Bad Ref"),
             ("images", "ls")]
    out = []
    for s in steps:
        r = ctr2.run(address, *s)
        out.append((r.returncode, r.stdout, ctr2.errors(r)))
    return out


def test_tag_as_containerd(c2, ctrd, registry):  # noqa: F811
    ours, theirs = script(ctrd.address, registry), script(c2.address, registry)
    assert ours == theirs
    listing = ours[-1][1]
    x = f"{registry.address}/tagged/x:1"
    row = next(line for line in listing.splitlines() if line.startswith(x + " "))
    assert registry.digest("busybox") in row and "k=v" not in row and "from=source" not in row


def test_tag_events(ctrd, registry):
    a = registry.ref("busybox")
    ctr2.ok(pull(ctrd.address, a))
    events = subprocess.Popen([str(ctr2.CTR), "--address", ctrd.address, "events"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.5)  # subscribed before the tags
        x = f"{registry.address}/tagged/e:1"
        ctr2.ok(ctr2.run(ctrd.address, "images", "tag", a, x))
        ctr2.ok(ctr2.run(ctrd.address, "images", "tag", a, x))
        deadline = time.monotonic() + 20
        lines: list[str] = []
        while time.monotonic() < deadline and len(lines) < 2:
            line = events.stdout.readline()
            if "/images/" in line:
                lines.append(line)
    finally:
        events.kill()
        events.wait()
    assert "/images/create" in lines[0] and x in lines[0]
    assert "/images/update" in lines[1] and x in lines[1]
