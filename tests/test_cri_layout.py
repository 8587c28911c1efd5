"""The CRI package's layout holds: the module map in ``ctrd/cri/__init__.py`` names exactly
the modules there are, and every runtime.v1 RPC is served by ctrd's own code (none falls
back to the generated servicer's UNIMPLEMENTED)."""

from __future__ import annotations

import inspect
import pkgutil
import re

import ctrd.cri
from ctrd.api.cri.runtime.v1 import api_pb2, api_pb2_grpc


def _modules(pkg) -> set[str]:
    return {m.name for m in pkgutil.iter_modules(pkg.__path__)}


def test_module_map_matches_the_files():
    doc = ctrd.cri.__doc__
    named = set(re.findall(r":mod:`(\w+)`", doc))
    assert named == _modules(ctrd.cri), (named ^ _modules(ctrd.cri))


def test_every_rpc_is_served():
    from ctrd.cri.image_service import ImageService
    from ctrd.cri.service import RuntimeService

    for svc, cls, base in (
            ("RuntimeService", RuntimeService, api_pb2_grpc.RuntimeServiceServicer),
            ("ImageService", ImageService, api_pb2_grpc.ImageServiceServicer)):
        methods = api_pb2.DESCRIPTOR.services_by_name[svc].methods_by_name
        for name in methods:
            impl = getattr(cls, name)
            assert impl is not getattr(base, name), f"{svc}.{name} is not implemented"
            mod = inspect.getmodule(impl).__name__
            assert mod.startswith("ctrd.cri."), (name, mod)
