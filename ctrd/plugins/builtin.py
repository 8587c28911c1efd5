"""ctrd's built-in plugins, registered through the public ``ctrd.plugins`` entry point like any
third-party package (pyproject: ``builtin = "ctrd.plugins.builtin"``).

Each registration only wires: it imports its implementation inside ``init`` (so listing
plugins, e.g. ``ctrd config default``, imports nothing heavy) and hands it what it requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctrd.config import setting
from ctrd.plugins.hookspec import hookimpl
from ctrd.plugins.registration import (EVENT, GRPC, METADATA, SERVICE, InitContext,
                                       Registration)


# --- events -------------------------------------------------------------------------------

def _init_exchange(ic: InitContext):
    from ctrd.events.exchange import Exchange

    return Exchange()


# --- metadata -----------------------------------------------------------------------------

def _positive(v: int) -> str | None:
    return None if v > 0 else "must be positive"


@dataclass
class MetadataConfig:
    map_size: int = setting(1 << 32, check=_positive,
                            doc="LMDB map size in bytes: the metadata's maximum size "
                                "(address space, not disk)")


def _init_metadata(ic: InitContext):
    from ctrd.metadata.db import DB

    return DB(str(ic.root / "meta.lmdb"), map_size=ic.config.map_size)


# --- namespaces ---------------------------------------------------------------------------

def _init_namespaces_service(ic: InitContext):
    from ctrd.metadata.namespaces import NamespaceStore
    from ctrd.services.namespaces import NamespacesService

    return NamespacesService(NamespaceStore(ic.get(METADATA)), ic.get(EVENT))


def _init_namespaces_grpc(ic: InitContext):
    return ic.get_by_id(SERVICE, "namespaces-service")


# --- introspection, version, health -------------------------------------------------------

def _init_introspection(ic: InitContext):
    from ctrd.services.introspection import IntrospectionService

    return IntrospectionService(ic.plugins, ic.root)


def _init_version(ic: InitContext):
    from ctrd.services.version import VersionService

    return VersionService()


def _init_health(ic: InitContext):
    from ctrd.services.health import HealthService

    return HealthService()


REGISTRATIONS = [
    Registration(EVENT, "exchange", _init_exchange),
    Registration(METADATA, "lmdb", _init_metadata, config=MetadataConfig),
    Registration(SERVICE, "namespaces-service", _init_namespaces_service,
                 requires=(METADATA, EVENT)),
    Registration(GRPC, "namespaces", _init_namespaces_grpc, requires=(SERVICE,)),
    Registration(GRPC, "introspection", _init_introspection),
    Registration(GRPC, "version", _init_version),
    Registration(GRPC, "healthcheck", _init_health),
]


@hookimpl
def ctrd_plugin_registrations():
    return REGISTRATIONS
