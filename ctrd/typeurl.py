"""``google.protobuf.Any`` with containerd's bare type URLs.

containerd registers its messages under their full proto names (``containerd.events.TaskExit``,
``containerd.runc.v1.Options``); Python's ``Any.Pack`` would prefix ``type.googleapis.com/``,
which ctr cannot decode. Specs travel as JSON under
``types.containerd.io/opencontainers/runtime-spec/1/Spec``.
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import Message

OCI_SPEC = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def pack(msg: Message) -> any_pb2.Any:
    return any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString())


def name_of(any_: any_pb2.Any) -> str:
    """The message name of an Any, whichever URL form it uses."""
    return any_.type_url.rsplit("/", 1)[-1]


def unpack(any_: any_pb2.Any, cls: type[Message]) -> Message:
    if name_of(any_) != cls.DESCRIPTOR.full_name:
        from ctrd.errdefs import InvalidArgument
        raise InvalidArgument(f"expected {cls.DESCRIPTOR.full_name}, got {any_.type_url!r}")
    msg = cls()
    msg.ParseFromString(any_.value)
    return msg
