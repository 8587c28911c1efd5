"""The registry client (ctrd.remotes): references, auth, hosts.toml, resolve/fetch/push against
a real docker-registry and against small fake servers (stalls, 401 loops, token realms)."""

from __future__ import annotations

import pytest

from ctrd.errdefs import InvalidArgument
from ctrd.remotes import reference
from ctrd.remotes.reference import Reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("ref, want", [
    ("busybox", Reference("docker.io", "library/busybox", "latest")),
    ("busybox:1.36", Reference("docker.io", "library/busybox", "1.36")),
    ("docker.io/busybox", Reference("docker.io", "library/busybox", "latest")),
    ("index.docker.io/library/busybox", Reference("docker.io", "library/busybox", "latest")),
    ("user/app", Reference("docker.io", "user/app", "latest")),
    ("a/b/c:t", Reference("docker.io", "a/b/c", "t")),
    ("localhost/app", Reference("localhost", "app", "latest")),
    ("localhost:5000/a/b:v1", Reference("localhost:5000", "a/b", "v1")),
    ("127.0.0.1:5000/x", Reference("127.0.0.1:5000", "x", "latest")),
    ("registry.example.com/ns/app@" + D, Reference("registry.example.com", "ns/app", "", D)),
    ("registry.example.com/ns/app:v2@" + D,
     Reference("registry.example.com", "ns/app", "v2", D)),
    ("Example/app", Reference("Example", "app", "latest")),
    ("[::1]:5000/app", Reference("[::1]:5000", "app", "latest")),
    ("a__b/c-d--e.f_g:T_1.x-", Reference("docker.io", "a__b/c-d--e.f_g", "T_1.x-")),
])
def test_parse_reference(ref, want):
    assert reference.parse(ref) == want


@pytest.mark.parametrize("ref, why", [
    ("", "empty reference"),
    ("foo/Bar", "must be lowercase"),
    ("UPPER", "must be lowercase"),
    ("a b", "whitespace"),
    ("busybox:", "invalid tag"),
    ("busybox:-x", "invalid tag"),
    ("busybox:" + "t" * 129, "invalid tag"),
    ("busybox@sha256:abc", "invalid digest"),
    ("busybox@sha256:" + "A" * 64, "lowercase hex"),
    ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("busybox@sha256:" + "a" * 63, "expected 64"),
    ("a" * 64, "64-byte hexadecimal"),
    ("host.com/a//b", "path component ''"),
    ("host.com/-a", "path component '-a'"),
    ("-bad.com/a", "invalid registry host"),
    ("host.com:port/a", "invalid registry host"),
    (":tag", "missing repository"),
    ("x.io/" + "a" * 260, "longer than 255"),
])
def test_parse_reference_errors(ref, why):
    with pytest.raises(InvalidArgument, match="invalid reference") as e:
        reference.parse(ref)
    assert why in str(e.value)


def test_reference_forms():
    r = reference.parse("localhost:5000/a/b:v1@" + D)
    assert r.locator == "localhost:5000/a/b"
    assert r.object == "v1@" + D
    assert str(r) == "localhost:5000/a/b:v1@" + D
    assert str(reference.parse("busybox")) == "docker.io/library/busybox:latest"
    assert reference.familiar(reference.parse("busybox")) == "busybox:latest"
    assert reference.familiar(reference.parse("user/app:x")) == "user/app:x"
