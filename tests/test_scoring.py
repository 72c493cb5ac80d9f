"""adapt.scoring: file formats, bad input messages, bootstrap intervals, paired significance, output."""

import json
from pathlib import Path

import pytest

from adapt.errors import AdaptError
from adapt.metrics import classification_scores, seqeval_scores
from adapt.metrics.resampling import bootstrap_ci
from adapt.scoring import read_examples, score_files, scorer, to_json, write_output


def write(tmp_path: Path, name: str, lines) -> str:
    path = tmp_path / name
    path.write_text("".join(f"{json.dumps(x) if not isinstance(x, str) else x}\n" for x in lines))
    return str(path)


@pytest.fixture
def labels(tmp_path):
    gold = ["pos", "neg"] * 30
    good = gold[:57] + ["pos", "neg", "pos"]  # 57/60 right
    bad = [{"pos": "neg", "neg": "pos"}[g] if i % 3 else g for i, g in enumerate(gold)]  # 20/60 right
    return (write(tmp_path, "gold.txt", gold), write(tmp_path, "good.txt", good), write(tmp_path, "bad.txt", bad))


def test_classification_lines_and_jsonl(tmp_path, labels):
    gold, good, _ = labels
    scores = score_files(["accuracy", "f1"], good, [gold])["scores"]
    assert scores["accuracy"] == {"accuracy": pytest.approx(57 / 60)}
    assert set(scores["f1"]) == {"f1_macro", "f1_micro", "f1_weighted", "f1_per_class"}
    preds = write(tmp_path, "p.jsonl", [{"label": 1}, {"label": 0}])
    refs = write(tmp_path, "r.jsonl", [{"label": 1}, {"label": 1}])
    assert score_files(["accuracy"], preds, [refs])["scores"]["accuracy"]["accuracy"] == 0.5


def test_bootstrap_ci_contains_point_and_is_deterministic(labels):
    gold, _, bad = labels
    first = score_files(["accuracy", "f1"], bad, [gold], ci=0.95, samples=100, seed=3)
    again = score_files(["accuracy", "f1"], bad, [gold], ci=0.95, samples=100, seed=3)
    assert first["ci"] == again["ci"]
    for metric, intervals in first["ci"].items():
        for key, (low, high) in intervals.items():
            assert low <= first["scores"][metric][key] <= high and low < high


def test_bootstrap_recomputes_corpus_metric():
    """Resampling the per-example statistics gives the metric of the resampled corpus itself."""
    stats = [("a", "a"), ("b", "a"), ("c", "c")]
    ci = bootstrap_ci(stats, lambda s: classification_scores([p for p, _ in s], [r for _, r in s]), 0.5, 50, 0)
    assert set(ci) == {"accuracy", "f1_macro", "f1_micro", "f1_weighted", "precision_macro", "recall_macro", "matthews"}


def test_paired_compare(labels):
    gold, good, bad = labels
    better = score_files(["accuracy"], good, [gold], compare=bad, samples=100)["compare"]["accuracy"]
    assert better["delta"] > 0 and better["p_value"] < 0.05
    same = score_files(["accuracy", "bleu"], good, [gold], compare=good, samples=100)["compare"]
    assert same["accuracy"]["p_value"] == 1.0 and same["bleu"]["p_value"] == 1.0


def test_seqeval_files_match_function(tmp_path):
    gold = ["B-PER I-PER O B-LOC", "O B-ORG"]
    pred = ["B-PER I-PER O B-ORG", "O B-ORG"]
    scores = score_files(["seqeval"], write(tmp_path, "p.txt", pred), [write(tmp_path, "g.txt", gold)])["scores"]
    assert scores["seqeval"] == seqeval_scores([p.split() for p in pred], [g.split() for g in gold])
    jsonl = score_files(["seqeval"], write(tmp_path, "p.jsonl", [{"tags": p.split()} for p in pred]),
                        [write(tmp_path, "g.jsonl", [{"tags": g.split()} for g in gold])])["scores"]
    assert jsonl == scores


def test_squad_jsonl_matched_by_id(tmp_path):
    preds = write(tmp_path, "p.jsonl", [{"id": "b", "prediction_text": "the Alps"}, {"id": "a", "prediction_text": "1990"}])
    refs = write(tmp_path, "r.jsonl", [
        {"id": "a", "answers": {"text": ["in 1990", "1990"], "answer_start": [0, 3]}},
        {"id": "b", "answers": {"text": ["Alps mountains"], "answer_start": [4]}},
    ])
    report = score_files(["squad"], preds, [refs], ci=0.9, samples=50)
    assert report["scores"]["squad"] == pytest.approx({"exact_match": 50.0, "f1": (1 + 2 / 3) / 2 * 100})
    v2 = write(tmp_path, "v2.jsonl", [{"id": "a", "answers": {"text": [], "answer_start": []}},
                                      {"id": "b", "answers": {"text": ["Alps"], "answer_start": [0]}}])
    assert score_files(["squad_v2"], preds, [v2])["scores"]["squad_v2"]["HasAns_exact"] == 100.0


def test_multiple_reference_files_are_bleu_streams(tmp_path):
    hyp = write(tmp_path, "h.txt", ["a small cat sits on the mat", "the dog is running"])
    r1 = write(tmp_path, "r1.txt", ["a small cat sits on the mat", "a dog runs"])
    r2 = write(tmp_path, "r2.txt", ["the kitten sits", "the dog is running"])
    assert score_files(["bleu"], hyp, [r1, r2])["scores"]["bleu"]["bleu"] == pytest.approx(100.0)
    with pytest.raises(AdaptError, match="rouge takes exactly one"):
        score_files(["rouge"], hyp, [r1, r2])


def test_output_file_and_json(tmp_path, labels):
    gold, good, _ = labels
    report = score_files(["accuracy"], good, [gold], ci=0.95, samples=20)
    write_output(report, str(tmp_path / "out.json"))
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["scores"] == json.loads(to_json(report))["scores"]
    assert saved["examples"][0] == {"id": "1", "prediction": "pos", "references": ["pos"]}
    assert len(saved["examples"]) == 60 and "examples" not in json.loads(to_json(report))


@pytest.mark.parametrize("case,message", [
    ("lengths", r"p\.txt has 3 examples but .*r\.txt has 2"),
    ("unknown", "unknown metric 'bleurt'"),
    ("empty", r"empty\.txt is empty"),
    ("labels", r"p\.txt line 1: label 'positive' never occurs in .*r\.txt"),
    ("json", r"bad\.jsonl line 2: malformed JSON"),
    ("field", r"nofield\.jsonl line 1: no prediction field \(prediction, label\); the row has: lab;"),
    ("tags", r"p\.txt line 1: 2 tags but .*r\.txt line 1 has 1"),
    ("missing", r"no such file"),
    ("squad_id", r"no prediction for question id 'q2'"),
])
def test_bad_input_messages(tmp_path, case, message):
    p = write(tmp_path, "p.txt", ["positive", "negative", "positive"])
    r = write(tmp_path, "r.txt", ["1", "0"])
    calls = {
        "lengths": lambda: score_files(["bleu"], p, [r]),
        "unknown": lambda: score_files(["bleurt"], p, [r]),
        "empty": lambda: score_files(["bleu"], write(tmp_path, "empty.txt", []), [r]),
        "labels": lambda: score_files(["accuracy"], write(tmp_path, "p.txt", ["positive", "negative"]), [r]),
        "json": lambda: score_files(["accuracy"], write(tmp_path, "bad.jsonl", ['{"label": 1}', '{"label": ']), [r]),
        "field": lambda: score_files(["accuracy"], write(tmp_path, "nofield.jsonl", [{"lab": 1}]), [r]),
        "tags": lambda: read_examples("seqeval", write(tmp_path, "p.txt", ["O O"]), [write(tmp_path, "r.txt", ["O"])]),
        "missing": lambda: score_files(["bleu"], str(tmp_path / "nope.txt"), [r]),
        "squad_id": lambda: score_files(
            ["squad"], write(tmp_path, "p.jsonl", [{"id": "q1", "prediction_text": "x"}]),
            [write(tmp_path, "r.jsonl", [{"id": q, "answers": {"text": ["x"]}} for q in ("q1", "q2")])]),
    }
    with pytest.raises(AdaptError, match=message):
        calls[case]()


def test_scorer_statistics_reproduce_the_metric(tmp_path):
    hyp = write(tmp_path, "h.txt", ["a cat on a mat", "dogs run fast", "it rains"])
    ref = write(tmp_path, "r.txt", ["the cat on the mat", "dogs are running fast", "it is raining"])
    from adapt.metrics import chrf_score, rouge_scores

    examples = read_examples("text", hyp, [ref])
    for metric, expected in (("chrf", chrf_score), ("rouge", rouge_scores)):
        s = scorer(metric, examples)
        refs = [r[0] for r in examples.references]
        value = expected(examples.predictions, [refs] if metric == "chrf" else refs)
        assert s.score(s.stats) == pytest.approx(value)
