"""The HTTP kit both services share: one bearer check, one body limit, one reading of Content-Length."""

from __future__ import annotations

import asyncio

import pytest

from finsent.http import BodyTooLarge, MalformedLength, bearer_ok, declared_length, read_limited


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


def test_a_body_is_cut_off_as_soon_as_it_passes_the_limit():
    pulled: list[int] = []

    async def chunks(n: int, size: int):
        for i in range(n):
            pulled.append(i)
            yield b"x" * size

    assert asyncio.run(read_limited(chunks(3, 10), 30)) == b"x" * 30
    pulled.clear()
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_limited(chunks(1000, 10), 30))
    assert len(pulled) == 4  # stopped at the chunk that passed the limit, not at the end of the upload
