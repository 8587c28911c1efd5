"""Image references, parsed and normalized as containerd and docker do.

``[host[:port]/]path[:tag][@digest]``: a first component is a host when it contains ``.`` or
``:``, is ``localhost``, or has upper-case letters; otherwise the host is ``docker.io`` and a
single-component path gets ``library/``. With neither tag nor digest the tag is ``latest``
(containerd's ``ParseNormalizedNamed`` + ``TagNameOnly``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ctrd.content.store import validate_digest
from ctrd.errdefs import InvalidArgument

DEFAULT_HOST = "docker.io"
LEGACY_DEFAULT_HOST = "index.docker.io"
OFFICIAL_PREFIX = "library/"
NAME_TOTAL_MAX = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])"
                     r"(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")


@dataclass(frozen=True)
class Reference:
    """A normalized reference: ``host`` (``docker.io``, ``localhost:5000``), ``repository``
    (``library/busybox``), ``tag`` and/or ``digest`` (at least one is set)."""

    host: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def locator(self) -> str:
        """``host/repository`` (containerd's ``Spec.Locator``)."""
        return f"{self.host}/{self.repository}"

    @property
    def object(self) -> str:
        """``tag``, ``@digest`` or ``tag@digest`` (containerd's ``Spec.Object``)."""
        return self.tag + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.locator + (f":{self.tag}" if self.tag else "") + (
            f"@{self.digest}" if self.digest else "")


def _invalid(ref: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid reference {ref!r}: {why}")


def parse(ref: str, *, default_tag: str = "latest") -> Reference:
    """Parse and normalize ``ref``; :class:`InvalidArgument` says what is wrong."""
    if not isinstance(ref, str) or not ref:
        raise _invalid(str(ref), "empty reference")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise _invalid(ref, "must not contain whitespace")
    if re.fullmatch(r"[a-f0-9]{64}", ref):
        raise _invalid(ref, "cannot specify 64-byte hexadecimal strings")
    name, digest = ref, ""
    if "@" in ref:
        name, digest = ref.split("@", 1)
        if not _DIGEST_SHAPE.fullmatch(digest):
            raise _invalid(ref, f"invalid digest {digest!r}")
        try:
            validate_digest(digest)
        except InvalidArgument as e:
            raise _invalid(ref, e.detail) from None
    # The tag is after the last ':' that follows the last '/' (a port is before a '/').
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise _invalid(ref, f"invalid tag {tag!r}")
    if not name:
        raise _invalid(ref, "missing repository name")
    host, _, rest = name.partition("/")
    if not rest or ("." not in host and ":" not in host and host != "localhost"
                    and host.lower() == host):
        host, rest = DEFAULT_HOST, name
    elif not _DOMAIN.fullmatch(host):
        raise _invalid(ref, f"invalid registry host {host!r}")
    if host == LEGACY_DEFAULT_HOST:
        host = DEFAULT_HOST
    if host == DEFAULT_HOST and "/" not in rest:
        rest = OFFICIAL_PREFIX + rest
    for comp in rest.split("/"):
        if _PATH_COMPONENT.fullmatch(comp):
            continue
        if comp and _PATH_COMPONENT.fullmatch(comp.lower()):
            raise _invalid(ref, "repository name must be lowercase")
        raise _invalid(ref, f"invalid repository path component {comp!r}")
    if len(host) + 1 + len(rest) > NAME_TOTAL_MAX:
        raise _invalid(ref, f"repository name must not be longer than {NAME_TOTAL_MAX} characters")
    if not tag and not digest:
        tag = default_tag
    return Reference(host, rest, tag, digest)


def familiar(ref: Reference) -> str:
    """The short form docker prints (``busybox:latest`` for ``docker.io/library/busybox``)."""
    s = str(ref)
    if ref.host == DEFAULT_HOST:
        s = s[len(DEFAULT_HOST) + 1:]
        if s.startswith(OFFICIAL_PREFIX) and "/" not in ref.repository[len(OFFICIAL_PREFIX):]:
            s = s[len(OFFICIAL_PREFIX):]
    return s
