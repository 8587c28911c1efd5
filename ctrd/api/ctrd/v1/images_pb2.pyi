from ctrd.api.containerd.types import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PullRequest(_message.Message):
    __slots__ = ("ref", "platform", "snapshotter", "plain_http", "skip_unpack", "username", "secret")
    REF_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTTER_FIELD_NUMBER: _ClassVar[int]
    PLAIN_HTTP_FIELD_NUMBER: _ClassVar[int]
    SKIP_UNPACK_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    ref: str
    platform: str
    snapshotter: str
    plain_http: bool
    skip_unpack: bool
    username: str
    secret: str
    def __init__(self, ref: _Optional[str] = ..., platform: _Optional[str] = ..., snapshotter: _Optional[str] = ..., plain_http: _Optional[bool] = ..., skip_unpack: _Optional[bool] = ..., username: _Optional[str] = ..., secret: _Optional[str] = ...) -> None: ...

class BlobProgress(_message.Message):
    __slots__ = ("digest", "media_type", "total", "done", "status")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    media_type: str
    total: int
    done: int
    status: str
    def __init__(self, digest: _Optional[str] = ..., media_type: _Optional[str] = ..., total: _Optional[int] = ..., done: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class PullProgress(_message.Message):
    __slots__ = ("blobs", "image", "target", "chain_id", "seconds")
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    blobs: _containers.RepeatedCompositeFieldContainer[BlobProgress]
    image: str
    target: _descriptor_pb2.Descriptor
    chain_id: str
    seconds: float
    def __init__(self, blobs: _Optional[_Iterable[_Union[BlobProgress, _Mapping]]] = ..., image: _Optional[str] = ..., target: _Optional[_Union[_descriptor_pb2.Descriptor, _Mapping]] = ..., chain_id: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...
