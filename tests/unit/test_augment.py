"""Label-preserving rewrites of news sentences (``finsent.model.augment``): pure functions, fixed seeds."""

import random
import re

from finsent.model.augment import augmented, change_numbers, swap_entities
from finsent.model.data import Example

FIGURES = re.compile(r"\d+(?:[.,]\d+)?")


def test_figures_change_within_their_format_and_years_signs_and_words_stay():
    text = "Acme fell 6.25% to $1,204 in 2023, down -3 points from 12 (Q2)"
    rng = random.Random(1)
    rewrites = {change_numbers(text, rng) for _ in range(20)}
    assert len(rewrites) > 10  # the figures do change
    for new in rewrites:
        assert FIGURES.sub("#", new).replace("#", "") == FIGURES.sub("#", text).replace("#", "")  # words, signs kept
        old_figures, new_figures = FIGURES.findall(text), FIGURES.findall(new)
        assert [re.sub(r"\d", "9", f) for f in new_figures] == [re.sub(r"\d", "9", f) for f in old_figures]
        assert "2023" in new and not new_figures[0].startswith("0")
        assert "Q2" in new  # a digit inside a word is part of the word


def test_entity_spans_are_replaced_by_other_names_and_bad_spans_are_skipped():
    text = "Acme rose while Globex fell."
    rng = random.Random(3)
    out = swap_entities(text, [(16, 22), (0, 4)], ["Acme", "Globex", "Initech"], rng)
    assert out.endswith(" fell.") and " rose while " in out
    first, second = out.split(" rose while ")[0], out.split(" rose while ")[1][: -len(" fell.")]
    assert first != "Acme" and second != "Globex"
    assert swap_entities(text, [(0, 4), (2, 6), (20, 99)], ["Initech"], rng) == "Initech rose while Globex fell."


def test_rewrites_keep_both_labels_are_reproducible_and_never_repeat_the_original():
    examples = [
        Example("Acme shares rose 3% after profit beat expectations.", topic=4, sentiment=2),
        Example("Globex cut its forecast.", sentiment=0),
        Example("Markets were quiet.", sentiment=1),  # nothing to rewrite: no copy at all
    ]
    spans = {examples[0].text: [(0, 4)], examples[1].text: [(0, 6)]}
    out = augmented(examples, spans, copies=3, seed=7)
    assert out == augmented(examples, spans, copies=3, seed=7)
    assert out != augmented(examples, spans, copies=3, seed=8)
    by_label = {(e.topic, e.sentiment) for e in out}
    assert by_label == {(4, 2), (examples[1].topic, 0)}
    assert all(e.text not in {x.text for x in examples} for e in out)
    assert len({e.text for e in out}) == len(out) <= 6
    assert not any("Markets were quiet" in e.text for e in out)
