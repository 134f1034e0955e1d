"""The HTTP kit both services share: one bearer check, one body limit, one reading of Content-Length."""

from __future__ import annotations

import pytest

from finsent.http import MalformedLength, bearer_ok, declared_length


def test_bearer_ok_accepts_only_the_exact_token_after_bearer():
    assert bearer_ok("Bearer s3cret", b"s3cret")
    for header in (None, "", "s3cret", "bearer s3cret", "Bearer s3cre", "Bearer s3cret ", "Basic s3cret"):
        assert not bearer_ok(header, b"s3cret"), header


def test_a_content_length_is_a_number_or_malformed():
    assert declared_length([(b"host", b"x"), (b"content-length", b"12")]) == 12
    assert declared_length([(b"Content-Length", b"0")]) == 0
    assert declared_length([(b"host", b"x")]) is None
    for bad in (b"12abc", b"-1", b"", b"1e3", b" 12"):
        with pytest.raises(MalformedLength):
            declared_length([(b"content-length", bad)])
