"""ctrd's one error vocabulary, and its mapping to gRPC/ttrpc status codes.

The core raises these; the wire edges (gRPC services, the ttrpc server) translate them with
:func:`to_status` and back with :func:`from_status`. Nothing else in the tree knows status
codes. Kinds and codes follow containerd's ``errdefs`` package, so the real ``ctr`` prints the
same thing for the same mistake against ctrd and against containerd: containerd sends
``err.Error()`` as the status message, where the message ends in ``": <kind>"`` (e.g.
``namespace "x": already exists``). :class:`CtrdError` formats its message the same way.
"""

from __future__ import annotations

# gRPC status codes (google.rpc.Code); ttrpc uses the same numbers.
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14


class CtrdError(Exception):
    """Base of every error ctrd reports to a client.

    ``str(err)`` is ``"<detail>: <kind>"`` (or just ``"<kind>"`` without detail), as
    containerd's wrapped errors read.
    """

    kind = "unknown"
    code = UNKNOWN

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{detail}: {self.kind}" if detail else self.kind)


class InvalidArgument(CtrdError):
    kind, code = "invalid argument", INVALID_ARGUMENT


class NotFound(CtrdError):
    kind, code = "not found", NOT_FOUND


class AlreadyExists(CtrdError):
    kind, code = "already exists", ALREADY_EXISTS


class FailedPrecondition(CtrdError):
    kind, code = "failed precondition", FAILED_PRECONDITION


class Unavailable(CtrdError):
    kind, code = "unavailable", UNAVAILABLE


class ResourceExhausted(CtrdError):
    """A bound was reached: too many in-flight streaming requests, a message over the size
    limit. containerd 1.6's errdefs has no such kind: the places that answer
    RESOURCE_EXHAUSTED (the CRI streaming request cache, ttrpc's frame limit) build the
    status themselves, with a message that does not end in a kind (subclasses that keep such
    text set ``args`` to it). Its ``FromGRPC`` reads code 8 as unknown; ctrd's clients keep
    the kind, named as containerd's later errdefs name it."""

    kind, code = "resource exhausted", RESOURCE_EXHAUSTED


class NotImplemented_(CtrdError):
    kind, code = "not implemented", UNIMPLEMENTED


class Canceled(CtrdError):
    kind, code = "context canceled", CANCELLED


class DeadlineExceeded(CtrdError):
    kind, code = "context deadline exceeded", DEADLINE_EXCEEDED


class Unknown(CtrdError):
    """An error containerd reports without an errdefs kind (a plain Go error): code UNKNOWN,
    the message as is, no ``": <kind>"`` suffix. Used where containerd 2.3.4's CRI answers
    UNKNOWN (an empty id, a container in the wrong state for StartContainer, ExecSync, Attach,
    a bad image reference...), so the kubelet and crictl see the code containerd gives."""

    kind, code = "unknown", UNKNOWN

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.args = (detail or self.kind,)


class SkipPlugin(CtrdError):
    """Raised by a plugin's init to say it does not apply here (not an error).

    The message contains "skip plugin", which is how ``ctr plugins ls`` tells a skipped plugin
    from a failed one.
    """

    kind, code = "skip plugin", UNKNOWN


_BY_CODE: dict[int, type[CtrdError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Unavailable,
                ResourceExhausted, NotImplemented_, Canceled, DeadlineExceeded)
}


def to_status(err: BaseException) -> tuple[int, str]:
    """The (code, message) a client sees for ``err``.

    A :class:`CtrdError` keeps its kind's code; anything else is a bug or an environment
    failure and becomes UNKNOWN with its text (as containerd passes unmapped errors through).
    """
    if isinstance(err, CtrdError):
        return err.code, str(err)
    if isinstance(err, TimeoutError):
        return DEADLINE_EXCEEDED, str(err) or DeadlineExceeded.kind
    return UNKNOWN, str(err) or type(err).__name__


def from_status(code: int, message: str) -> CtrdError:
    """The error a client raises for a status it received (containerd's ``FromGRPC``)."""
    cls = _BY_CODE.get(code, CtrdError)
    detail = message
    if detail == cls.kind:
        detail = ""
    elif detail.endswith(": " + cls.kind):
        detail = detail[: -len(cls.kind) - 2]
    return cls(detail)


def quote(s: str) -> str:
    """``s`` quoted as Go's ``%q`` does for ordinary text, so messages read as containerd's."""
    import json

    return json.dumps(s, ensure_ascii=False)
