"""Label-preserving rewrites of news sentences: more in-domain training text from the few news examples the
default model may learn from (FinEntity's dev half, ~400 passages, under ODC-BY).

Why these two rewrites: a headline's sentiment does not depend on *which* company it names nor on the exact
size of a move ("shares fell 6 %" and "shares fell 2.5 %" are both negative), but a small set teaches a model
to remember names and figures. Swapping the annotated entities for other companies of the set and changing
each figure within its own format keeps the label and varies what should not matter.

Casing is not varied: the base model's vocabulary is uncased (its tokenizer lower-cases every text), so a
re-cased copy would be the same input. Signs, words and years are never changed (a year is a date, not a
size; a sign or a word like "up" carries the direction).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import replace

from finsent.model.data import Example

_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)(?![\w])")
_YEAR = re.compile(r"(?:19|20)\d\d")
_PARTS = re.compile(r"(\d+)(?:([.,])(\d+))?")


def change_numbers(text: str, rng: random.Random) -> str:
    """Every figure replaced by another of the same shape (as many digits, the same decimals); years kept."""

    def swap(match: re.Match[str]) -> str:
        figure = match.group(1)
        if _YEAR.fullmatch(figure):
            return figure
        whole, sep, frac = _PARTS.fullmatch(figure).groups(default="")  # type: ignore[union-attr]
        low = 10 ** (len(whole) - 1) if len(whole) > 1 else 1
        new_whole = str(rng.randint(low, 10 ** len(whole) - 1))
        new_frac = "".join(str(rng.randint(0, 9)) for _ in frac)
        return new_whole + sep + new_frac

    return _NUMBER.sub(swap, text)


def swap_entities(text: str, spans: Sequence[tuple[int, int]], names: Sequence[str], rng: random.Random) -> str:
    """``text`` with each ``(start, end)`` span replaced by a name drawn from ``names`` (other than the span's own
    text where the pool allows). Overlapping or out-of-range spans are skipped, not guessed at."""
    out, last = [], 0
    for start, end in sorted(spans):
        if start < last or end > len(text) or start >= end:
            continue
        own = text[start:end]
        choices = [n for n in names if n != own] or [own]
        out += [text[last:start], rng.choice(choices)]
        last = end
    out.append(text[last:])
    return "".join(out)


def augmented(
    examples: Sequence[Example],
    spans: dict[str, list[tuple[int, int]]],
    copies: int,
    seed: int,
) -> list[Example]:
    """``copies`` rewrites of each example (its labels kept): entities swapped where ``spans`` knows the text's
    entity spans, figures changed everywhere. A rewrite identical to its original (no entity, no figure) is
    dropped rather than counted twice."""
    rng = random.Random(seed)
    names = sorted({text[s:e] for text, found in spans.items() for s, e in found if 0 <= s < e <= len(text)})
    out: list[Example] = []
    for ex in examples:
        seen = {ex.text}
        for _ in range(copies):
            text = swap_entities(ex.text, spans.get(ex.text, []), names, rng)
            text = change_numbers(text, rng)
            if text not in seen:
                seen.add(text)
                out.append(replace(ex, text=text))
    return out


__all__ = ["augmented", "change_numbers", "swap_entities"]
