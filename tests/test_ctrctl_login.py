"""``ctrctl login``/``logout`` against a real docker-registry with htpasswd (bcrypt) auth,
and the docker config file they keep."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import pytest

import images
from conftest import CTR
from support.cmd import ctl, ok

USER, PASSWORD = "tester", "s3cret-pw"

AUTH_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}/storage
  delete:
    enabled: true
auth:
  htpasswd:
    realm: ctrd-test
    path: {root}/htpasswd
http:
  addr: {addr}
"""


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for htpasswd, from the C library's crypt(3) (glibc/libxcrypt: $2b$)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            pytest.skip("no crypt module to make a bcrypt htpasswd entry (Python >= 3.13)")
    if crypt.METHOD_BLOWFISH not in crypt.methods:
        pytest.skip("crypt(3) here cannot make bcrypt hashes, which docker-registry needs")
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))


@pytest.fixture(scope="module")
def auth_registry():
    """docker-registry on 127.0.0.1:<free port> that wants Basic auth (htpasswd)."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    root = Path(tempfile.mkdtemp(prefix="ctrd-authreg-", dir="/tmp"))
    (root / "storage").mkdir()
    (root / "htpasswd").write_text(f"{USER}:{bcrypt_hash(PASSWORD)}\n")
    addr = f"127.0.0.1:{images.free_port()}"
    (root / "config.yml").write_text(AUTH_CONFIG.format(root=root, addr=addr))
    log = open(root / "registry.log", "w")
    proc = subprocess.Popen([exe, "serve", str(root / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    reg = images.Registry(root, proc, addr)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, reg.log()
            try:
                status, headers, _ = reg.request("GET", "/v2/")
                assert status == 401, (status, reg.log())  # auth is on
                assert headers.get("Www-Authenticate", "").startswith("Basic "), headers
                break
            except OSError:
                assert time.monotonic() < deadline, "registry did not come up: " + reg.log()
                time.sleep(0.05)
        yield reg
    finally:
        log.close()
        reg.stop()


@pytest.fixture
def docker_config(tmp_path, monkeypatch):
    """A DOCKER_CONFIG directory holding a config.json with settings login must keep."""
    d = tmp_path / "docker"
    d.mkdir()
    cfg = d / "config.json"
    cfg.write_text(json.dumps({"auths": {"other.example.com": {"auth": "b3RoZXI6cHc="}},
                               "psFormat": "table {{.ID}}", "experimental": "enabled"}))
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return cfg


def run(*args: str, stdin: str | None = None, address: str = "/nonexistent.sock",
        ) -> subprocess.CompletedProcess:
    return ctl(address, *args, input=stdin if stdin is not None else "", timeout=120)


def login(reg, password: str = PASSWORD, *extra: str) -> subprocess.CompletedProcess:
    return run("login", "--plain-http", "-u", USER, "--password-stdin", *extra, reg.address,
               stdin=password + "\n")


def test_login_saves_checked_credentials(auth_registry, docker_config):
    before = json.loads(docker_config.read_text())
    r = login(auth_registry)
    assert ok(r).strip() == "Login Succeeded"
    doc = json.loads(docker_config.read_text())
    entry = doc["auths"][auth_registry.address]
    assert base64.b64decode(entry["auth"]).decode() == f"{USER}:{PASSWORD}"
    # everything else is as it was
    assert {k: v for k, v in doc.items() if k != "auths"} == \
        {k: v for k, v in before.items() if k != "auths"}
    assert doc["auths"]["other.example.com"] == before["auths"]["other.example.com"]
    assert stat.S_IMODE(docker_config.stat().st_mode) == 0o600
    # no temporary files left next to it
    assert sorted(p.name for p in docker_config.parent.iterdir()) == ["config.json"]
    # the library that ctrctl pull uses reads them back
    from ctrd.remotes.auth import load_docker_config

    creds = load_docker_config(docker_config)[auth_registry.address]
    assert (creds.username, creds.secret) == (USER, PASSWORD)


def test_wrong_password_saves_nothing(auth_registry, docker_config):
    before = docker_config.read_bytes()
    r = login(auth_registry, "wrong")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"ctrctl: login to {auth_registry.address} failed"), r.stderr
    assert "401" in r.stderr
    assert docker_config.read_bytes() == before
    # an unknown user, likewise
    r = run("login", "--plain-http", "-u", "nobody", "--password-stdin", auth_registry.address,
            stdin=PASSWORD)
    assert r.returncode == 1 and "failed" in r.stderr
    assert docker_config.read_bytes() == before


def test_no_password_source_is_an_error(auth_registry, docker_config):
    r = run("login", "--plain-http", "-u", USER, auth_registry.address)
    assert r.returncode == 1 and "--password-stdin" in r.stderr, r.stderr
    r = run("login", "--plain-http", "--password-stdin", auth_registry.address, stdin="x")
    assert r.returncode == 1 and "username is required" in r.stderr, r.stderr


def test_logout_removes_only_that_registry(auth_registry, docker_config):
    ok(login(auth_registry))
    r = run("logout", auth_registry.address)
    assert ok(r).strip() == f"Removing login credentials for {auth_registry.address}"
    doc = json.loads(docker_config.read_text())
    assert auth_registry.address not in doc["auths"]
    assert "other.example.com" in doc["auths"] and doc["psFormat"] == "table {{.ID}}"
    assert ok(run("logout", auth_registry.address)).strip() == \
        f"Not logged in to {auth_registry.address}"


def test_login_creates_the_file(auth_registry, tmp_path, monkeypatch):
    d = tmp_path / "fresh" / ".docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    ok(login(auth_registry))
    cfg = d / "config.json"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert list(json.loads(cfg.read_text())) == ["auths"]


def test_login_to_open_registry_succeeds(registry, docker_config):
    """A registry that asks for no auth accepts any login (as docker login)."""
    r = run("login", "--plain-http", "-u", "anyone", "--password-stdin", registry.address,
            stdin="pw")
    assert ok(r).strip() == "Login Succeeded"


@pytest.mark.integration
@pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")
def test_pull_uses_the_saved_login(auth_registry, registry, ctrd, docker_config):
    """After login, ctrctl pull from the auth registry needs no -u."""
    src = registry.ref("busybox")
    dst = f"{auth_registry.address}/login/busybox:1"
    ok(run("pull", "--plain-http", src, address=ctrd.address))
    # nothing saved yet: the registry refuses us
    r = run("push", "--plain-http", dst, src, address=ctrd.address)
    assert r.returncode == 1, r.stdout
    ok(run("push", "--plain-http", "-u", f"{USER}:{PASSWORD}", dst, src, address=ctrd.address))
    r = run("pull", "--plain-http", dst, address=ctrd.address)
    assert r.returncode == 1, r.stdout
    ok(login(auth_registry))
    out = ok(run("pull", "--plain-http", dst, address=ctrd.address))
    assert registry.digest("busybox") in out
    assert os.stat(docker_config).st_mode & 0o077 == 0


@pytest.mark.integration
@pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")
def test_pull_uses_a_credential_helper(auth_registry, registry, ctrd, docker_config, tmp_path,
                                       monkeypatch):
    """credHelpers in config.json: ctrctl pull runs docker-credential-<name> get for the
    registry and uses its answer (no auths entry for it)."""
    src = registry.ref("busybox")
    dst = f"{auth_registry.address}/helper/busybox:1"
    ok(run("pull", "--plain-http", src, address=ctrd.address))
    ok(run("push", "--plain-http", "-u", f"{USER}:{PASSWORD}", dst, src, address=ctrd.address))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    asked = tmp_path / "asked"
    helper = bindir / "docker-credential-test"
    helper.write_text("#!/bin/sh\nread -r server || true\n"
                      f"echo \"$1 $server\" >> {asked}\n"
                      f"echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"{USER}\","
                      f"\"Secret\":\"{PASSWORD}\"}}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    doc = json.loads(docker_config.read_text())
    doc["credHelpers"] = {auth_registry.address: "test"}
    docker_config.write_text(json.dumps(doc))
    out = ok(run("pull", "--plain-http", dst, address=ctrd.address))
    assert registry.digest("busybox") in out
    assert asked.read_text().split() == ["get", auth_registry.address]
