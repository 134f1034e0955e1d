"""News-domain evaluation: loaders, metrics, the news score, the news decision rule, missing data.

Runs on tests/fixtures/news/ (a miniature ../shared/data with hand-written rows in each set's
format, MIT) and the tiny random-weight model of conftest: plumbing and arithmetic, not accuracy.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finsent.model.data import (
    IGNORE,
    NEG,
    NEU,
    NEWS_SETS,
    POS,
    DataError,
    MissingData,
    check_data_dir,
    finentity,
    finentity_split,
    phrasebank,
    sentfin_entities,
    sentfin_headlines,
    sentifm_topics,
    sentivent_headlines,
    sentivent_topics,
    sp500_posneg,
)
from finsent.model.quality import fit_offsets, present_class_scores, restricted_accuracy, sentiment_scores

FIXTURES = Path(__file__).parents[1] / "fixtures" / "news"


# ----------------------------------------------------------------------------- loaders


def test_event_types_become_a_topic_only_where_they_agree_on_one(tmp_path):
    """Topic on news from SENTiVENT and SentiFM event types (their PROVENANCE mappings): a sentence whose types map to
    one topic keeps it, one with types of two topics or none is left out, and a type the mapping lacks is an error."""
    from finsent.labels import TOPIC_INDEX

    rows = {e.text: e.topic for e in sentivent_topics(FIXTURES)}
    assert rows == {
        "Acme Up on Record Quarterly Sales , Upbeat View": TOPIC_INDEX["Earnings"],  # Revenue + FinancialReport
        "Acme Inc . ACME saw its shares rise 4 % on Tuesday .": TOPIC_INDEX["Stock Movement"],
        "The company also named a new chief financial officer .": TOPIC_INDEX["Personnel Change"],
        "Globex Misses Estimates as Costs Climb": TOPIC_INDEX["Earnings"],  # Profit/Loss + Expense
    }
    assert [(e.text[:8], e.topic, e.sentiment) for e in sentifm_topics(FIXTURES)] == [
        ("Initech ", TOPIC_INDEX["Earnings"], IGNORE),
        ("Brokers ", TOPIC_INDEX["Analyst Update"], IGNORE),  # TargetPrice + BuyRating
    ]
    bad = tmp_path / "sentifm-events"
    bad.mkdir()
    (bad / "sentifm_event_sentences.csv").write_text("split,sentence,event_types\nholdin,A new kind .,Bankruptcy\n")
    with pytest.raises(DataError, match="Bankruptcy"):
        sentifm_topics(tmp_path)


def test_event_topic_sets_train_on_their_untested_rows_only():
    """The research variant trains topic on SENTiVENT and SentiFM: never on a held-out row, and never on a SENTiVENT
    headline, which the news score reads whole for sentiment (a headline whose topic was learned has been read)."""
    from finsent.model import corpus
    from finsent.model.data import normalised, sentifm_topics_heldout, sentivent_topics_heldout

    trained = [e.text for e in corpus.TRAIN_SETS["sentivent-topics"].load(FIXTURES)]
    assert trained == [
        "Acme Inc . ACME saw its shares rise 4 % on Tuesday .",
        "The company also named a new chief financial officer .",
    ]  # "Globex Misses Estimates ..." is a SENTiVENT headline; "Acme Up on Record ..." is held out
    assert [e.text for e in sentivent_topics_heldout(FIXTURES)] == ["Acme Up on Record Quarterly Sales , Upbeat View"]
    headlines = {normalised(e.text) for e in sentivent_headlines(FIXTURES)}
    assert not headlines & {normalised(t) for t in trained}
    assert [e.text[:8] for e in corpus.TRAIN_SETS["sentifm-topics"].load(FIXTURES)] == ["Brokers "]
    assert [e.text[:8] for e in sentifm_topics_heldout(FIXTURES)] == ["Initech "]
    assert corpus.licence_of(["sentivent-topics", "sentifm-topics"]) == corpus.RESEARCH
    extra = corpus.extra_examples(FIXTURES, ["sentivent-topics", "sentifm-topics"])
    assert [e.text[:8] for e in extra] == ["Acme Inc", "The comp", "Brokers "]
    assert all(e.sentiment == IGNORE and e.topic != IGNORE for e in extra)


def test_sp500_is_binary_and_keeps_every_row():
    rows = sp500_posneg(FIXTURES)
    assert [e.sentiment for e in rows] == [POS, NEG, POS, NEG, POS, NEG]
    assert rows[2].text == "Globex, Initech sign supply deal"


def test_sentfin_by_headline_drops_mixed_and_by_entity_keeps_every_entity():
    heads = sentfin_headlines(FIXTURES)
    assert [e.sentiment for e in heads] == [POS, NEU, NEG, NEU]
    assert all("Sensex" not in e.text for e in heads)
    ents = sentfin_entities(FIXTURES)
    assert len(ents) == 6
    mixed = [e for e in ents if e.text.startswith("Sensex gains")]
    assert [e.sentiment for e in mixed] == [POS, NEG]  # one headline, two entities, the headline's text for both


def test_finentity_split_is_a_stable_partition_and_drops_mixed():
    dev, test, every = finentity(FIXTURES, "dev"), finentity(FIXTURES, "test"), finentity(FIXTURES, "all")
    assert len(every) == 7  # 8 passages, 1 mixed
    assert sorted(e.text for e in dev + test) == sorted(e.text for e in every)
    assert not {e.text for e in dev} & {e.text for e in test}
    assert [e.sentiment for e in test] == [POS, POS, NEU]
    assert all(finentity_split(e.text) == "test" for e in test)
    with pytest.raises(ValueError):
        finentity(FIXTURES, "train")


def test_sentivent_keeps_headlines_with_a_consensus_only():
    rows = sentivent_headlines(FIXTURES)
    assert [(e.text, e.sentiment) for e in rows] == [
        ("Acme Up on Record Quarterly Sales , Upbeat View", POS),
        ("Globex Misses Estimates as Costs Climb", NEG),
        ("Umbrella Co Sets Date for Annual Meeting", NEU),
    ]


def test_phrasebank_lines():
    assert [e.sentiment for e in phrasebank(FIXTURES, "50Agree")] == [POS, NEU, NEG, NEU, POS]
    assert phrasebank(FIXTURES, "AllAgree")[0].text == "Acme 's operating profit rose to EUR 5.1 mn from EUR 3.2 mn ."


def test_every_news_set_loads_from_the_fixture_directory():
    sizes = {s.name: len(s.load(FIXTURES)) for s in NEWS_SETS}
    assert sizes == {
        "sp500-posneg": 6,
        "sentfin-headline": 4,
        "sentfin-entity": 6,
        "finentity-test": 3,
        "sentivent-headlines": 3,
        "phrasebank-50-all": 5,
        "phrasebank-allagree": 3,
        "sp500-posneg-heldout": 2,
        "sentfin-headline-heldout": 0,
        "sentfin-entity-heldout": 2,  # the entities of the headlines outside SEntFiN's training part
        "phrasebank-allagree-heldout": 0,
    }
    # the held-out slices are the part of their set that ``split_heldout`` keeps back, nothing else
    assert all(
        {ex.text for ex in s.load(FIXTURES)} <= {ex.text for ex in sp500_posneg(FIXTURES)}
        for s in NEWS_SETS
        if s.name == "sp500-posneg-heldout"
    )
    assert [s.name for s in NEWS_SETS if s.binary] == ["sp500-posneg", "sp500-posneg-heldout"]


def test_a_file_in_another_format_is_refused(tmp_path):
    (tmp_path / "sentfin").mkdir()
    (tmp_path / "sentfin" / "sentfin_headlines.csv").write_text("id,title,label\n1,x,positive\n")
    with pytest.raises(DataError, match="label_consensus"):
        sentfin_headlines(tmp_path)
    (tmp_path / "sp500-headlines-posneg").mkdir()
    (tmp_path / "sp500-headlines-posneg" / "sp500_headlines_posneg.csv").write_text("headline,label\nx,neutral\n")
    with pytest.raises(DataError, match="no neutral"):
        sp500_posneg(tmp_path)


def test_missing_data_names_the_path(tmp_path):
    with pytest.raises(MissingData) as err:
        check_data_dir(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value) and err.value.path == tmp_path / "nope"
    with pytest.raises(MissingData) as err:
        sp500_posneg(tmp_path)
    assert err.value.path == tmp_path / "sp500-headlines-posneg" / "sp500_headlines_posneg.csv"


# ----------------------------------------------------------------------------- metrics, by hand


def test_three_class_metrics_on_a_hand_computed_example():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 2, 1, 1, 2, 2, 1, 0])
    m = sentiment_scores(y_true, y_pred, (0, 1, 2))
    # confusion: rows true, columns predicted
    assert m["confusion"] == [[1, 1, 1], [0, 2, 0], [1, 1, 2]]
    assert m["accuracy"] == pytest.approx(5 / 9)
    # F1 negative: P 1/2, R 1/3 -> 0.4; neutral: P 2/4, R 2/2 -> 2/3; positive: P 2/3, R 2/4 -> 4/7
    assert m["macro_f1"] == pytest.approx((0.4 + 2 / 3 + 4 / 7) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 0.4 + 2 * 2 / 3 + 4 * 4 / 7) / 9)
    assert m["neutral_rate"] == pytest.approx(4 / 9)
    assert m["gold_neutral_share"] == pytest.approx(2 / 9)


def test_binary_set_scored_on_the_three_way_prediction():
    y_true = np.array([0, 0, 2, 2, 2])
    scores = np.array([[0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.1, 0.2, 0.7], [0.15, 0.8, 0.05], [0.5, 0.1, 0.4]])
    y_pred = scores.argmax(1)
    assert y_pred.tolist() == [0, 1, 2, 1, 0]
    m = sentiment_scores(y_true, y_pred, (0, 2))
    assert m["accuracy"] == pytest.approx(2 / 5)  # neutral predictions count as wrong
    # F1 over negative and positive only: negative P 1/2 R 1/2 -> 0.5; positive P 1/1 R 1/3 -> 0.5
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["neutral_rate"] == pytest.approx(2 / 5) and m["gold_neutral_share"] == 0
    assert m["confusion"] == [[1, 1, 0], [0, 0, 0], [1, 1, 1]]
    # argmax over {negative, positive} only: rows 0, 1, 2 right, 3 and 4 wrong
    assert restricted_accuracy(scores, y_true, (0, 2)) == pytest.approx(3 / 5)


def test_offsets_fitted_by_nll_recover_the_label_prior():
    # The logits say nothing (all zero), so the best offsets are the log prior ratios to neutral.
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    b = fit_offsets(np.zeros((10, 3)), labels, temperature=3.0, reference=1, l2=0.0)
    assert b[1] == 0
    assert b[0] == pytest.approx(math.log(6 / 3), abs=1e-4)
    assert b[2] == pytest.approx(math.log(1 / 3), abs=1e-4)


# ----------------------------------------------------------------------------- classifier + report


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir):
    directory = tmp_path / "models" / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory)
    return directory


def _write_bias(directory: Path, positive: float, model: str = "tiny@v1") -> None:
    doc = {
        "domain": "news",
        "model": model,
        "sentiment_offsets": {"negative": 0.0, "neutral": 0.0, "positive": positive},
    }
    (directory / "news_bias.json").write_text(json.dumps(doc))


TEXTS = ["Acme shares soar after results", "Globex cuts outlook", "Initech to hold meeting"]


def test_news_rule_applies_only_when_asked(model_dir):
    from finsent.model import Classifier

    plain = Classifier.load(model_dir, backend="torch", device="cpu")
    assert plain.news_bias is None
    default = plain.predict(TEXTS)
    assert plain.predict(TEXTS, domain="news") == default  # no rule stored: news = default

    _write_bias(model_dir, 50.0)
    clf = Classifier.load(model_dir, backend="torch", device="cpu")
    assert clf.predict(TEXTS) == default and clf.predict(TEXTS, domain="twitter") == default
    news = clf.predict(TEXTS, domain="news")
    assert [p.sentiment for p in news] == ["positive"] * 3
    assert [p.topic_probs for p in news] == [p.topic_probs for p in default]  # the topic head is untouched
    assert all(abs(sum(p.sentiment_probs.values()) - 1) < 1e-5 for p in news)
    with pytest.raises(ValueError, match="unknown domain"):
        clf.predict(TEXTS, domain="reddit")


def test_a_rule_fitted_for_another_model_is_ignored(model_dir):
    from finsent.model import Classifier

    _write_bias(model_dir, 50.0, model="tiny@v0")
    assert Classifier.load(model_dir, backend="torch", device="cpu").news_bias is None


def test_report_has_the_news_section_and_score(tmp_path, model_dir):
    from finsent.model import Classifier
    from finsent.model.report import BIAS, NEWS, run, summary_lines

    _write_bias(model_dir, 1.5)
    clf = Classifier.load(model_dir, backend="torch", device="cpu")
    out = tmp_path / "report"
    summary = run(clf, FIXTURES, out)
    names = [s.name for s in NEWS_SETS if s.scored]
    assert "sp500-posneg-heldout" in summary and "sp500-posneg-heldout" not in names
    assert summary["reuters-topics-heldout"]["n"] >= 1  # topic on news
    # SENTiVENT and SentiFM topic: on their held-out parts only (the research variant trains on the rest)
    assert summary["sentivent-topics-heldout"]["n"] == 1 and summary["sentifm-topics-heldout"]["n"] == 1
    assert "sentivent-topics" not in summary and "sentifm-topics" not in summary
    assert summary[NEWS]["score"] == pytest.approx(np.mean([summary[n]["accuracy"] for n in names]))
    assert summary[BIAS + NEWS]["score"] == pytest.approx(np.mean([summary[BIAS + n]["accuracy"] for n in names]))
    assert "accuracy_restricted" in summary["sp500-posneg"] and "accuracy_restricted" not in summary["sentfin-headline"]
    assert BIAS + "twitter-sentiment" in summary and BIAS + "twitter-topic" not in summary
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sentfin-entity"]["n"] == 6 and np.array(metrics["sentfin-entity"]["confusion"]).sum() == 6
    assert metrics[NEWS]["sets"] == names and metrics[NEWS]["missing"] == {}
    report = (out / "report.md").read_text()
    assert "## News" in report and "**News score**" in report and "## News decision rule" in report
    assert all(f"| {n} |" in report for n in names)
    assert (out / "sp500-posneg-confusion.png").stat().st_size > 1000
    lines = summary_lines(summary)
    assert any(line.startswith("news score (mean accuracy over 7 news sets)") for line in lines)


def test_a_model_trained_on_part_of_a_news_set_is_scored_on_the_part_it_never_saw(tmp_path, model_dir):
    """The research variant's news score once averaged whole sets it had trained four fifths of. Now each set a
    model's ``meta.json`` says it trained on is replaced in the score by the rows its training part left out, and the
    report says which; a model that trained on none keeps the whole sets (the test above)."""
    from finsent.model import Classifier
    from finsent.model.data import sentfin_entity_heldout, sentfin_headlines, split_heldout
    from finsent.model.report import NEWS, held_out_stand_ins, run, summary_lines

    assert held_out_stand_ins(["twitter-topic", "twitter-sentiment", "finentity-dev"]) == {}
    research = held_out_stand_ins(["sp500-posneg", "sentfin-headline", "phrasebank-50"])
    assert research == {
        "sp500-posneg": "sp500-posneg-heldout",
        "sentfin-headline": "sentfin-headline-heldout",
        "sentfin-entity": "sentfin-entity-heldout",
        "phrasebank-50-all": "phrasebank-50-finbert-test",
        "phrasebank-allagree": "phrasebank-allagree-heldout",
    }
    trained = {ex.text for ex in split_heldout("sentfin-headline", sentfin_headlines(FIXTURES))[0]}
    assert not trained & {ex.text for ex in sentfin_entity_heldout(FIXTURES)}

    meta = json.loads((model_dir / "meta.json").read_text())
    meta["training_sets"] = ["twitter-topic", "twitter-sentiment", "sp500-posneg"]
    (model_dir / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "report"
    summary = run(Classifier.load(model_dir, backend="torch", device="cpu"), FIXTURES, out)
    names = [s.name for s in NEWS_SETS if s.scored]
    averaged = ["sp500-posneg-heldout" if n == "sp500-posneg" else n for n in names]
    assert summary[NEWS]["score"] == pytest.approx(np.mean([summary[n]["accuracy"] for n in averaged]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics[NEWS]["sets"] == averaged
    assert metrics[NEWS]["held_out_stand_ins"] == {"sp500-posneg": "sp500-posneg-heldout"}
    report = (out / "report.md").read_text()
    assert "trained on the training parts of sp500-posneg" in report and "sp500-posneg → sp500-posneg-heldout" in report
    assert any("held-out parts for the 1 it trained on" in line for line in summary_lines(summary))


def test_the_decision_rule_probe_scores_the_reports_news_sets(tmp_path, model_dir):
    """``python -m finsent.model.domain`` once averaged 9 sets (the held-out slices counted S&P 500 and SEntFiN
    twice): its default-rule news score is the report's."""
    from finsent.model import Classifier
    from finsent.model.domain import compare
    from finsent.model.report import NEWS, run

    clf = Classifier.load(model_dir, backend="torch", device="cpu")
    probe = compare(clf, FIXTURES, np.zeros(3))
    assert probe["news_score_default"] == pytest.approx(run(clf, FIXTURES, tmp_path / "r")[NEWS]["score"], abs=1e-6)


def test_a_missing_news_set_leaves_the_news_score_incomplete(tmp_path, model_dir):
    from finsent.model import Classifier
    from finsent.model.report import NEWS, run, summary_lines

    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    shutil.rmtree(data / "sentivent")
    summary = run(Classifier.load(model_dir, backend="torch", device="cpu"), data, tmp_path / "report")
    assert summary[NEWS]["score"] is None and "sentivent-headlines" not in summary
    assert "sentivent_implicit_sentences.csv" in (tmp_path / "report" / "report.md").read_text()
    assert any("incomplete" in line for line in summary_lines(summary))


def _eval(tmp_path: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FINSENT_PATHS__DATA_DIR": str(data_dir), "HOME": str(tmp_path)}
    env = {k: v for k, v in env.items() if k != "FINSENT_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "finsent.cli", "eval", "--no-mlflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_eval_without_the_data_directory_fails_with_one_line(tmp_path):
    missing = tmp_path / "shared" / "data"
    proc = _eval(tmp_path, missing)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # exactly one line
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_eval_command_prints_the_news_score(tmp_path, model_dir):
    proc = _eval(tmp_path, FIXTURES, "--model", str(model_dir), "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sp500-posneg" in proc.stdout and "news score (mean accuracy over 7 news sets)" in proc.stdout


def test_a_limited_eval_is_a_partial_report_kept_apart_from_the_models(tmp_path, model_dir):
    """``--limit`` once wrote over ``reports/<model>`` (the committed report) and logged to MLflow, unmarked, from the
    first N rows of files that are sorted by label. Now: evenly spread rows, marked partial, written under runs/."""
    from finsent.model.report import sample

    assert sample(list(range(10)), 4) == [0, 2, 5, 7] and sample(list(range(3)), 4) == [0, 1, 2]
    proc = _eval(tmp_path, FIXTURES, "--model", str(model_dir), "--limit", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = tmp_path / "runs" / "eval" / "tiny@v1-limit2" / "report.md"
    assert report.exists() and not (tmp_path / "reports").exists()
    assert "**Partial report** (`--limit 2`)" in report.read_text()
    assert "partial report: at most 2 rows of each set" in proc.stdout
    assert json.loads((report.parent / "metrics.json").read_text())["limit"] == 2


def test_news_dev_macro_f1_counts_only_the_classes_the_slice_holds():
    """One stray call into a class the slice never holds must not add a class of F1 zero to the mean (session 36:
    the news dev slice's Reuters titles hold 7 of the 20 topics, and such calls moved its macro-F1 by 10 pt)."""
    y_true = np.array([0, 0, 1, 1, 2, 2])
    clean = present_class_scores(y_true, y_true)
    stray = present_class_scores(y_true, np.array([0, 0, 1, 1, 2, 7]))
    assert clean == {"accuracy": 1.0, "macro_f1": 1.0}
    assert stray["accuracy"] == pytest.approx(5 / 6)
    assert stray["macro_f1"] == pytest.approx((1 + 1 + 2 / 3) / 3)  # class 7 is not a fourth class of 0
