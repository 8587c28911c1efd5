#!/usr/bin/env python3
"""Throughput of ctrd's local content store: a 1 GiB blob in 1 MiB writes through the
Python API (hash + write + commit, fsync included), ``--repeats`` times (default 3).

    sudo .venv/bin/python bench/content_write.py [--dir /var/tmp] [--repeats 3]

Prints per run: write+hash MB/s, commit seconds, overall MiB/s (no containerd side: this
measures the store's own I/O path; bench/run.py --only pull compares whole pulls).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctrd.content.local import LocalStore  # noqa: E402


def once(store: LocalStore) -> tuple[float, float, float]:
    chunks = [os.urandom(1 << 20) for _ in range(16)]
    h = hashlib.sha256()
    for i in range(1024):
        h.update(chunks[i % 16])
    d = "sha256:" + h.hexdigest()
    t0 = time.perf_counter()
    w = store.writer("bench", 1 << 30, d)
    for i in range(1024):
        w.write(chunks[i % 16])
    t1 = time.perf_counter()
    w.commit(1 << 30, d)
    t2 = time.perf_counter()
    store.delete(d)
    return 1024 / (t1 - t0), t2 - t1, 1024 / (t2 - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="bench-content-", dir=args.dir)
    try:
        store = LocalStore(os.path.join(base, "io.containerd.content.v1.content"))
        for n in range(args.repeats):
            write, commit, overall = once(store)
            print(f"run {n + 1}: write+hash {write:.0f} MB/s, commit {commit:.2f} s, "
                  f"overall {overall:.0f} MiB/s", flush=True)
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
