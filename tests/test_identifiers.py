"""ctrd.identifiers: label validation errors name the problem (size, not text)."""

from __future__ import annotations

import pytest

from ctrd import identifiers
from ctrd.errdefs import InvalidArgument


def test_label_size_limit_counts_utf8_bytes():
    identifiers.validate_label("k", "é" * 2047)  # 1 + 4094 bytes
    with pytest.raises(InvalidArgument, match="greater than maximum size"):
        identifiers.validate_label("k", "é" * 2048)


@pytest.mark.parametrize("key,value", [("k\ud800", "v"), ("k", "v\udfff")])
def test_a_label_that_is_not_text_is_invalid_argument(key, value):
    with pytest.raises(InvalidArgument, match="not valid UTF-8"):
        identifiers.validate_labels({key: value})
