"""A dead letter the broker refuses as too large: cut further and sent again, and one that cannot be cut any more is
counted (``finsent_worker_dead_letters_lost_total``) as well as logged: the record moves on without a letter, which
must be visible, not only in a log line. The Scorer's send path without a broker: no real broker can be made to
refuse a letter of a few hundred bytes here (Tansu has no lower message limit to set), so the refusal is the
exception object aiokafka raises."""

from aiokafka.errors import MessageSizeTooLargeError
from conftest import make_settings

from finsent.records import DeadLetter
from finsent.stream.metrics import WorkerMetrics
from finsent.stream.worker import Scorer


def test_a_letter_refused_as_too_large_is_cut_and_one_with_nothing_left_to_cut_is_counted(tmp_path):
    metrics = WorkerMetrics()
    scorer = Scorer(make_settings(tmp_path), classifier=None, metrics=metrics)
    try:
        letter = DeadLetter.of(topic="raw", partition=0, offset=3, key=b"k", value=b"v" * 100_000, error="e")
        output = ("finsent.dlq", b"k", letter.to_json())
        cut = scorer._smaller_letter(output, MessageSizeTooLargeError())
        assert cut is not None and len(cut[2]) < len(output[2]) and cut[:2] == output[:2]
        while (next_cut := scorer._smaller_letter(cut, MessageSizeTooLargeError())) is not None:
            cut = next_cut
        assert metrics.letters_lost._value.get() == 1  # the last refusal: nothing left to cut, counted once
    finally:
        scorer.executor.shutdown()
        scorer.tokenizer_pool.shutdown()
