"""Hand-checked values for the metric functions and their equality with the reference implementations."""

import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

from adapt.errors import AdaptError
from adapt.metrics import (
    bleu_score,
    chrf_score,
    classification_scores,
    load,
    rouge_scores,
    seqeval_scores,
    squad_scores,
    squad_v2_scores,
)

HYPS = ["the cat sat on the mat", "a dog runs in the park today", "it is raining heavily now", "hello world"]
REFS = ["the cat sat on a mat", "a dog is running in the park", "it rains heavily now", "hello there world"]
REFS2 = ["a cat was sitting on the mat", "the dog runs in a park", "heavy rain now", "hello world"]


def test_macro_f1_by_hand_three_classes():
    scores = classification_scores(["a", "b", "b", "b", "c", "a"], ["a", "a", "b", "b", "c", "c"])
    # a: P=1/2 R=1/2 F=1/2; b: P=2/3 R=1 F=0.8; c: P=1 R=1/2 F=2/3
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert scores["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert scores["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert scores["f1_micro"] == pytest.approx(4 / 6)
    assert scores["f1_per_class"] == pytest.approx({"a": 0.5, "b": 0.8, "c": 2 / 3})


def test_classification_int_labels_use_label_names():
    scores = classification_scores([0, 1, 1], [0, 1, 0], label_names=["neg", "pos"])
    assert set(scores["f1_per_class"]) == {"neg", "pos"}
    assert scores["matthews"] == pytest.approx(0.5)
    with pytest.raises(AdaptError, match="2 predictions but 1 references"):
        classification_scores([0, 1], [0])


def test_seqeval_entity_case_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"]]  # 2 gold entities: 1 correct, 1 wrong type
    scores = seqeval_scores(pred, gold)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 0.5, 0.5)
    assert scores["accuracy"] == 0.75
    assert scores["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert scores["per_type"]["LOC"]["support"] == 1 and scores["per_type"]["LOC"]["f1"] == 0.0


def test_seqeval_equals_classification_report():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG", "O", "B-MISC"], ["O", "B-PER"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG", "O", "I-MISC"], ["B-PER", "I-PER"]]
    report = classification_report(gold, pred, output_dict=True, zero_division=0)  # seqeval's default mode
    strict = classification_report(gold, pred, output_dict=True, zero_division=0, mode="strict", scheme=IOB2)
    scores = seqeval_scores(pred, gold)
    assert scores["f1"] == pytest.approx(report["micro avg"]["f1-score"])
    assert scores["precision"] == pytest.approx(report["micro avg"]["precision"])
    assert scores["strict_f1"] == pytest.approx(strict["micro avg"]["f1-score"]) and scores["strict_scheme"] == "IOB2"
    for name, row in scores["per_type"].items():
        assert row["f1"] == pytest.approx(report[name]["f1-score"])
        assert row["support"] == report[name]["support"]
    # the modes differ here: an entity starting with I- counts only in seqeval's default mode
    assert scores["strict_f1"] != scores["f1"]


def test_squad_by_hand():
    refs = {"q1": ["Eiffel Tower"], "q2": ["Paris", "France"], "q3": ["apple pie", "the apple"]}
    preds = {"q1": "The Eiffel tower!", "q2": "in Paris, France", "q3": "an apple", "extra": "ignored"}
    scores = squad_scores(preds, refs)
    # q1 EM after normalisation; q2 F1 = 2*(1/3*1)/(1/3+1) = 0.5 for either gold; q3 "apple" == "apple"
    assert scores["exact_match"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx((1 + 0.5 + 1) / 3 * 100)
    with pytest.raises(AdaptError, match="'q2'"):
        squad_scores({"q1": "x", "q3": "y"}, refs)


def test_squad_v2_has_ans_no_ans_breakdown():
    refs = {"q1": ["Paris"], "q2": ["blue sky"], "q3": [], "q4": []}
    preds = {"q1": "Paris", "q2": "sky", "q3": "", "q4": "something"}
    scores = squad_v2_scores(preds, refs)
    assert scores == pytest.approx({
        "exact": 50.0, "f1": (1 + 2 / 3 + 1 + 0) / 4 * 100, "total": 4,
        "HasAns_exact": 50.0, "HasAns_f1": (1 + 2 / 3) / 2 * 100, "HasAns_total": 2,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2,
    })
    thresholded = squad_v2_scores(preds, refs, no_answer_probs={"q4": 0.9}, threshold=0.5)
    assert thresholded["exact"] == 75.0 and thresholded["NoAns_exact"] == 100.0


def test_bleu_perfect_and_zero():
    perfect = bleu_score(HYPS, [HYPS])
    assert perfect["bleu"] == pytest.approx(100.0, abs=1e-9) and perfect["precisions"] == [100.0] * 4
    zero = bleu_score(["alpha beta gamma delta"], [["one two three four"]])
    assert zero["bleu"] == 0.0 and zero["precisions"][0] == 0.0


def test_bleu_chrf_equal_sacrebleu_api():
    for streams in ([REFS], [REFS, REFS2]):
        ours, theirs = bleu_score(HYPS, streams), sacrebleu.corpus_bleu(HYPS, streams)
        assert ours["bleu"] == pytest.approx(theirs.score)
        assert (ours["sys_len"], ours["ref_len"], ours["bp"]) == (theirs.sys_len, theirs.ref_len, theirs.bp)
        assert ours["signature"].startswith(f"nrefs:{len(streams)}|")
        assert chrf_score(HYPS, streams)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, streams).score)


def test_bleu_chrf_equal_sacrebleu_cli(tmp_path: Path):
    (tmp_path / "hyp.txt").write_text("\n".join(HYPS) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(REFS) + "\n")
    (tmp_path / "ref2.txt").write_text("\n".join(REFS2) + "\n")
    cli = Path(sys.executable).with_name("sacrebleu")
    out = subprocess.run(
        [str(cli), str(tmp_path / "ref.txt"), str(tmp_path / "ref2.txt"), "-i", str(tmp_path / "hyp.txt"),
         "-m", "bleu", "chrf", "-b", "-w", "2", "-f", "text"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert f"{bleu_score(HYPS, [REFS, REFS2])['bleu']:.2f}" == out[0]
    assert f"{chrf_score(HYPS, [REFS, REFS2])['chrf']:.2f}" == out[1]


def test_bleu_stream_length_mismatch():
    with pytest.raises(AdaptError, match="reference stream 1 has 3 lines but there are 4"):
        bleu_score(HYPS, [REFS[:3]])


def test_rouge_equals_rouge_score():
    preds = ["it slept\nthe cats are sitting on the mat", "police kill the gunman"]
    refs = ["the cat sat on the mat\nit slept", "the gunman was killed by police"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    per = [scorer.score(r, p) for p, r in zip(preds, refs)]
    ours = rouge_scores(preds, refs)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert ours[key] == pytest.approx(sum(s[key].fmeasure for s in per) / 2)
    assert ours["rougeLsum"] != ours["rougeL"]  # newline-split summaries


def test_load_accumulates_like_evaluate():
    metric = load("squad")
    metric.add_batch(predictions=[{"id": "1", "prediction_text": "Paris"}],
                     references=[{"id": "1", "answers": {"text": ["paris"], "answer_start": [0]}}])
    metric.add(prediction={"id": "2", "prediction_text": "x"},
               reference={"id": "2", "answers": {"text": ["y"], "answer_start": [0]}})
    assert metric.compute() == {"exact_match": 50.0, "f1": 50.0}
    bleu = load("bleu")
    bleu.add_batch(predictions=HYPS, references=[[a, b] for a, b in zip(REFS, REFS2)])
    assert bleu.compute()["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score)
    with pytest.raises(AdaptError, match="unknown metric 'bleurt'"):
        load("bleurt")


def test_metric_gathers_shards_once(monkeypatch):
    """Two processes' shards: gather_object concatenates them, so every example counts exactly once."""
    import adapt.metrics.accumulate as accumulate

    shards = {"predictions": [["a", "b"], ["b", "c"]], "references": [["a", "a"], ["b", "c"]]}
    calls = []

    def fake_gather(local):
        calls.append(local)
        key = "predictions" if len(calls) % 2 else "references"
        return [x for shard in shards[key] for x in shard]

    monkeypatch.setattr(accumulate, "gather_object", fake_gather)
    metric = load("accuracy", accelerator=object())
    metric.add_batch(predictions=shards["predictions"][0], references=shards["references"][0])
    assert metric.compute()["accuracy"] == 0.75
    assert calls == [["a", "b"], ["a", "a"]]


@pytest.mark.parametrize("preds, refs", [
    (["x", "z", "z", "y", "y", "x", "x", "w"], ["x", "y", "z", "x", "y", "x", "z", "z"]),  # 'w' only predicted
    ([1, 1, 1, 1], [0, 1, 0, 1]),  # one class predicted: Matthews undefined -> 0
    ([0, 1, 1, 0, 1, 0, 0], [0, 1, 0, 0, 1, 1, 0]),
])
def test_classification_equals_sklearn(preds, refs):
    from sklearn.metrics import f1_score, matthews_corrcoef, precision_score, recall_score

    scores = classification_scores(preds, refs)
    for average in ("macro", "micro", "weighted"):
        assert scores[f"f1_{average}"] == pytest.approx(f1_score(refs, preds, average=average, zero_division=0))
    assert scores["precision_macro"] == pytest.approx(precision_score(refs, preds, average="macro", zero_division=0))
    assert scores["recall_macro"] == pytest.approx(recall_score(refs, preds, average="macro", zero_division=0))
    assert scores["matthews"] == pytest.approx(matthews_corrcoef(refs, preds))
    per_class = f1_score(refs, preds, average=None, zero_division=0, labels=sorted(set(preds) | set(refs), key=str))
    assert list(scores["f1_per_class"].values()) == pytest.approx(list(per_class))
