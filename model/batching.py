"""Length-bucketed batches and padding.

Tweets vary from 5 to 90 tokens; sorting examples of similar length into the same batch cuts the
padded positions (and so the CPU time) roughly in half, while shuffling the *batches* keeps the
gradient noise of random order. Everything is a pure function of (lengths, seed, epoch) so a run is
reproducible and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, chunk_batches: int = 50
) -> list[list[int]]:
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    chunk = batch_size * chunk_batches
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Inference order: by length, so each batch pads to a similar size; callers restore order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask, built in numpy and handed to torch once.

    Why numpy: torch releases and re-takes the GIL at every op, and a row-by-row torch fill made three ops per
    text. Beside a busy Python thread (the stream worker's event loop) each re-take can wait out the switch
    interval: a forward's padding of 8 texts took 29 ms there against 63 us alone (numpy: 0.23 ms and 11 us;
    2-core CPU, session 24)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max(initial=0)) or 1
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(mask)
