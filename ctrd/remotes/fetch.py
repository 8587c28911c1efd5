"""The bridge from the registry client to the pull pipeline: resolve a reference and hand
``ctrd.images.pull`` a fetcher for its blobs."""

from __future__ import annotations

from ctrd.images import manifest as m
from ctrd.metadata.images import Descriptor as RegistryDescriptor


class RegistryFetcher:
    """``fetch(desc, offset)`` of one repository's blobs and manifests."""

    def __init__(self, repository) -> None:
        self._repo = repository

    def fetch(self, desc: m.Descriptor, offset: int = 0):
        return self._repo.fetch(RegistryDescriptor(desc.media_type, desc.digest, desc.size),
                                offset)


def registry_fetcher(ref: str, *, plain_http: bool = False, username: str = "",
                     secret: str = "", hosts_dir: str = "", progress_timeout: float = 30.0
                     ) -> tuple[str, m.Descriptor, RegistryFetcher]:
    """(image name, root descriptor, fetcher) for ``ref``; credentials, when given, are for
    the reference's own registry host only."""
    from ctrd.remotes.auth import Credentials
    from ctrd.remotes.reference import parse
    from ctrd.remotes.registry import Registry

    parsed = parse(ref)
    creds = {parsed.host: Credentials(username, secret)} if username else None
    registry = Registry(hosts_dir=hosts_dir or None, plain_http=plain_http, credentials=creds,
                        progress_timeout=progress_timeout)
    name, desc = registry.resolve(parsed)
    root = m.Descriptor(desc.media_type, desc.digest, desc.size)
    return name, root, RegistryFetcher(registry.repository(parsed))
