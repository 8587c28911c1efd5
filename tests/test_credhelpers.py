"""Docker credential helpers (ctrd.remotes.credhelpers): ``credHelpers`` and ``credsStore`` in
docker's ``config.json``, asked in docker's order, through a real helper program
(``docker-credential-test``, a shell script on PATH). ctrctl pull using one against a real
registry: tests/test_ctrctl_login.py."""

from __future__ import annotations

import base64
import json
import os

import pytest

from ctrd.errdefs import FailedPrecondition, InvalidArgument
from ctrd.remotes import credhelpers
from ctrd.remotes.auth import Credentials

HELPER = """#!/bin/sh
read -r server || true
echo "$1 $server" >> "{log}"
case "$server" in
  r.example:5000) echo '{{"ServerURL":"r.example:5000","Username":"hu","Secret":"hs"}}' ;;
  https://index.docker.io/v1/) echo '{{"Username":"<token>","Secret":"idt"}}' ;;
  garbage.example) echo 'not json' ;;
  broken.example) echo 'keychain locked' >&2; exit 3 ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac
"""


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """``docker-credential-test`` on PATH; yields its log (one "get <server>" a line)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "helper.log"
    exe = bindir / "docker-credential-test"
    exe.write_text(HELPER.format(log=log))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', '')}")
    return log


def test_credential_helpers_in_dockers_order(tmp_path, helper):
    cfg = tmp_path / "config.json"
    auths = {"r.example:5000": {"auth": base64.b64encode(b"file:pw").decode()},
             "other.example": {"auth": base64.b64encode(b"o:pw").decode()}}
    cfg.write_text(json.dumps({"auths": auths, "credHelpers": {"r.example:5000": "test"}}))
    # credHelpers beats auths; a host without a helper keeps its auths entry.
    assert credhelpers.docker_credentials("r.example:5000", cfg) == Credentials("hu", "hs")
    assert credhelpers.docker_credentials("other.example", cfg) == Credentials("o", "pw")
    assert helper.read_text().splitlines() == ["get r.example:5000"]
    # credsStore serves every host; "<token>" is an identity token; "not found" is none,
    # even with an auths entry (docker's native store answers for the host).
    cfg.write_text(json.dumps({"auths": auths, "credsStore": "test"}))
    assert credhelpers.docker_credentials("docker.io", cfg) == Credentials(identity_token="idt")
    assert credhelpers.docker_credentials("other.example", cfg) is None
    assert helper.read_text().splitlines()[1:] == ["get https://index.docker.io/v1/",
                                                  "get other.example"]


def test_credential_helper_failures_are_clear(tmp_path, helper):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credsStore": "test"}))
    with pytest.raises(FailedPrecondition, match="docker-credential-test.*not JSON"):
        credhelpers.docker_credentials("garbage.example", cfg)
    with pytest.raises(FailedPrecondition, match="exit status 3: keychain locked"):
        credhelpers.docker_credentials("broken.example", cfg)
    cfg.write_text(json.dumps({"credHelpers": {"r.example": "absent"}}))
    with pytest.raises(FailedPrecondition, match="docker-credential-absent is not on PATH"):
        credhelpers.docker_credentials("r.example", cfg)
    for bad in ("../../bin/sh", "a/b", ""):
        cfg.write_text(json.dumps({"credHelpers": {"r.example": bad}}))
        if bad:
            with pytest.raises(InvalidArgument, match="not a plain name"):
                credhelpers.docker_credentials("r.example", cfg)
        else:
            assert credhelpers.docker_credentials("r.example", cfg) is None
    cfg.write_text(json.dumps({"credHelpers": []}))
    with pytest.raises(InvalidArgument, match="'credHelpers' must be an object"):
        credhelpers.docker_credentials("r.example", cfg)
