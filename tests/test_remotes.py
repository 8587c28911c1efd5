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


# --- auth -----------------------------------------------------------------------------------

from ctrd.remotes import auth  # noqa: E402
from ctrd.remotes.auth import Challenge, Credentials, Unauthorized  # noqa: E402


@pytest.mark.parametrize("values, want", [
    (['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
      'scope="repository:library/busybox:pull"'],
     [Challenge("bearer", {"realm": "https://auth.docker.io/token",
                           "service": "registry.docker.io",
                           "scope": "repository:library/busybox:pull"})]),
    (['Basic realm="Registry Realm"'], [Challenge("basic", {"realm": "Registry Realm"})]),
    (['basic'], [Challenge("basic", {})]),
    (['Basic realm="a", Bearer realm="https://t/x", service=reg'],
     [Challenge("basic", {"realm": "a"}), Challenge("bearer", {"realm": "https://t/x",
                                                               "service": "reg"})]),
    (['Basic realm="a"', 'BEARER Realm="r\\"q"'],
     [Challenge("basic", {"realm": "a"}), Challenge("bearer", {"realm": 'r"q'})]),
    (['Bearer realm="https://t",error="insufficient_scope"'],
     [Challenge("bearer", {"realm": "https://t", "error": "insufficient_scope"})]),
    (['Negotiate abc123=='], [Challenge("negotiate", {"": "abc123=="})]),
])
def test_parse_challenges(values, want):
    assert auth.parse_challenges(values) == want


@pytest.mark.parametrize("value", ['Bearer realm="unterminated', 'Bearer realm=<x>', '"x"'])
def test_parse_challenges_garbage(value):
    with pytest.raises(InvalidArgument, match="WWW-Authenticate"):
        auth.parse_challenges([value])


def test_docker_config(tmp_path):
    import base64
    import json
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw:with:colons").decode()},
        "r.example:5000": {"username": "u", "password": "p"},
        "https://other.example/v2/": {"identitytoken": "idt"},
        "empty.example": {},
    }, "credsStore": "desktop"}))
    got = auth.load_docker_config(cfg)
    assert got == {"docker.io": Credentials("hub", "pw:with:colons"),
                   "r.example:5000": Credentials("u", "p"),
                   "other.example": Credentials("", "", "idt")}
    assert "pw" not in repr(got["docker.io"])
    assert auth.load_docker_config(tmp_path / "missing.json") == {}


@pytest.mark.parametrize("text, why", [
    ("{", "config.json"),
    ("[]", "JSON object"),
    ('{"auths": []}', "'auths' must be an object"),
    ('{"auths": {"h": {"auth": "***"}}}', "not valid base64"),
    ('{"auths": {"h": {"auth": "dXNlcg=="}}}', "username:password"),
    ('{"auths": {"h": {"username": 1}}}', "must be strings"),
])
def test_docker_config_hostile(tmp_path, text, why):
    cfg = tmp_path / "config.json"
    cfg.write_text(text)
    with pytest.raises(InvalidArgument, match="docker config") as e:
        auth.load_docker_config(cfg)
    assert why in str(e.value) and str(cfg) in str(e.value)


def test_token_request_and_credential_policy():
    c = Challenge("bearer", {"realm": "https://auth.example/token", "service": "reg"})
    creds = Credentials("u", "p")
    r = auth.token_request(c, ["repository:a/b:pull"], "reg.example", creds)
    assert r.method == "GET"
    assert r.url == ("https://auth.example/token?service=reg&scope=repository%3Aa%2Fb%3Apull")
    assert r.headers == {"Authorization": creds.basic()}
    # A plain-http realm on another host never gets the credentials...
    c2 = Challenge("bearer", {"realm": "http://auth.example/token"})
    assert auth.token_request(c2, [], "reg.example", creds).headers == {}
    # ...the registry's own host does, even over http.
    c3 = Challenge("bearer", {"realm": "http://reg.example:5000/token"})
    assert auth.token_request(c3, [], "reg.example:5000", creds).headers["Authorization"]
    r = auth.token_request(c, [], "reg.example", Credentials("", "", "idt"))
    assert r.method == "POST" and b"refresh_token=idt" in r.body
    with pytest.raises(InvalidArgument, match="realm"):
        auth.token_request(Challenge("bearer", {"realm": "file:///etc/passwd"}), [], "h", None)


def test_parse_token_response():
    assert auth.parse_token_response(b'{"token": "t", "expires_in": 300}', now=10) == \
        auth.Token("t", 310)
    assert auth.parse_token_response(b'{"access_token": "a"}', now=0) == auth.Token("a", 60)
    for bad in (b"nope", b"[]", b'{"token": ""}'):
        with pytest.raises(Unauthorized):
            auth.parse_token_response(bad)


def test_authorizer_caches_tokens_per_scope():
    calls = []

    def fetch(req):
        calls.append(req)
        return 200, b'{"token": "tok%d"}' % len(calls)

    a = auth.Authorizer({"reg": Credentials("u", "p")}, fetch)
    assert a.authorize("reg", ["s1"]) is None
    a.challenged("reg", ['Bearer realm="https://auth/t",service="reg"'])
    assert a.authorize("reg", ["s1"]) == "Bearer tok1"
    assert a.authorize("reg", ["s1"]) == "Bearer tok1"
    assert a.authorize("reg", ["s2"]) == "Bearer tok2"
    assert len(calls) == 2
    with pytest.raises(Unauthorized, match="no credentials"):
        a.challenged("other", ['Basic realm="x"'])
    with pytest.raises(Unauthorized, match="no supported"):
        a.challenged("other", ['Negotiate'])
    a2 = auth.Authorizer({}, lambda req: (401, b"denied"))
    a2.challenged("reg", ['Bearer realm="https://auth/t"'])
    with pytest.raises(Unauthorized, match="HTTP 401: denied"):
        a2.authorize("reg", [])


# --- hosts.toml -----------------------------------------------------------------------------

from ctrd.remotes import hosts  # noqa: E402
from ctrd.remotes.hosts import Endpoint  # noqa: E402


def test_default_hosts():
    assert hosts.registry_hosts("docker.io") == [Endpoint("https", "registry-1.docker.io")]
    assert hosts.registry_hosts("r.example") == [Endpoint("https", "r.example")]
    assert hosts.registry_hosts("r.example", default_scheme="http") == [
        Endpoint("http", "r.example")]
    assert hosts.registry_hosts("127.0.0.1:5000") == [
        Endpoint("http", "127.0.0.1:5000", skip_verify=True)]
    assert hosts.registry_hosts("localhost")[0].plain_http
    assert hosts.registry_hosts("[::1]:5000")[0].plain_http
    assert hosts.registry_hosts("r.example")[0].base_url == "https://r.example/v2"


def write_hosts(root, dirname, text):
    d = root / dirname
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(text)
    return d


def test_hosts_toml_mirrors_in_file_order(tmp_path):
    d = write_hosts(tmp_path, "docker.io", '''
server = "https://registry-1.docker.io"
[host."https://mirror-b.example"]
  capabilities = ["pull", "resolve"]
  ca = "ca.crt"
[host."http://mirror-a.example:5000/prefix"]
  capabilities = ["pull"]
  skip_verify = true
  header = {X-A = "1", X-B = ["2", "3"]}
  client = [["c.crt", "/abs/c.key"]]
[host."https://mirror-c.example/custom"]
  override_path = true
''')
    eps = hosts.registry_hosts("docker.io", str(tmp_path))
    assert [e.base_url for e in eps] == [
        "https://mirror-b.example/v2", "http://mirror-a.example:5000/prefix/v2",
        "https://mirror-c.example/custom", "https://registry-1.docker.io/v2"]
    b, a, c, server = eps
    assert b.capabilities == {"pull", "resolve"} and b.ca == (str(d / "ca.crt"),)
    assert a.capabilities == {"pull"} and a.skip_verify and a.plain_http
    assert a.header == (("X-A", ("1",)), ("X-B", ("2", "3")))
    assert a.client == ((str(d / "c.crt"), "/abs/c.key"),)
    assert server.capabilities == {"pull", "resolve", "push"}


def test_hosts_dir_lookup_and_default(tmp_path):
    write_hosts(tmp_path, "r.example_5000_", '[host."https://m.example"]\n')
    write_hosts(tmp_path, "_default", 'server = "https://fallback.example"\n')
    assert [e.base_url for e in hosts.registry_hosts("r.example:5000", str(tmp_path))] == [
        "https://m.example/v2", "https://r.example:5000/v2"]
    assert [e.base_url for e in hosts.registry_hosts("other.example", str(tmp_path))] == [
        "https://fallback.example/v2"]
    # A directory without hosts.toml is the default endpoint.
    (tmp_path / "plain.example").mkdir()
    assert hosts.registry_hosts("plain.example", str(tmp_path)) == [
        Endpoint("https", "plain.example")]
    # server without a scheme is https.
    write_hosts(tmp_path, "s.example", 'server = "s2.example"\ncapabilities = ["pull"]\n')
    assert hosts.registry_hosts("s.example", str(tmp_path)) == [
        Endpoint("https", "s2.example", capabilities=frozenset({"pull"}))]


@pytest.mark.parametrize("text, key", [
    ("server = [", "invalid TOML"),
    ("server = 5", "server: expected a string"),
    ('server = "ftp://x"', "unsupported scheme"),
    ('server = "https://u:p@x"', "invalid server URL"),
    ('server = "https://"', "invalid server URL"),
    ("host = 1", "host: expected a table"),
    ('[host."https://m"]\ncapabilities = ["pull", "delete"]', "unknown capability 'delete'"),
    ('[host."https://m"]\ncapabilities = "pull"\nskip_verify = "yes"',
     'host."https://m".skip_verify: expected a boolean'),
    ('[host."https://m"]\nca = 3', 'host."https://m".ca: expected a string'),
    ('[host."https://m"]\nclient = [["a"]]', "client: expected a path"),
    ('[host."https://m"]\nheader = "x"', "header: expected a table"),
    ('[host."https://m"]\nheader = {a = 1}', "header.a: expected a string"),
    ('override_path = 1', "override_path: expected a boolean"),
    ('[host.""]', "empty host URL"),
])
def test_hosts_toml_hostile(tmp_path, text, key):
    d = write_hosts(tmp_path, "h.example", text)
    with pytest.raises(InvalidArgument) as e:
        hosts.registry_hosts("h.example", str(tmp_path))
    assert str(d / "hosts.toml") in str(e.value) and key in str(e.value)


def test_hosts_toml_not_utf8_or_too_big(tmp_path):
    d = tmp_path / "h.example"
    d.mkdir()
    (d / "hosts.toml").write_bytes(b'server = "\xff"')
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        hosts.registry_hosts("h.example", str(tmp_path))
    (d / "hosts.toml").write_bytes(b"#" * (hosts.MAX_HOSTS_FILE + 1))
    with pytest.raises(InvalidArgument, match="larger than"):
        hosts.registry_hosts("h.example", str(tmp_path))
    assert hosts.host_dir(str(tmp_path), "../etc") is None
