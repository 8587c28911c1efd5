"""Where a CRI pull goes and with which credentials: ``[...cri.registry]`` and the kubelet's
``AuthConfig``, as a :class:`ctrd.remotes.registry.Registry` for one pull.

Endpoints of a registry host (containerd 1.6's ``registryHosts``):

- ``config_path`` set (``:``-separated roots of ``<host>/hosts.toml`` dirs): the first root
  that configures the host decides, as :func:`ctrd.remotes.hosts.registry_hosts` reads it;
  no root configures it: the host's default endpoint.
- otherwise the older ``mirrors.<host>.endpoint`` list (``mirrors."*"`` when the host has no
  entry), each endpoint's scheme defaulting to http for localhost and https otherwise, then the
  host's default endpoint unless one of the mirrors already is the host; TLS per endpoint
  host from ``configs.<host>.tls``. Mirrors may resolve and pull, never push.

``registry.headers`` go to every endpoint.

Credentials (containerd's ``ParseAuth``): the request's ``AuthConfig`` serves every endpoint
of the pulled reference's host (its mirrors included, as in containerd), unless its
``server_address`` names another host; without one, ``configs.<endpoint host>.auth`` (or the
deprecated ``auths.<url>``) for that endpoint. ``username``/``password`` beat
``identity_token`` (the OAuth refresh-token flow), which beats ``auth`` (base64 of
``user:password``). ``registry_token`` (containerd 1.6 ignores it) is sent as
``Authorization: Bearer`` to those same endpoints until a registry challenge replaces it.
Credentials are never used for another registry host: one :class:`CRIRegistry` serves one
pull of one reference.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import urllib.parse
from dataclasses import dataclass

from ctrd.cri.config import AuthConfig as ConfigAuth
from ctrd.cri.config import RegistrySection
from ctrd.errdefs import InvalidArgument
from ctrd.remotes import hosts as _hosts
from ctrd.remotes.auth import Credentials, normalize_host
from ctrd.remotes.registry import Registry

# Mirrors are for pulling (containerd gives them resolve and pull only).
_PULL_CAPS = frozenset({"pull", "resolve"})
# containerd's default endpoint for docker.io, and https/http defaults for the rest.
_DOCKER_HUB = _hosts.DOCKER_HUB


@dataclass(frozen=True)
class PullAuth:
    """The kubelet's ``runtime.v1.AuthConfig`` (or a config ``auth`` table). Its repr never
    shows a secret."""

    username: str = ""
    password: str = ""
    auth: str = ""
    server_address: str = ""
    identity_token: str = ""
    registry_token: str = ""

    @classmethod
    def from_pb(cls, pb) -> "PullAuth | None":
        """None when the request carries no auth at all (anonymous)."""
        if pb is None:
            return None
        a = cls(pb.username, pb.password, pb.auth, pb.server_address, pb.identity_token,
                pb.registry_token)
        return a if a != cls() else None

    @classmethod
    def from_config(cls, c: ConfigAuth | None) -> "PullAuth | None":
        if c is None:
            return None
        a = cls(c.username, c.password, c.auth, "", c.identitytoken)
        return a if a != cls() else None

    def applies_to(self, host: str) -> bool:
        """False when ``server_address`` names a different registry host than ``host``."""
        if not self.server_address:
            return True
        return normalize_host(self.server_address) == normalize_host(host)

    def credentials(self) -> Credentials | None:
        """containerd's ParseAuth, minus the host check (:meth:`applies_to`)."""
        if self.username:
            return Credentials(self.username, self.password)
        if self.identity_token:
            return Credentials(identity_token=self.identity_token)
        if self.auth:
            try:
                raw = base64.b64decode(self.auth, validate=True).decode()
            except (binascii.Error, ValueError, UnicodeDecodeError):
                raise InvalidArgument("auth config: auth is not valid base64") from None
            user, sep, password = raw.partition(":")
            if not sep:
                raise InvalidArgument("auth config: auth must encode 'username:password'")
            return Credentials(user, password.strip("\x00"))
        return None

    def __repr__(self) -> str:
        return (f"PullAuth(username={self.username!r}, server_address="
                f"{self.server_address!r}, secrets=***)")


def _config_auth(reg: RegistrySection, host: str) -> PullAuth | None:
    cfg = reg.configs.get(host)
    if cfg is not None and cfg.auth is not None:
        return PullAuth.from_config(cfg.auth)
    for key, a in reg.auths.items():  # deprecated: keyed by URL
        if normalize_host(key) == normalize_host(host):
            return PullAuth.from_config(a)
    return None


def _default_scheme(host: str) -> str:
    return "http" if _hosts.is_localhost(host) else "https"


def mirror_endpoints(reg: RegistrySection, host: str) -> list[_hosts.Endpoint]:
    """containerd 1.6's ``registryEndpoints`` + TLS per endpoint host (the pre-hosts.toml
    configuration)."""
    mirror = reg.mirrors.get(host) or reg.mirrors.get("*")
    urls = []
    for e in (mirror.endpoint if mirror is not None else []):
        if not isinstance(e, str) or not e:
            raise InvalidArgument(f"registry mirrors of {host}: invalid endpoint {e!r}")
        if "://" not in e:
            e = f"{_default_scheme(urllib.parse.urlsplit('dummy://' + e).netloc)}://{e}"
        urls.append(e)
    if not any(urllib.parse.urlsplit(u).netloc == host for u in urls):
        default = _hosts.DOCKER_HUB_ENDPOINT if host == _DOCKER_HUB else host
        urls.append(f"{_default_scheme(default)}://{default}")
    out = []
    for u in urls:
        parts = urllib.parse.urlsplit(u)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"registry mirrors of {host}: invalid endpoint {u!r}")
        fields: dict = {"scheme": parts.scheme, "host": parts.netloc,
                        "path": parts.path or "/v2", "capabilities": _PULL_CAPS,
                        "source": "registry.mirrors"}
        cfg = reg.configs.get(parts.netloc)
        tls = cfg.tls if cfg is not None else None
        if tls is not None:
            if bool(tls.cert_file) != bool(tls.key_file):
                raise InvalidArgument(f"registry configs of {parts.netloc}: cert_file and "
                                      "key_file go together")
            fields["skip_verify"] = tls.insecure_skip_verify
            if tls.ca_file:
                fields["ca"] = (tls.ca_file,)
            if tls.cert_file:
                fields["client"] = ((tls.cert_file, tls.key_file),)
        elif _hosts.is_localhost(host) and parts.scheme == "http":
            fields["skip_verify"] = True
        out.append(_hosts.Endpoint(**fields))
    return out


class CRIRegistry(Registry):
    """A :class:`Registry` for one CRI pull from ``host`` (see the module doc)."""

    def __init__(self, reg: RegistrySection, host: str, auth: PullAuth | None, *,
                 progress_timeout: float, **kw) -> None:
        self.reg, self.pull_host, self.auth = reg, host, auth
        roots = [r for r in reg.config_path.split(os.pathsep) if r] if reg.config_path else []
        self._roots = roots
        self._endpoints: list[_hosts.Endpoint] | None = None
        super().__init__(credentials=self._credentials, progress_timeout=progress_timeout,
                         **kw)
        # The request's credentials fail early (bad base64) rather than at the first 401.
        self._request_creds = auth.credentials() if auth is not None else None

    def _host_endpoints(self) -> list[_hosts.Endpoint]:
        if self._endpoints is not None:
            return self._endpoints
        if self._roots:
            root = next((r for r in self._roots if _hosts.host_dir(r, self.pull_host)), None)
            eps = _hosts.registry_hosts(self.pull_host, root)
        else:
            eps = mirror_endpoints(self.reg, self.pull_host)
        extra = tuple((k, tuple(v)) for k, v in self.reg.headers.items())
        out = []
        for ep in eps:
            header = ep.header + extra
            if self.auth is not None and self.auth.registry_token and \
                    self.auth.applies_to(ep.host):
                header += (("Authorization", (f"Bearer {self.auth.registry_token}",)),)
            out.append(dataclasses.replace(ep, header=header))
        self._endpoints = out
        return out

    def endpoints(self, host: str, capability: str) -> list[_hosts.Endpoint]:
        if host != self.pull_host:  # never: one registry per pulled reference
            raise InvalidArgument(f"registry for {self.pull_host} asked about {host}")
        eps = [e for e in self._host_endpoints() if e.can(capability)]
        if not eps:
            raise InvalidArgument(f"no endpoint of {host} can {capability}")
        return eps

    def _credentials(self, endpoint_host: str) -> Credentials | None:
        known = {e.host for e in self._host_endpoints()}
        if endpoint_host not in known:
            return None  # a host this pull was not configured for gets nothing
        if self.auth is not None:
            return self._request_creds if self.auth.applies_to(endpoint_host) else None
        a = _config_auth(self.reg, endpoint_host)
        return a.credentials() if a is not None else None

