"""Which proxy a registry request goes through: Go's ``http.ProxyFromEnvironment`` rules
(golang.org/x/net/http/httpproxy), the ones containerd's registry transport uses.

Sans-IO: :meth:`ProxyConfig.from_environ` reads ``HTTPS_PROXY``, ``HTTP_PROXY`` and
``NO_PROXY`` (each upper-case first, then lower-case; an empty value counts as unset), and
:meth:`ProxyConfig.proxy_for` answers for one URL:

- an ``https`` URL uses ``HTTPS_PROXY``, an ``http`` URL ``HTTP_PROXY``; neither set: direct;
- ``localhost`` and loopback IPs are never proxied, whatever ``NO_PROXY`` says;
- ``NO_PROXY`` is a comma-separated list: ``*`` (nothing is proxied); an IP or CIDR
  (``10.0.0.1``, ``10.0.0.0/8``, ``[::1]:5000``), matching IP hosts only; a domain, with an
  optional port: ``example.com`` matches it and its subdomains, ``.example.com`` and
  ``*.example.com`` subdomains only. A port in an entry must equal the URL's port (80/443
  when the URL has none). Entries that parse as nothing are ignored, as in Go;
- a proxy value without a scheme (``proxy:3128``) is ``http://``; ``http``, ``https`` and
  ``socks5`` proxies are recognised (the transport says which it can use).

As in Go, ``HTTP_PROXY`` is refused when ``REQUEST_METHOD`` is set (a CGI environment, where a
client can set the ``Proxy`` header: golang.org/s/cgihttpproxy).
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass, field
from typing import Mapping

from ctrd.errdefs import InvalidArgument

_DEFAULT_PORTS = {"http": "80", "https": "443", "socks5": "1080"}


def _getenv(env: Mapping[str, str], *names: str) -> str:
    for n in names:
        if env.get(n):
            return env[n]
    return ""


def _parse_proxy(value: str) -> str:
    """Go's parseProxy: a URL with scheme http/https/socks5, else ``http://`` + value."""
    if not value:
        return ""
    u = urllib.parse.urlsplit(value)
    if u.scheme in ("http", "https", "socks5") and u.netloc:
        return value
    u = urllib.parse.urlsplit("http://" + value)
    if not u.netloc:
        return ""
    return "http://" + value


@dataclass(frozen=True)
class _NoProxyEntry:
    kind: str            # "ip", "cidr", "domain"
    value: str = ""      # ".domain" (domain entries)
    port: str = ""
    match_host: bool = False
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # ip (a /32, /128), cidr


def _split_host_port(s: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort for the forms NO_PROXY entries take (None: no port)."""
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or not s[end + 1:].startswith(":"):
            return None
        return s[1:end], s[end + 2:]
    if s.count(":") == 1:
        h, p = s.split(":")
        return h, p
    return None


def _parse_no_proxy(value: str) -> tuple[bool, tuple[_NoProxyEntry, ...]]:
    """(everything excluded, entries) of a NO_PROXY value."""
    out: list[_NoProxyEntry] = []
    for raw in value.split(","):
        p = raw.strip().lower()
        if not p:
            continue
        if p == "*":
            return True, ()
        try:
            if "/" in p:
                out.append(_NoProxyEntry("cidr", net=ipaddress.ip_network(p, strict=False)))
                continue
        except ValueError:
            pass
        hp = _split_host_port(p)
        host, port = hp if hp is not None else (p, "")
        if hp is not None and not host:
            continue  # ":80": no host part, ignored as Go does
        try:
            out.append(_NoProxyEntry("ip", port=port, net=ipaddress.ip_network(host)))
            continue
        except ValueError:
            pass
        if not host:
            continue
        if host.startswith("*."):
            host = host[1:]
        match_host = not host.startswith(".")
        if match_host:
            host = "." + host
        out.append(_NoProxyEntry("domain", host, port, match_host))
    return False, tuple(out)


@dataclass(frozen=True)
class ProxyConfig:
    """Proxy settings (see the module doc); ``ProxyConfig()`` is "no proxy"."""

    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""
    cgi: bool = False
    _all_excluded: bool = field(default=False, init=False, repr=False, compare=False)
    _entries: tuple[_NoProxyEntry, ...] = field(default=(), init=False, repr=False,
                                                compare=False)

    def __post_init__(self) -> None:
        everything, entries = _parse_no_proxy(self.no_proxy)
        object.__setattr__(self, "_all_excluded", everything)
        object.__setattr__(self, "_entries", entries)

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> "ProxyConfig":
        return cls(http_proxy=_getenv(env, "HTTP_PROXY", "http_proxy"),
                   https_proxy=_getenv(env, "HTTPS_PROXY", "https_proxy"),
                   no_proxy=_getenv(env, "NO_PROXY", "no_proxy"),
                   cgi=bool(env.get("REQUEST_METHOD")))

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL for a request to ``url`` (None: connect directly)."""
        u = urllib.parse.urlsplit(url)
        if u.scheme == "https":
            proxy = _parse_proxy(self.https_proxy)
        elif u.scheme == "http":
            proxy = _parse_proxy(self.http_proxy)
            if proxy and self.cgi:
                raise InvalidArgument("refusing to use HTTP_PROXY value in CGI environment; "
                                      "see golang.org/s/cgihttpproxy")
        else:
            return None
        if not proxy:
            return None
        host = (u.hostname or "").lower()
        try:
            port = str(u.port or _DEFAULT_PORTS.get(u.scheme, ""))
        except ValueError:
            return proxy  # Go: an address it cannot split is proxied (useProxy(""))
        return proxy if self._use_proxy(host, port) else None

    def _use_proxy(self, host: str, port: str) -> bool:
        if not host:
            return True
        if host == "localhost":
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and ip.is_loopback:
            return False
        if self._all_excluded:
            return False
        for e in self._entries:
            if e.net is not None:
                if ip is not None and ip.version == e.net.version and ip in e.net and \
                        (not e.port or e.port == port):
                    return False
            elif host.endswith(e.value) or (e.match_host and host == e.value[1:]):
                if not e.port or e.port == port:
                    return False
        return True
