"""``finsent.model.batching.balanced_batches``: how a small spread call is cut into one forward per session."""

from __future__ import annotations

import itertools
import random

import pytest

from finsent.model.batching import balanced_batches


def slowest(batches: list[list[int]], lengths: list[int]) -> int:
    """The cost model the cut minimises: a forward costs its texts x its padded width."""
    return max(len(b) * max(lengths[i] for i in b) for b in batches)


def equal_counts(lengths: list[int], parts: int) -> list[list[int]]:
    """The cut it replaced: longest first, the same number of texts per forward."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    size = -(-len(order) // parts)
    return [order[i : i + size] for i in range(0, len(order), size)]


def best_contiguous(lengths: list[int], parts: int, max_size: int) -> int:
    """Brute force over every way to cut the longest-first order into at most ``parts`` runs."""
    order = sorted(lengths, reverse=True)
    n, best = len(order), None
    for k in range(1, parts + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = (0, *cuts, n)
            runs = [order[a:b] for a, b in itertools.pairwise(bounds)]
            if all(len(r) <= max_size for r in runs):
                cost = max(len(r) * r[0] for r in runs)
                best = cost if best is None else min(best, cost)
    return best


def test_a_skewed_call_gives_the_longest_texts_fewer_companions():
    lengths = [40, 30, 25, 20, 18, 15, 12, 10]
    batches = balanced_batches(lengths, 2, 8)
    assert batches == [[0, 1, 2], [3, 4, 5, 6, 7]]
    assert slowest(batches, lengths) == 120 < slowest(equal_counts(lengths, 2), lengths) == 160


@pytest.mark.parametrize("seed", range(40))
def test_every_text_once_within_the_limits_and_never_slower_than_equal_counts(seed):
    rng = random.Random(seed)
    parts, max_size = rng.choice([(2, 8), (3, 4), (4, 2)])
    lengths = [rng.randint(3, 90) for _ in range(rng.randint(1, parts * max_size))]
    batches = balanced_batches(lengths, parts, max_size)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert 1 <= len(batches) <= parts and all(1 <= len(b) <= max_size for b in batches)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)  # consecutive runs of the longest-first order
    assert slowest(batches, lengths) == best_contiguous(lengths, parts, max_size)
    if all(len(b) <= max_size for b in equal_counts(lengths, parts)):
        assert slowest(batches, lengths) <= slowest(equal_counts(lengths, parts), lengths)


def test_a_call_too_large_for_one_forward_per_session_is_left_to_the_queue():
    assert balanced_batches([10] * 17, 2, 8) == []
    assert balanced_batches([], 2, 8) == []
    assert balanced_batches([5], 2, 8) == [[0]]
