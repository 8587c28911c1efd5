"""The matching half of the filter language: parsed filters (:class:`Selector` and the
conjunctions and disjunctions of them) and the adaptors that answer a fieldpath for an object
(:func:`adaptor_from`). Matching is plain code over strings; a ``~=`` selector runs a compiled
RE2 program (:mod:`ctrd.filters.regex`: linear in the value's length)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias, Union

if TYPE_CHECKING:
    from ctrd.filters.regex import Regex

Adaptor: TypeAlias = Callable[[tuple[str, ...]], Union[str, None]]
"""Maps a fieldpath such as ``("labels", "foo")`` to the field's value, or None if absent."""

FieldValue: TypeAlias = Union[str, None, Mapping[str, str], Adaptor]


class Filter:
    """A parsed filter. ``match(adaptor)`` says whether the adapted object is selected."""

    __slots__ = ()

    def match(self, adaptor: Adaptor) -> bool:
        raise NotImplementedError


class _Always(Filter):
    __slots__ = ()

    def match(self, adaptor: Adaptor) -> bool:
        return True

    def __repr__(self) -> str:
        return "ALWAYS"


ALWAYS: Filter = _Always()
"""Matches everything: what an empty filter string or an empty filter list means."""


class Operator(enum.Enum):
    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


@dataclass(slots=True)
class Selector(Filter):
    """One ``fieldpath [operator value]`` test. Treat as immutable."""

    fieldpath: tuple[str, ...]
    operator: Operator = Operator.PRESENT
    value: str = ""
    pattern: "Regex | None" = field(default=None, compare=False, repr=False)

    def match(self, adaptor: Adaptor) -> bool:
        got = adaptor(self.fieldpath)
        op = self.operator
        if op is Operator.PRESENT:
            return got is not None
        if op is Operator.EQUAL:
            return got is not None and got == self.value
        if got is None:
            got = ""
        if op is Operator.NOT_EQUAL:
            return got != self.value
        assert self.pattern is not None
        return self.pattern.search(got)


@dataclass(frozen=True, slots=True)
class _All(Filter):
    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return all(f.match(adaptor) for f in self.filters)


@dataclass(frozen=True, slots=True)
class _Any(Filter):
    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return any(f.match(adaptor) for f in self.filters)


def adaptor_from(fields: Mapping[str, FieldValue], labels: Mapping[str, str] | None = None,
                 *, empty_is_absent: bool = True) -> Adaptor:
    """An adaptor over plain values, shaped like containerd's metadata adaptors.

    ``fields`` maps a fieldpath's first component to what answers the rest of the path:

    - a ``str``: the value (remaining components are ignored, as containerd's adaptors do);
      ``""`` counts as absent unless ``empty_is_absent`` is false (snapshots and content
      report empty names/parents as present);
    - a mapping: the remaining components joined with ``.`` are its key, as for labels
      (``labels.a.b`` looks up key ``"a.b"``); an empty mapping has no fields;
    - a callable: another adaptor, given the remaining components (nested messages);
    - None: absent.

    ``labels`` is shorthand for ``fields["labels"]``. For example::

        adaptor_from({"name": img.name,
                      "target": {"digest": d, "mediatype": mt},
                      "annotations": img.target.annotations}, img.labels)
    """

    def adaptor(path: tuple[str, ...]) -> str | None:
        if not path:
            return None
        head = path[0]
        value = labels if head == "labels" and labels is not None else fields.get(head)
        if isinstance(value, str):
            return None if empty_is_absent and value == "" else value
        if value is None:
            return None
        if isinstance(value, Mapping):
            if not value:
                return None
            return value.get(".".join(path[1:]))
        return value(path[1:])

    return adaptor
