"""A small CRI client for tests: runtime.v1 RuntimeService and ImageService over a unix socket,
with the generated stubs (``ctrd.api.cri.runtime.v1``), as a kubelet or crictl talks to a
runtime.

    with CRIClient(daemon.address) as cri:
        cri.runtime.Version(pb.VersionRequest())           # any RPC, through the raw stubs
        ref = cri.pull("127.0.0.1:5000/test/busybox:latest", username="u", password="p")
        cri.list_images(); cri.image_status(ref, verbose=True); cri.remove_image(ref)

Every call has a deadline (``timeout``, default 120 s) so a hung daemon fails the test instead
of hanging it. Errors are ``grpc.RpcError``; :func:`rpc_error` calls and returns one.
"""

from __future__ import annotations

from typing import Callable

import grpc

from ctrd.api.cri.runtime.v1 import api_pb2 as pb
from ctrd.api.cri.runtime.v1 import api_pb2_grpc as pb_grpc

__all__ = ["CRIClient", "Deadlined", "pb", "rpc_error"]


class _Deadlined:
    """A stub whose every method gets ``timeout=`` unless the caller passes one."""

    def __init__(self, stub, timeout: float) -> None:
        self._stub, self._timeout = stub, timeout

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)

        def call(request, **kw):
            kw.setdefault("timeout", self._timeout)
            return method(request, **kw)

        return call


Deadlined = _Deadlined  # public name for tests that build their own stubs


class CRIClient:
    """A channel to ``address`` (a socket path) with ``runtime`` and ``images`` stubs."""

    def __init__(self, address: str, timeout: float = 120.0) -> None:
        target = address if address.startswith("unix:") else f"unix://{address}"
        self.channel = grpc.insecure_channel(target)
        self.timeout = timeout
        self.runtime = _Deadlined(pb_grpc.RuntimeServiceStub(self.channel), timeout)
        self.images = _Deadlined(pb_grpc.ImageServiceStub(self.channel), timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "CRIClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 20.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # --- images ---------------------------------------------------------------------------

    def pull(self, image: str, auth_config: pb.AuthConfig | None = None,
             **auth_fields: str) -> str:
        """PullImage; ``auth_fields`` (username=, password=, auth=, server_address=,
        identity_token=, registry_token=) build the AuthConfig. Returns image_ref."""
        if auth_config is None and auth_fields:
            auth_config = pb.AuthConfig(**auth_fields)
        req = pb.PullImageRequest(image=pb.ImageSpec(image=image))
        if auth_config is not None:
            req.auth.CopyFrom(auth_config)
        return self.images.PullImage(req).image_ref

    def list_images(self, image: str = "") -> list[pb.Image]:
        req = pb.ListImagesRequest()
        if image:
            req.filter.image.image = image
        return list(self.images.ListImages(req).images)

    def image_status(self, image: str, verbose: bool = False) -> pb.ImageStatusResponse:
        return self.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image),
                                                             verbose=verbose))

    def remove_image(self, image: str) -> None:
        self.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image)))

    def image_fs_info(self) -> pb.ImageFsInfoResponse:
        return self.images.ImageFsInfo(pb.ImageFsInfoRequest())

    # --- runtime --------------------------------------------------------------------------

    def version(self) -> pb.VersionResponse:
        return self.runtime.Version(pb.VersionRequest(version="v1"))

    def status(self, verbose: bool = False) -> pb.StatusResponse:
        return self.runtime.Status(pb.StatusRequest(verbose=verbose))


def rpc_error(fn: Callable, *args, **kw) -> grpc.RpcError:
    """Call ``fn`` and return the ``grpc.RpcError`` it raises (AssertionError if none):
    ``err = rpc_error(cri.pull, "x"); err.code(), err.details()``."""
    try:
        fn(*args, **kw)
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)} did not fail")
