"""Transfer objects: the ``Any`` a TransferRequest carries as source and destination, decoded.

containerd resolves an object by its type URL among the transfer types it registered
(``containerd.types.transfer.*``); a URL it has no type for at all is NotFound ("type with url
...: not found"); a known message that is no transfer object decodes but no operation takes
it (Unimplemented, from :mod:`ctrd.transfer.dispatch`). Bytes that do not parse as the named
type are InvalidArgument.
"""

from __future__ import annotations

from google.protobuf import any_pb2, message, symbol_database

from ctrd import errdefs, typeurl
from ctrd.api.containerd.types.transfer import imagestore_pb2, importexport_pb2, registry_pb2

TRANSFER_TYPES: dict[str, type[message.Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (registry_pb2.OCIRegistry, imagestore_pb2.ImageStore,
                importexport_pb2.ImageImportStream, importexport_pb2.ImageExportStream)
}

MAX_OBJECT = 1 << 20  # a transfer object is a few hundred bytes; refuse absurd ones unread


def decode(any_: any_pb2.Any, role: str) -> message.Message:
    """The object an ``Any`` names (``role``: "source" or "destination", for the error)."""
    if not any_.type_url:
        raise errdefs.InvalidArgument(f"transfer {role} is missing (no type URL)")
    if len(any_.value) > MAX_OBJECT:
        raise errdefs.InvalidArgument(f"transfer {role} {any_.type_url!r} is "
                                      f"{len(any_.value)} bytes, more than {MAX_OBJECT}")
    name = typeurl.name_of(any_)
    cls = TRANSFER_TYPES.get(name)
    if cls is None:
        try:
            cls = symbol_database.Default().GetSymbol(name)
        except KeyError:
            raise errdefs.NotFound(f"type with url {any_.type_url}") from None
    msg = cls()
    try:
        msg.ParseFromString(any_.value)
    except message.DecodeError as e:
        raise errdefs.InvalidArgument(f"transfer {role} is not a valid {name}: {e}") from None
    return msg


def kind(obj: message.Message) -> str:
    """The short name dispatch and errors use: ``OCIRegistry``, ``ImageStore``, ..."""
    return obj.DESCRIPTOR.name
