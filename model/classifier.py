"""The inference API: ``Classifier.load(path).predict(texts) -> [Prediction]``.

One instance per process; the stream worker calls ``predict`` off its event loop, the API from several threads at
once (``predict`` is thread-safe: the backends are, and tokenizing is serialised). Texts are
prepared exactly as in training, sorted by token length into batches (less padding), run through
the chosen backend, and returned in the caller's order with temperature-calibrated probabilities.

Inputs that cannot be classified never fail the batch. They come back flagged, with *uniform*
probabilities (the model has no opinion) and the labels ``neutral`` / ``General News | Opinion``
so downstream code always sees a valid record:

=============  ====================================================
``flag``       when
=============  ====================================================
``not_text``   the input is not a ``str`` (None, bytes, numbers, …)
``empty``      nothing is left after HTML unescaping, URL removal and whitespace collapsing
=============  ====================================================

Windows and surge detection skip flagged items. Very long inputs (e.g. 1 MB) are cut to a few
thousand characters before tokenising and truncated to ``max_length`` tokens; they are not flagged.

``predict(texts, domain="news")`` applies the model's stored news decision rule (per-class offsets
on the calibrated sentiment logits, ``news_bias.json``, see ``finsent.model.domain``) when it has
one; without one, and for ``domain=None`` (the default) or ``"twitter"``, the rule is plain argmax. A model
trained with domain tags (``meta.domain_prefixes``) also reads each text behind its domain's tag, news when
the caller names none (``finsent.model.domain.tag``).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from finsent.model import artifact
from finsent.model.backends import Backend, Forward, Spread, make_backend
from finsent.model.batching import balanced_batches, pad, sorted_batches
from finsent.model.domain import SERVED_DOMAIN, check_domain, load_news_bias, tag
from finsent.model.placement import sessions_for
from finsent.model.quality import softmax
from finsent.model.text import prepare
from finsent.records import Prediction, Sentiment

if TYPE_CHECKING:
    from finsent.settings import ModelChoice

log = logging.getLogger("finsent.model.classifier")

FALLBACK_TOPIC = "General News | Opinion"
FALLBACK_SENTIMENT: Sentiment = "neutral"
_CHAR_CAP_PER_TOKEN = 24  # characters kept per allowed token before tokenising huge inputs


@dataclass(frozen=True, slots=True)
class Encoded:
    """Texts after ``Classifier.encode``: fallbacks for the unclassifiable, token ids for the rest."""

    n: int
    fallbacks: dict[int, Prediction]  # input index -> flagged fallback prediction
    good_idx: list[int]  # input index of each row of ``ids``
    ids: list[list[int]]

    @classmethod
    def concat(cls, parts: Sequence[Encoded]) -> Encoded:
        """One encoding of the parts' texts one after the other: the stream worker puts batches that waited for
        the model into one call, which sorts them all by length together (less padding than each on its own)."""
        n = 0
        fallbacks: dict[int, Prediction] = {}
        good_idx: list[int] = []
        ids: list[list[int]] = []
        for part in parts:
            fallbacks.update({n + i: p for i, p in part.fallbacks.items()})
            good_idx.extend(n + i for i in part.good_idx)
            ids.extend(part.ids)
            n += part.n
        return cls(n, fallbacks, good_idx, ids)


@dataclass(frozen=True, slots=True)
class _Forwards:
    """A model call's logits, filled by its forwards; ``spread``: the other sessions' share still running."""

    topic: np.ndarray
    sent: np.ndarray
    spread: Spread | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """A model call started by ``Classifier.start``, to be ended by ``Classifier.finish``."""

    encoded: Encoded
    offsets: np.ndarray | None  # its domain's decision rule (``sentiment_offsets``)
    forwards: _Forwards | None  # None: no text to run (all flagged)


class Classifier:
    def __init__(
        self,
        directory: Path,
        backend: Backend,
        meta: artifact.ModelMeta,
        tokenizer,
        batch_size: int = 32,
        news_bias: np.ndarray | None = None,
    ):
        self.directory = directory
        self.backend = backend
        self.meta = meta
        self.tokenizer = tokenizer
        # A fast tokenizer may mutably borrow its Rust state (truncation settings) inside a call, which fails
        # ("Already borrowed") while another thread encodes: the API runs model calls side by side.
        self._tokenize_lock = threading.Lock()
        self._blank: dict[str, list[int]] = {}  # per domain: ``_blank_ids``
        self._special = frozenset(tokenizer.all_special_ids)  # once: HF rebuilds the list on every read
        self.batch_size = batch_size
        self.news_bias = news_bias  # offsets added to sentiment logits / T for domain="news"; None = no rule
        # the domain a tagged model reads text as when the caller names none (settings.model.reads_as)
        self.reads_as = SERVED_DOMAIN

    @property
    def version(self) -> str:
        return self.meta.full_name

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
        threads: int = 0,
        spin_wait: bool = True,
        spin_from: int = 0,
        gpu_batch_size: int | None = None,
        sessions: int = 1,
        trace: bool = True,
    ) -> Classifier:
        """Load a model directory; ``None`` = the newest shipped model in the repository's ``models/``.

        ``gpu_batch_size`` replaces ``batch_size`` when the backend runs on CUDA: a GPU wants large
        length-sorted batches, a CPU small ones (latency; padding costs real time there). ``sessions`` > 1: ONNX
        Runtime on the CPU spreads each call's forwards over that many one-thread sessions (settings.ModelChoice)."""
        directory = Path(path) if path is not None else artifact.default_model_dir()
        model, tokenizer, meta = artifact.load(directory)
        chosen = make_backend(backend, model, directory, device, threads, spin_wait, spin_from, sessions, trace)
        news_bias = load_news_bias(directory, meta.full_name, list(meta.sentiment_labels))
        if gpu_batch_size and chosen.name == "torch-cuda":
            batch_size = gpu_batch_size
        log.info(
            "classifier loaded",
            extra={
                "model": meta.full_name,
                "backend": chosen.name,
                "recipe": chosen.recipe,  # the graph it runs, and whether the export gate accepted it
                "accepted": chosen.accepted,
                "path": str(directory),
                "news_bias": news_bias is not None,
                "batch_size": batch_size,
                "sessions": getattr(chosen, "spread", 1),
                "traced": getattr(chosen, "traced", None) is not None,
            },
        )
        return cls(directory, chosen, meta, tokenizer, batch_size, news_bias)

    @classmethod
    def from_settings(cls, path: str | Path | None, choice: ModelChoice) -> Classifier:
        """The classifier as ``settings.model`` chooses it: backend, device, forward sizes, threads, spinning.

        One place, so that the worker, the API and the backtest serve a model the same way: the API used to
        leave out the thread and spinning settings (its ONNX Runtime threads spun, taking the CPU its event
        loop needs) and the backtest the GPU's forward size."""
        loaded = cls.load(
            path,
            backend=choice.backend,
            device=choice.device,
            batch_size=choice.batch_size,
            threads=choice.threads,
            spin_wait=choice.spin_wait,
            spin_from=choice.spin_from_texts,
            gpu_batch_size=choice.gpu_batch_size,
            sessions=sessions_for(choice),
            trace=choice.trace,
        )
        loaded.reads_as = choice.reads_as
        return loaded

    def ready_for_calls(self, calls: int) -> None:
        """Prepare for ``calls`` model calls at once (side by side, each from its own thread): ONNX Runtime gets
        a session per call up front (``OnnxBackend.reserve``), so that no call waits for one to load."""
        reserve = getattr(self.backend, "reserve", None)
        if reserve is not None and calls > 1:
            reserve(calls)

    def sentiment_offsets(self, domain: str | None = None) -> np.ndarray | None:
        """The offsets the decision rule for ``domain`` adds to the calibrated sentiment logits (None: none)."""
        check_domain(domain)
        return self.news_bias if domain == "news" else None

    def predict(self, texts: Sequence[object], domain: str | None = None) -> list[Prediction]:
        """``domain="news"``: use the stored news decision rule if the model has one (else the default)."""
        return self.predict_encoded(self.encode(texts, domain), domain)

    def encode(self, texts: Sequence[object], domain: str | None = None) -> Encoded:
        """The CPU-side half of ``predict``: clean, flag and tokenize. The stream worker runs it in its own
        thread, so batch N+1 is tokenized while batch N is in the model."""
        fallbacks: dict[int, Prediction] = {}
        good_idx: list[int] = []
        good_texts: list[str] = []
        cap = self.meta.max_length * _CHAR_CAP_PER_TOKEN
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                fallbacks[i] = self._fallback("not_text")
                continue
            prepared = prepare(text[: cap * 4])[:cap]
            if not prepared:
                fallbacks[i] = self._fallback("empty")
                continue
            good_idx.append(i)
            good_texts.append(prepared)
        ids = self._token_ids(good_texts, domain) if good_texts else []
        # A text can be non-empty and still tokenize to nothing: zero-width spaces, a soft hyphen, a BOM, control
        # characters are dropped by the tokenizer's normaliser, leaving [CLS] [SEP] (and the domain word of a model
        # that reads one), which the model answered with a confident, unflagged neutral. Flagged as empty instead.
        blank = self._blank_ids(domain) if ids else None
        kept = [k for k, row in enumerate(ids) if row != blank and not set(row) <= self._special]
        if len(kept) < len(ids):
            for k in sorted(set(range(len(ids))) - set(kept)):
                fallbacks[good_idx[k]] = self._fallback("empty")
            good_idx, ids = [good_idx[k] for k in kept], [ids[k] for k in kept]
        return Encoded(len(texts), fallbacks, good_idx, ids)

    def _blank_ids(self, domain: str | None) -> list[int]:
        """The token ids of a text without content as this model reads it: [CLS] [SEP], or with its domain word."""
        key = domain or self.reads_as
        if key not in self._blank:
            self._blank[key] = self._token_ids([""], domain)[0]
        return self._blank[key]

    def predict_encoded(self, encoded: Encoded, domain: str | None = None) -> list[Prediction]:
        """The model-side half of ``predict``: predictions in the caller's order."""
        return self.finish(self.start(encoded, domain))

    def start(self, encoded: Encoded, domain: str | None = None) -> Call:
        """Start the model call for ``encoded``: on return this thread's forwards are done, and a spread call's
        other sessions may still be running theirs; ``finish`` (from any thread) waits for them. Why in two: the
        API's batcher starts its next call the moment its own forwards of this one are done, while another
        session's still run (small calls cut into few forwards rarely end together: its core sat idle till then)
        and leaves the finishing to a thread of its own. Calls started one after the other queue their forwards
        behind each other's on every session."""
        offsets = self.sentiment_offsets(domain)  # an unknown domain fails before any forward
        return Call(encoded, offsets, self._start(encoded.ids) if encoded.ids else None)

    def finish(self, call: Call) -> list[Prediction]:
        """Wait for ``call``'s forwards and return its predictions in the caller's order."""
        results: list[Prediction | None] = [call.encoded.fallbacks.get(i) for i in range(call.encoded.n)]
        if call.forwards is not None:
            topic_logits, sent_logits = self._wait(call.forwards)
            topic_p = softmax(topic_logits, self.meta.temperature_topic)
            if call.offsets is None:
                sent_p = softmax(sent_logits, self.meta.temperature_sentiment)
            else:
                sent_p = softmax(sent_logits / self.meta.temperature_sentiment + call.offsets)
            for row, i in enumerate(call.encoded.good_idx):
                results[i] = self._prediction(topic_p[row], sent_p[row])
        return results  # type: ignore[return-value]

    def logits(self, prepared: Sequence[str], domain: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Uncalibrated logits for already-prepared, non-empty texts, in input order."""
        return self._run(self._token_ids(prepared, domain))

    def _token_ids(self, prepared: Sequence[str], domain: str | None = None) -> list[list[int]]:
        prefixes = self.meta.domain_prefixes
        texts = [tag(prefixes, domain or self.reads_as, t) for t in prepared] if prefixes else list(prepared)
        with self._tokenize_lock:
            return self.tokenizer(texts, truncation=True, max_length=self.meta.max_length)["input_ids"]

    def _run(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Length-sorted batches through the backend; logits back in input order."""
        return self._wait(self._start(ids))

    def _start(self, ids: list[list[int]]) -> _Forwards:
        """Run ``ids``' forwards: all of them on this thread, or spread over the backend's sessions, this thread's
        share done on return, the other sessions' maybe still running (``_wait``)."""
        pad_id = self.tokenizer.pad_token_id or 0
        topic = np.zeros((len(ids), len(self.meta.topic_labels)), dtype=np.float32)
        sent = np.zeros((len(ids), len(self.meta.sentiment_labels)), dtype=np.float32)
        lengths = [len(x) for x in ids]
        spread = getattr(self.backend, "spread", 1)
        if spread > 1 and len(ids) > 1:
            # A small call: at most one forward per session, cut so that they finish together (balanced_batches).
            # A larger one: forwards of batch_size that the sessions take from one queue, longest first, so they
            # finish together (a fixed share each left one core idle at the end of every call while the other
            # finished its longer share). Either way each session's first forward is its own, so a session that
            # starts late (still running the previous call's share) still gets one.
            batches = (
                balanced_batches(lengths, spread, self.batch_size) or sorted_batches(lengths, self.batch_size)[::-1]
            )
            shares = min(spread, len(batches))
            queue = iter(batches[shares:])  # a list iterator: next() is atomic under the GIL
            failed = threading.Event()  # one forward failed: the others stop taking work (the call fails anyway)

            def run(first: list[int], forward: Forward) -> None:
                for batch in itertools.chain((first,), queue):
                    if failed.is_set():
                        return
                    try:
                        input_ids, mask = pad([ids[j] for j in batch], pad_id)
                        topic[batch], sent[batch] = forward(input_ids, mask)  # rows no other session writes
                    except BaseException:
                        failed.set()
                        raise

            started = self.backend.start_spread([partial(run, b) for b in batches[:shares]])  # type: ignore[attr-defined]
            return _Forwards(topic, sent, started)
        for_call = getattr(self.backend, "for_call", None)  # ONNX: a spinning session for large calls
        forward = for_call(len(ids)) if for_call is not None else self.backend
        for batch in sorted_batches(lengths, self.batch_size):
            input_ids, mask = pad([ids[j] for j in batch], pad_id)
            topic[batch], sent[batch] = forward(input_ids, mask)
        return _Forwards(topic, sent)

    @staticmethod
    def _wait(forwards: _Forwards) -> tuple[np.ndarray, np.ndarray]:
        if forwards.spread is not None:
            forwards.spread.wait()
        return forwards.topic, forwards.sent

    def _prediction(self, topic_p: np.ndarray, sent_p: np.ndarray) -> Prediction:
        topics, sents = self.meta.topic_labels, self.meta.sentiment_labels
        return Prediction(
            topic=topics[int(topic_p.argmax())],
            topic_probs={label: float(p) for label, p in zip(topics, topic_p)},
            # a model's sentiment labels are SENTIMENT_LABELS (ModelMeta's default), the names ``Sentiment`` allows
            sentiment=cast(Sentiment, sents[int(sent_p.argmax())]),
            sentiment_probs={label: float(p) for label, p in zip(sents, sent_p)},
            model=self.version,
        )

    def _fallback(self, flag: str) -> Prediction:
        topics, sents = self.meta.topic_labels, self.meta.sentiment_labels
        return Prediction(
            topic=FALLBACK_TOPIC,
            topic_probs={label: 1.0 / len(topics) for label in topics},
            sentiment=FALLBACK_SENTIMENT,
            sentiment_probs={label: 1.0 / len(sents) for label in sents},
            model=self.version,
            flag=flag,
        )
