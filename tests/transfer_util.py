"""Helpers for the Transfer archive tests: archives built offline (OCI layouts of
:mod:`images` as tars, a hand-made ``docker save`` archive), the real ctr 2.3.4 against a
daemon, containerd 2.3.4 beside ctrd, and listings compared with the volatile parts
masked."""

from __future__ import annotations

import re
import subprocess
import tarfile
from pathlib import Path

import pytest

import containerd2
import images
from support.cmd import ok

NS = "xfer"


def need_ctr2() -> None:
    if not containerd2.CTR.exists():
        pytest.skip(f"{containerd2.CTR} is absent (../shared/bin/containerd-2.3.4)")


def need_containerd2() -> None:
    if not containerd2.available():
        pytest.skip(f"{containerd2.BIN_DIR} is absent (../shared/bin/containerd-2.3.4)")


def ctr2(address: str, *args: str, stdin=None, timeout: float = 180,
         namespace: str = NS) -> subprocess.CompletedProcess:
    return subprocess.run([str(containerd2.CTR), "--address", address, "-n", namespace,
                           *args], capture_output=True, text=True, timeout=timeout,
                          stdin=stdin)


def tar_layout(layout: Path, out: Path) -> Path:
    """An OCI image layout directory as a tar (what ``ctr export`` writes, name-sorted)."""
    with tarfile.open(out, "w") as t:
        for p in sorted(layout.rglob("*")):
            t.add(p, arcname=str(p.relative_to(layout)), recursive=False)
    return out


def build_archives(out: Path) -> dict[str, Path]:
    """``oci`` (busybox), ``multi`` (an index: host arch + a placeholder), ``docker``
    (moby's ``docker save`` layout, uncompressed layers)."""
    from support.archives import moby_archive

    built = images.build_busybox(out / "layouts")
    arch = {"oci": tar_layout(built["busybox"].root, out / "busybox.tar"),
            "multi": tar_layout(built["busybox-multi"].root, out / "multi.tar"),
            "docker": out / "docker.tar"}
    moby_archive(arch["docker"])
    return arch


def start_containerd2(base: Path) -> containerd2.Containerd2:
    (base / "cni").mkdir(parents=True, exist_ok=True)
    return containerd2.Containerd2.start(base / "c2", cni_bin_dirs=[str(base / "cni")],
                                         cni_conf_dir=str(base / "cni"), debug=False)


_EXPIRE = re.compile(r"(containerd\.io/gc\.expire=)[0-9T:+\-Z]+")


def image_rows(address: str, namespace: str = NS) -> list[str]:
    """``ctr images ls`` rows, whitespace-normalised, the gc.expire time masked."""
    out = ok(ctr2(address, "images", "ls", namespace=namespace))
    return sorted(_EXPIRE.sub(r"\1<time>", " ".join(line.split()))
                  for line in out.splitlines()[1:] if line.strip())


def snapshot_keys(address: str, namespace: str = NS) -> list[str]:
    out = ok(ctr2(address, "snapshots", "ls", namespace=namespace))
    return sorted(line.split()[0] for line in out.splitlines()[1:] if line.strip())


def members(path: Path) -> list[tuple]:
    with tarfile.open(path) as t:
        return [(m.name, m.type, m.mode, m.size) for m in t.getmembers()]


def member_bytes(path: Path, name: str) -> bytes | None:
    with tarfile.open(path) as t:
        try:
            f = t.extractfile(name)
        except KeyError:
            return None
        return f.read() if f else None
