"""The classifier: training, evaluation, export and the inference API.

``Classifier`` is imported lazily so that ``import finsent.labels`` stays cheap (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finsent.model.classifier import Classifier, Prediction

__all__ = ["Classifier", "Prediction"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from finsent.model import classifier

        return getattr(classifier, name)
    raise AttributeError(name)
