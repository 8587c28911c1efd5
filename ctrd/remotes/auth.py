"""Registry authentication: ``WWW-Authenticate`` challenges, credentials, the token flow.

Lifecycle: a request goes out with whatever :meth:`Authorizer.authorize` returns for its
host and scopes (nothing at first). A 401 hands its ``WWW-Authenticate`` values to
:meth:`Authorizer.challenged`, which records the Basic or Bearer challenge for that host;
the request is retried once with the new ``Authorization``. A 401 after that is
:class:`Unauthorized`, never a loop.

Where credentials go (our policy, stricter than containerd 1.6's): credentials are looked up
by the *registry* host and sent only (a) to that host as Basic auth, or (b) to the token
realm that host's Bearer challenge named, as Basic auth on the token request, when the realm
is on the same host or is https. containerd sends them to any realm the registry names (that
is how ``docker.io`` -> ``auth.docker.io`` works, so (b) keeps that) but also over plain
http; we refuse that and fetch the token anonymously instead. Neither credentials nor tokens
are ever sent on a redirect (the HTTP layer strips ``Authorization`` when a redirect leaves
the host). Tokens are cached per (host, scopes) until ``expires_in`` (default 60 s) runs out.

Token requests: ``GET realm?service=..&scope=..`` with optional Basic credentials (docker's
flow); the answer's ``token`` or ``access_token`` is used. An identity token (docker config
``identitytoken``) is exchanged with ``POST realm`` ``grant_type=refresh_token`` instead.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ctrd.errdefs import PERMISSION_DENIED, CtrdError, InvalidArgument

DEFAULT_TOKEN_EXPIRY = 60  # seconds; distribution's token spec default
MAX_TOKEN_RESPONSE = 1 << 20


class Unauthorized(CtrdError):
    """The registry refused our credentials (or we have none it accepts)."""

    kind, code = "unauthorized", PERMISSION_DENIED


# --- WWW-Authenticate -----------------------------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    """One challenge: ``scheme`` lower-cased (``bearer``, ``basic``), ``params`` with
    lower-cased keys (``realm``, ``service``, ``scope``, ``error``)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


_TCHAR = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _tokens(value: str) -> list[tuple[str, str]]:
    """(kind, text) with kind in 'tok', 'str', '=', ','; InvalidArgument on garbage."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t":
            i += 1
        elif c in "=,":
            out.append((c, c))
            i += 1
        elif c == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise InvalidArgument(f"WWW-Authenticate {value!r}: unterminated quoted string")
                c = value[i]
                if c == "\\" and i + 1 < n:
                    buf.append(value[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    buf.append(c)
                    i += 1
            out.append(("str", "".join(buf)))
        elif c in _TCHAR or c == "/":
            j = i
            while j < n and (value[j] in _TCHAR or value[j] == "/"):
                j += 1
            out.append(("tok", value[i:j]))
            i = j
        else:
            raise InvalidArgument(f"WWW-Authenticate {value!r}: unexpected {c!r} at {i}")
    return out


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """All challenges in the ``WWW-Authenticate`` header values (RFC 7235: several per value,
    ``scheme k=v, k="quoted"``, or ``scheme token68``)."""
    result: list[Challenge] = []
    for value in values:
        toks = _tokens(value)
        i = 0
        scheme: str | None = None
        params: dict[str, str] = {}

        def flush() -> None:
            if scheme is not None:
                result.append(Challenge(scheme.lower(), dict(params)))

        while i < len(toks):
            kind, text = toks[i]
            if kind == ",":
                i += 1
                continue
            if kind != "tok":
                raise InvalidArgument(f"WWW-Authenticate {value!r}: unexpected {text!r}")
            if i + 1 < len(toks) and toks[i + 1][0] == "=" and scheme is not None:
                if i + 2 < len(toks) and toks[i + 2][0] in ("tok", "str"):
                    params[text.lower()] = toks[i + 2][1]
                    i += 3
                    continue
                # token68 ("abc==") or an empty value
                j = i + 1
                while j < len(toks) and toks[j][0] == "=":
                    j += 1
                params.setdefault("", text + "=" * (j - i - 1))
                i = j
                continue
            flush()
            scheme, params = text, {}
            i += 1
        flush()
    return result


# --- credentials ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """``username``/``secret`` for Basic auth; ``identity_token`` for the OAuth refresh flow."""

    username: str = ""
    secret: str = ""
    identity_token: str = ""

    def basic(self) -> str:
        raw = f"{self.username}:{self.secret}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(username={self.username!r}, secret=***)"


_DOCKER_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", "docker.io"}


def normalize_host(key: str) -> str:
    """The registry host a docker config ``auths`` key means (``https://index.docker.io/v1/``
    -> ``docker.io``, ``https://r.example:5000/x`` -> ``r.example:5000``)."""
    k = key.strip()
    if "://" in k:
        k = urllib.parse.urlsplit(k).netloc
    else:
        k = k.split("/", 1)[0]
    k = k.lower()
    return "docker.io" if k in _DOCKER_HUB_ALIASES else k


def docker_config_path(path: str | os.PathLike | None = None) -> Path:
    """``path``, or ``$DOCKER_CONFIG/config.json``, or ``~/.docker/config.json``."""
    if path is not None:
        return Path(path)
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def read_docker_config(path: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """(file, its JSON object) of a docker ``config.json`` (:func:`docker_config_path`); a
    missing file is ``{}``; anything but a JSON object is :class:`InvalidArgument`."""
    p = docker_config_path(path)
    try:
        doc = json.loads(p.read_bytes())
    except FileNotFoundError:
        return p, {}
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"docker config {str(p)!r}: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"docker config {str(p)!r}: expected a JSON object")
    return p, doc


def load_docker_config(path: str | os.PathLike | None = None) -> dict[str, Credentials]:
    """Credentials by registry host from a docker ``config.json`` (``auths`` entries with
    ``auth`` = base64(user:password), or ``username``/``password``, or ``identitytoken``).

    ``path`` defaults to ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``; a
    missing file is no credentials. Credential helpers (``credsStore``, ``credHelpers``) are
    not run here: :func:`ctrd.remotes.credhelpers.docker_credentials` asks them.
    """
    p, doc = read_docker_config(path)
    auths = doc.get("auths", {})
    if not isinstance(auths, dict):
        raise InvalidArgument(f"docker config {str(p)!r}: 'auths' must be an object")
    out: dict[str, Credentials] = {}
    for key, entry in auths.items():
        where = f"docker config {str(p)!r}: auths[{key!r}]"
        if not isinstance(entry, dict):
            raise InvalidArgument(f"{where} must be an object")
        user, secret = entry.get("username", ""), entry.get("password", "")
        if entry.get("auth"):
            try:
                raw = base64.b64decode(entry["auth"], validate=True).decode()
            except (ValueError, TypeError):
                raise InvalidArgument(f"{where}.auth is not valid base64") from None
            if ":" not in raw:
                raise InvalidArgument(f"{where}.auth must encode 'username:password'")
            user, secret = raw.split(":", 1)
        token = entry.get("identitytoken", "")
        if not all(isinstance(v, str) for v in (user, secret, token)):
            raise InvalidArgument(f"{where}: username, password and identitytoken must be strings")
        if user or secret or token:
            out[normalize_host(key)] = Credentials(user, secret, token)
    return out


# --- tokens ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenRequest:
    """What to send to a token realm: ``method`` GET or POST, ``url``, ``headers``, ``body``."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None = None


def host_of(url: str) -> str:
    """``host[:port]`` of ``url``, lower-cased, default ports dropped."""
    u = urllib.parse.urlsplit(url)
    host = (u.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if u.port and not ((u.scheme == "https" and u.port == 443)
                       or (u.scheme == "http" and u.port == 80)):
        host = f"{host}:{u.port}"
    return host


def realm_may_receive_credentials(realm: str, registry_host: str) -> bool:
    """Our policy (module doc): the registry's own host, or an https realm it named."""
    return host_of(realm) == host_of("http://" + registry_host) or \
        urllib.parse.urlsplit(realm).scheme == "https"


def token_request(challenge: Challenge, scopes: Iterable[str], registry_host: str,
                  creds: Credentials | None) -> TokenRequest:
    """The request that fetches a Bearer token for ``scopes`` (sans-IO)."""
    realm = challenge.params.get("realm", "")
    u = urllib.parse.urlsplit(realm)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise InvalidArgument(f"invalid token auth challenge realm {realm!r} from "
                              f"{registry_host}")
    if creds is not None and not realm_may_receive_credentials(realm, registry_host):
        creds = None
    service = challenge.params.get("service", "")
    scopes = sorted(set(scopes) | set(filter(None, challenge.params.get("scope", "").split(" "))))
    if creds is not None and creds.identity_token:
        form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                "service": service, "client_id": "ctrd", "scope": " ".join(scopes)}
        return TokenRequest("POST", realm, {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
            urllib.parse.urlencode(form).encode())
    query = ([("service", service)] if service else []) + [("scope", s) for s in scopes]
    sep = "&" if u.query else "?"
    url = realm + (sep + urllib.parse.urlencode(query) if query else "")
    headers = {"Authorization": creds.basic()} if creds is not None and creds.username else {}
    return TokenRequest("GET", url, headers)


@dataclass(frozen=True)
class Token:
    token: str
    expires_at: float


def parse_token_response(body: bytes, now: float | None = None) -> Token:
    """The token in a token endpoint's JSON answer (``token`` or ``access_token``)."""
    now = time.monotonic() if now is None else now
    try:
        doc = json.loads(body)
    except ValueError:
        raise Unauthorized("token endpoint answered with invalid JSON") from None
    if not isinstance(doc, dict):
        raise Unauthorized("token endpoint answered with a non-object")
    tok = doc.get("token") or doc.get("access_token")
    if not isinstance(tok, str) or not tok:
        raise Unauthorized("authorization server did not include a token in the response")
    exp = doc.get("expires_in")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= 0:
        exp = DEFAULT_TOKEN_EXPIRY
    return Token(tok, now + float(exp))


def repository_scope(repository: str, *actions: str) -> str:
    """``repository:<repo>:pull[,push]``."""
    return f"repository:{repository}:{','.join(actions or ('pull',))}"


# --- the stateful part ----------------------------------------------------------------------

# (status, body) of a token request; the HTTP layer bounds the body.
TokenFetcher = Callable[[TokenRequest], tuple[int, bytes]]
CredentialsFunc = Callable[[str], "Credentials | None"]


class Authorizer:
    """Per-host auth state (challenges, cached tokens) for one client.

    ``credentials(host)`` gives the credentials of a registry host (or None);
    ``fetch_token(req)`` performs a :class:`TokenRequest` and returns (status, body).
    """

    def __init__(self, credentials: CredentialsFunc | Mapping[str, Credentials] | None = None,
                 fetch_token: TokenFetcher | None = None) -> None:
        if credentials is None:
            credentials = {}
        if isinstance(credentials, Mapping):
            table = dict(credentials)
            credentials = lambda host: table.get(host)  # noqa: E731
        self._credentials = credentials
        self._fetch_token = fetch_token
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], Token] = {}
        self._lock = threading.Lock()

    def challenged(self, host: str, www_authenticate: Iterable[str]) -> None:
        """Record the challenge of a 401 from ``host``; drops cached tokens for it.

        Raises :class:`Unauthorized` if no challenge is one we can answer."""
        chosen = None
        for c in parse_challenges(www_authenticate):
            if c.scheme == "bearer" and c.params.get("realm"):
                chosen = c
                break
            if c.scheme == "basic" and chosen is None:
                chosen = c
        if chosen is None:
            raise Unauthorized(f"{host}: no supported authentication challenge in 401 response")
        if chosen.scheme == "basic" and self._credentials(host) is None:
            raise Unauthorized(f"{host} requires basic authentication and no credentials "
                               "are configured for it")
        with self._lock:
            self._challenges[host] = chosen
            for k in [k for k in self._tokens if k[0] == host]:
                del self._tokens[k]

    def authorize(self, host: str, scopes: Iterable[str] = ()) -> str | None:
        """The ``Authorization`` value for a request to ``host`` (None: send none)."""
        with self._lock:
            c = self._challenges.get(host)
        if c is None:
            return None
        creds = self._credentials(host)
        if c.scheme == "basic":
            return creds.basic() if creds is not None else None
        key = (host, tuple(sorted(set(scopes))))
        now = time.monotonic()
        with self._lock:
            t = self._tokens.get(key)
        if t is not None and t.expires_at - 5 > now:
            return "Bearer " + t.token
        if self._fetch_token is None:
            raise Unauthorized(f"{host} requires a token and no token fetcher is set")
        req = token_request(c, key[1], host, creds)
        status, body = self._fetch_token(req)
        if status != 200:
            who = f" as {creds.username!r}" if creds is not None and creds.username else ""
            raise Unauthorized(f"fetching a token for {host}{who} from {req.url.split('?')[0]}"
                               f" failed: HTTP {status}: {body[:200].decode(errors='replace')}")
        t = parse_token_response(body, now)
        with self._lock:
            self._tokens[key] = t
        return "Bearer " + t.token
