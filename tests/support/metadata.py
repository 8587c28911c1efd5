"""A metadata store on a local content store in the test's temp dir (``md``, closed at the
end) and ``put``: one blob committed into it (its digest)."""

from __future__ import annotations

import hashlib

import pytest

from ctrd.content.local import LocalStore
from ctrd.metadata.store import Metadata

@pytest.fixture
def md(tmp_path):
    m = Metadata(str(tmp_path / "meta"), LocalStore(tmp_path / "content"))
    yield m
    m.close()


def put(md, ns, data: bytes, labels=None, lease=None, ref=None) -> str:
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    w = md.content.writer(ns, ref or d, len(data), d, lease)
    try:
        w.write(data)
        w.commit(len(data), d, labels)
    finally:
        w.close()
    return d
