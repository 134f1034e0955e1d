"""What a model's training data allows: the two licences a model can carry, in one place.

Why a module of its own: the corpus decides a run's licence from the sets it reads, and the registry on disk
(``artifact.resolve``) decides from the recorded licence which version may be served as the default; both read
these names, and neither should import the other for them.
"""

from __future__ import annotations

COMMERCIAL = "commercial (MIT Twitter sets, FinEntity ODC-BY)"
RESEARCH = "research only: trained on non-commercial / unknown-licence sets; do not ship or sell"


def commercial(licence: str) -> bool:
    """A model with this licence may be shipped and served as the default: commercial, or recorded before licences
    were (empty: the shipped v1, trained on the MIT Twitter sets)."""
    return licence in ("", COMMERCIAL)
