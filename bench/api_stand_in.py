"""``finsent serve``'s app with an instant stand-in model, for ``bench_api.py``'s HTTP-stack figure.

    FINSENT_WEB__PORT=8123 python bench/api_stand_in.py

Why: with the real model, the server's CPU per ``/classify`` request is mostly the model's, and the HTTP stack's
share (uvicorn, the middleware, FastAPI's validation and serialisation, the batcher) cannot be read from it. The
same ``build_api`` served the same way (``finsent.web.api.run``) in front of a model that
answers at once leaves only that share to measure.
"""

from __future__ import annotations

from finsent.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.records import Prediction
from finsent.settings import load
from finsent.web.api import build_api, run

ANSWER = Prediction(
    topic=TOPIC_LABELS[0],
    topic_probs={label: 1 / len(TOPIC_LABELS) for label in TOPIC_LABELS},
    sentiment="neutral",
    sentiment_probs={label: 1 / len(SENTIMENT_LABELS) for label in SENTIMENT_LABELS},
    model="stand-in@bench",
)


class InstantModel:
    """Answers every text at once with the same prediction (a real one's shape: every label's probability)."""

    version = "stand-in@bench"

    def predict(self, texts: list[str]) -> list[Prediction]:
        return [ANSWER] * len(texts)


if __name__ == "__main__":
    settings = load()
    run(build_api(settings, InstantModel, follow_topics=False), settings)
