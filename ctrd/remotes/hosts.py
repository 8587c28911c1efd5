"""Registry hosts configuration: containerd's ``certs.d/<host>/hosts.toml``.

For a registry host (the host of a reference), :func:`registry_hosts` returns the ordered
endpoints to try: each ``[host."<url>"]`` table in file order (mirrors), then the ``server``
(or, without one, the default endpoint for the host). The directory looked up under the
config path is ``<host>_<port>_`` (containerd's spelling of ``host:port``), then ``<host>``,
then ``_default``. Defaults as containerd 1.6: ``docker.io`` -> ``https://registry-1.docker.io``;
localhost/loopback hosts -> plain http (TLS verification skipped); others https (or the
``default_scheme`` given, e.g. ``http`` for ``--plain-http``). Every endpoint's path is ``/v2``
unless the URL has a path (``/v2`` appended unless ``override_path = true``).

Keys per table: ``capabilities`` (``pull``, ``resolve``, ``push``; default all),
``skip_verify``, ``ca`` (path or list, relative to the host dir), ``client`` (cert path, or
``[cert, key]`` pairs), ``header`` (name -> string or list), ``override_path``. Unknown keys
are ignored (as containerd does); wrong types are :class:`InvalidArgument` naming file and key.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from ctrd.errdefs import InvalidArgument

CAPABILITIES = ("pull", "resolve", "push")
MAX_HOSTS_FILE = 1 << 20
DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"


@dataclass(frozen=True)
class Endpoint:
    """One place to reach a registry: ``scheme://host`` + ``path`` (ends in ``/v2`` unless
    overridden), what it may be used for, and its TLS and header settings."""

    scheme: str
    host: str
    path: str = "/v2"
    capabilities: frozenset[str] = frozenset(CAPABILITIES)
    skip_verify: bool = False
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()
    header: tuple[tuple[str, tuple[str, ...]], ...] = ()
    source: str = field(default="", compare=False)  # the hosts.toml it came from

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    @property
    def plain_http(self) -> bool:
        return self.scheme == "http"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def is_localhost(host: str) -> bool:
    """``localhost`` or a loopback IP, with or without a port (containerd's IsLocalhost)."""
    h = host
    if h.startswith("["):
        h = h[1:h.find("]")] if "]" in h else h
    elif h.count(":") == 1:
        h = h.split(":")[0]
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_directory(host: str) -> str:
    """containerd's directory name for ``host:port``: ``host_port_``."""
    i = host.rfind(":")
    return f"{host[:i]}_{host[i + 1:]}_" if i > 0 else host


def host_dir(config_path: str, host: str) -> str | None:
    """The directory under ``config_path`` that configures ``host`` (None: none does)."""
    candidates = []
    if host_directory(host) != host:
        candidates.append(host_directory(host))
    candidates += [host, "_default"]
    for c in candidates:
        if "/" in c or c in (".", ".."):
            continue
        p = os.path.join(config_path, c)
        if os.path.isdir(p):
            return p
    return None


def _err(source: str, key: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{source}: {key}: {why}")


def _strings(v: Any, source: str, key: str) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    raise _err(source, key, "expected a string or a list of strings")


def _abs(p: str, base: str) -> str:
    return p if os.path.isabs(p) else os.path.join(base, p)


def _endpoint(server: str, table: dict, source: str, where: str, base: str) -> dict:
    """The fields of one endpoint from ``server`` (may be "") and its table."""
    if not isinstance(table, dict):
        raise _err(source, where, "expected a table")
    out: dict[str, Any] = {"source": source}
    override = table.get("override_path", False)
    if not isinstance(override, bool):
        raise _err(source, f"{where}override_path", "expected a boolean")
    if server:
        if not isinstance(server, str):
            raise _err(source, where or "server", "expected a string")
        if not server.startswith(("http://", "https://")):
            if "://" in server:
                raise _err(source, where or "server",
                           f"unsupported scheme in {server!r} (http or https)")
            server = "https://" + server
        u = urllib.parse.urlsplit(server)
        if not u.netloc or u.query or u.fragment or "@" in u.netloc:
            raise _err(source, where or "server", f"invalid server URL {server!r}")
        path = u.path
        if path:
            path = posixpath.normpath(path)
            if not path.endswith("/v2") and not override:
                path = path.rstrip("/") + "/v2"
        elif not override:
            path = "/v2"
        out.update(scheme=u.scheme, host=u.netloc, path=path)
    if "capabilities" in table:
        caps = _strings(table["capabilities"], source, f"{where}capabilities")
        for c in caps:
            if c.lower() not in CAPABILITIES:
                raise _err(source, f"{where}capabilities", f"unknown capability {c!r}")
        out["capabilities"] = frozenset(c.lower() for c in caps)
    if "skip_verify" in table:
        if not isinstance(table["skip_verify"], bool):
            raise _err(source, f"{where}skip_verify", "expected a boolean")
        out["skip_verify"] = table["skip_verify"]
    if "ca" in table:
        out["ca"] = tuple(_abs(p, base) for p in _strings(table["ca"], source, f"{where}ca"))
    if "client" in table:
        pairs = []
        c = table["client"]
        for item in ([c] if isinstance(c, str) else c if isinstance(c, list) else [None]):
            if isinstance(item, str):
                pairs.append((_abs(item, base), ""))
            elif (isinstance(item, list) and len(item) == 2
                  and all(isinstance(x, str) for x in item)):
                pairs.append((_abs(item[0], base), _abs(item[1], base)))
            else:
                raise _err(source, f"{where}client",
                           "expected a path, or a list of paths or [cert, key] pairs")
        out["client"] = tuple(pairs)
    if "header" in table:
        h = table["header"]
        if not isinstance(h, dict):
            raise _err(source, f"{where}header", "expected a table")
        out["header"] = tuple((k, tuple(_strings(v, source, f"{where}header.{k}")))
                              for k, v in h.items())
    return out


def parse_hosts_file(data: bytes | str, source: str = "hosts.toml",
                     base_dir: str = "") -> list[dict]:
    """The endpoint field dicts of a hosts.toml, mirrors first, the ``server`` last (its
    ``host`` missing when the file has no ``server``). Sans-IO; see :func:`registry_hosts`."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _err(source, "(file)", f"not UTF-8: {e}") from None
    try:
        doc = tomllib.loads(data)
    except tomllib.TOMLDecodeError as e:
        raise _err(source, "(file)", f"invalid TOML: {e}") from None
    hosts = doc.get("host", {})
    if not isinstance(hosts, dict):
        raise _err(source, "host", "expected a table of [host.\"<url>\"] tables")
    result = []
    for name, table in hosts.items():
        if not name:
            raise _err(source, 'host.""', "empty host URL")
        result.append(_endpoint(name, table, source, f'host."{name}".', base_dir))
    server = doc.get("server", "")
    if not isinstance(server, str):
        raise _err(source, "server", "expected a string")
    result.append(_endpoint(server, doc, source, "", base_dir))
    return result


def default_endpoint(host: str, default_scheme: str = "") -> dict:
    if host == DOCKER_HUB:
        return {"scheme": "https", "host": DOCKER_HUB_ENDPOINT}
    if is_localhost(host):
        if default_scheme in ("", "http"):
            return {"scheme": "http", "host": host, "skip_verify": True}
        return {"scheme": default_scheme, "host": host}
    return {"scheme": default_scheme or "https", "host": host}


def registry_hosts(host: str, config_path: str | None = None, *,
                   default_scheme: str = "") -> list[Endpoint]:
    """The ordered endpoints for registry ``host`` (``docker.io``, ``127.0.0.1:5000``).

    ``config_path`` is the ``certs.d`` directory (None: no files). ``default_scheme`` ``http``
    makes the default endpoint plain http (``--plain-http``).
    """
    entries: list[dict] = [{}]
    d = host_dir(config_path, host) if config_path else None
    if d is not None:
        f = os.path.join(d, "hosts.toml")
        try:
            with open(f, "rb") as fh:
                data = fh.read(MAX_HOSTS_FILE + 1)
        except FileNotFoundError:
            data = None
        except OSError as e:
            raise _err(f, "(file)", str(e)) from None
        if data is not None:
            if len(data) > MAX_HOSTS_FILE:
                raise _err(f, "(file)", f"larger than {MAX_HOSTS_FILE} bytes")
            entries = parse_hosts_file(data, f, d)
    last = entries[-1]
    if "host" not in last:
        fields = default_endpoint(host, default_scheme)
        fields.update({k: v for k, v in last.items() if k != "skip_verify" or v})
        fields.setdefault("path", "/v2")
        entries[-1] = fields
    return [Endpoint(**e) for e in entries]
