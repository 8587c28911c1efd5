"""The server UUID (Introspection.Server), made without the uuid module: same text as
``uuid.UUID``/``uuid.uuid4`` would give, kept across restarts, a damaged file replaced."""

from __future__ import annotations

import uuid

import pytest

from ctrd.services.introspection import _canonical_uuid, _uuid4, server_uuid


def test_random_uuid_is_version_4():
    for _ in range(200):
        u = _uuid4()
        parsed = uuid.UUID(u)
        assert str(parsed) == u
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)


@pytest.mark.parametrize("text", [
    "12345678-1234-5678-1234-567812345678", "{12345678-1234-5678-1234-567812345678}",
    "12345678123456781234567812345678", "urn:uuid:12345678-1234-5678-1234-567812345678",
    "ABCDEF00-1234-5678-1234-567812345678", "12345678-1234-5678-1234-56781234567G", "",
    "xyz", " 12345678123456781234567812345678", "12345678-1234-5678-1234-5678123456789",
])
def test_parse_as_uuid_module(text):
    try:
        expected = str(uuid.UUID(text))
    except ValueError:
        with pytest.raises(ValueError):
            _canonical_uuid(text)
    else:
        assert _canonical_uuid(text) == expected


def test_kept_and_repaired(tmp_path):
    first = server_uuid(tmp_path)
    assert server_uuid(tmp_path) == first
    (tmp_path / "uuid").write_text("garbage\n")
    second = server_uuid(tmp_path)
    assert second != first and uuid.UUID(second).version == 4
    assert (tmp_path / "uuid").read_text() == second
