"""Validation of names that become keys and paths (containerd's ``identifiers`` and ``labels``
packages): namespaces, container ids, snapshot keys... and label sizes."""

from __future__ import annotations

import re

from ctrd.errdefs import InvalidArgument, quote

MAX_LENGTH = 76
MAX_LABEL_SIZE = 4096
_IDENTIFIER = re.compile(r"[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*")


def validate(s: str) -> str:
    """Return ``s`` if it is a valid identifier, else raise InvalidArgument."""
    if not s:
        raise InvalidArgument("identifier must not be empty")
    if len(s) > MAX_LENGTH:
        # containerd quotes the whole name; a huge one is cut so the error still fits in a
        # gRPC trailer.
        shown = s if len(s) <= 1024 else s[:1024] + "..."
        raise InvalidArgument(f"identifier {quote(shown)} greater than maximum length "
                              f"({MAX_LENGTH} characters)")
    if not _IDENTIFIER.fullmatch(s):
        raise InvalidArgument(f"identifier {quote(s)} must match "
                              r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$")
    return s


def validate_label(key: str, value: str) -> None:
    """A label's key and value are text (encodable as UTF-8: a lone surrogate from a Python
    caller is not) and together fit in 4096 bytes."""
    try:
        size = len(key.encode()) + len(value.encode())
    except UnicodeEncodeError:
        raise InvalidArgument(f"label is not valid UTF-8, key: {key[:10]!r}") from None
    if size > MAX_LABEL_SIZE:
        # containerd 2.x's wording (1.6 had no length in it).
        raise InvalidArgument(f"label key and value length ({size} bytes) greater than "
                              f"maximum size ({MAX_LABEL_SIZE} bytes), key: {key[:64]}")


def validate_labels(labels: dict[str, str], what: str = "labels") -> None:
    for k, v in labels.items():
        try:
            validate_label(k, v)
        except InvalidArgument as e:
            raise InvalidArgument(f"{what}: {e.detail}") from None


def updated_labels(current: dict[str, str], labels: dict[str, str],
                   fieldpaths: list[str] | None, what: str, field: str) -> dict[str, str]:
    """containerd's label update by field mask, for any object with labels.

    No paths (or the path ``labels``) replaces all labels; ``labels.<key>`` sets one key
    from ``labels`` (an empty or missing value removes it); any other path is
    InvalidArgument ``cannot update "<path>" field on <what>``. The result has no empty
    values and is size-checked (``<field>: label key and value greater than ...``).
    """
    from ctrd.errdefs import quote

    result = dict(current)
    if not fieldpaths:
        result = dict(labels)
    for path in fieldpaths or ():
        if path.startswith("labels."):
            k = path[len("labels."):]
            result[k] = labels.get(k, "")
        elif path == "labels":
            result = dict(labels)
        else:
            raise InvalidArgument(f"cannot update {quote(path)} field on {what}")
    result = {k: v for k, v in result.items() if v}
    validate_labels(result, field)
    return result
