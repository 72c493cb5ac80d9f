"""Multi-label classification on `task: classification` (task_options.problem_type=multi_label_classification,
or auto from list / delimiter-joined label cells): metrics against scikit-learn, label parsing, bad input, the
BCE loss against transformers', a tiny run with a tuned threshold saved in config.json, `pipeline()`, eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import AdaptError
from adapt.metrics import multi_label_scores, tune_threshold
from adapt.recipe import resolve_recipe
from test_task_regression import refused, task_for

NAMES = ["joy", "anger", "fear"]


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text\tlabels\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


# ---- metrics ------------------------------------------------------------------------------------------
def test_multi_label_scores_by_hand_and_against_scikit_learn():
    gold = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=bool)
    pred = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 1, 1]], dtype=bool)
    scores = multi_label_scores(pred, gold, NAMES)
    # cells: tp = 1 + 1 + 0 + 2 = 4, predicted = 1 + 2 + 0 + 2 = 5, gold = 5: micro F1 = 2*4 / (5+5)
    assert scores["f1_micro"] == pytest.approx(0.8)
    assert scores["precision_micro"] == pytest.approx(4 / 5) and scores["recall_micro"] == pytest.approx(4 / 5)
    # per label: joy tp2 p2 g2 -> 1; anger tp1 p1 g2 -> 2/3; fear tp1 p2 g1 -> 2/3
    assert scores["f1_per_class"] == pytest.approx({"joy": 1.0, "anger": 2 / 3, "fear": 2 / 3})
    assert scores["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert scores["subset_accuracy"] == pytest.approx(3 / 4)  # row 2 differs; the empty row 3 matches
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    assert scores["f1_macro"] == pytest.approx(f1_score(gold, pred, average="macro", zero_division=0))
    assert scores["recall_macro"] == pytest.approx(recall_score(gold, pred, average="macro", zero_division=0))
    assert scores["precision_macro"] == pytest.approx(precision_score(gold, pred, average="macro", zero_division=0))
    assert scores["subset_accuracy"] == pytest.approx(accuracy_score(gold, pred))
    with pytest.raises(AdaptError, match=r"must both be \[examples, 3 labels\]"):
        multi_label_scores(pred[:, :2], gold[:, :2], NAMES)


def test_tune_threshold_picks_the_best_micro_f1_and_prefers_values_near_half():
    probs = np.array([[0.9, 0.3], [0.35, 0.1], [0.2, 0.8]])
    gold = np.array([[1, 1], [1, 0], [0, 1]], dtype=bool)
    # t <= 0.30 recovers all 4 gold cells with 1 false positive (0.35 row 2 is gold; 0.2 row 3 is not at t=0.25+)
    assert tune_threshold(probs, gold, grid=(0.25, 0.3, 0.5, 0.85)) == 0.3
    assert tune_threshold(probs, gold) == 0.3
    flat = np.full((2, 2), 0.6)  # every threshold up to 0.6 gives the same F1: the one nearest 0.5 wins
    assert tune_threshold(flat, np.ones((2, 2), dtype=bool)) == 0.5


# ---- reading --------------------------------------------------------------------------------------------
def test_auto_detects_goemotions_style_ids_and_maps_them_with_label_names(tmp_path):
    path = write_tsv(tmp_path / "g.tsv", [("so happy", "0"), ("angry and scared", "1,2"), ("meh", "[]"),
                                          ("joyful rage", "1, 0,1")])
    task = task_for(path, ("data.columns.label", "labels"), ("data.label_names", NAMES))
    ds = task.read_source(str(path), "train")
    assert task.problem_type == "multi_label_classification" and task.default_metric == "f1_micro"
    assert ds["label"] == [["joy"], ["anger", "fear"], [], ["anger", "joy"]]
    # names joined by a delimiter are a list when each name also occurs alone in the column
    names = write_tsv(tmp_path / "n.tsv", [("a", "joy;anger"), ("b", "anger"), ("c", "joy")])
    assert task_for(names, ("data.columns.label", "labels")).read_source(str(names), "train")["label"] == [
        ["joy", "anger"], ["anger"], ["joy"]]
    one = write_tsv(tmp_path / "one.tsv", [("a", "arts; culture"), ("b", "science")])  # a single class name
    single = task_for(one, ("data.columns.label", "labels"))
    assert single.read_source(str(one), "train")["label"] == ["arts; culture", "science"]
    assert single.problem_type == "single_label_classification"
    listed = tmp_path / "l.jsonl"
    listed.write_text('{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": []}\n', encoding="utf-8")
    assert task_for(listed).read_source(str(listed), "train")["label"] == [["x", "y"], []]


def test_multi_label_bad_cells_are_refused_naming_the_line(tmp_path):
    ml = (("data.columns.label", "labels"), ("task_options.problem_type", "multi_label_classification"))
    empty = write_tsv(tmp_path / "e.tsv", [("a", "0,1"), ("b", "")])
    assert refused(empty, *ml) == (f"{empty}: line 3: the label ('labels') is empty; give every example its labels "
                                   "(an example with none of them: [])")
    out_of_range = write_tsv(tmp_path / "r.tsv", [("a", "0,1"), ("b", "2,3")])
    assert refused(out_of_range, *ml, ("data.label_names", NAMES)) == (
        f"{out_of_range}: line 3: the label ('labels') holds label id 3, outside data.label_names (0..2); fix the "
        "label or set data.label_names to all the labels in id order")
    gap = write_tsv(tmp_path / "gap.tsv", [("a", "0,,1")])
    assert refused(gap, *ml) == f"{gap}: line 2: the label ('labels') '0,,1' has an empty label; list labels " \
                                "without empty entries"
    unknown = write_tsv(tmp_path / "u.tsv", [("a", "joy,sorrow")])
    assert "holds 'sorrow', which is not one of data.label_names" in refused(unknown, *ml, ("data.label_names", NAMES))


def test_a_validation_label_never_in_train_is_refused(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", [("a", "joy,anger"), ("b", "anger"), ("c", "joy")])
    dev = write_tsv(tmp_path / "dev.tsv", [("d", "joy"), ("e", "anger,fear")])
    task = task_for(train, ("data.columns.label", "labels"), ("data.validation", str(dev)))
    with pytest.raises(AdaptError) as err:
        task.load_splits()
    assert str(err.value) == (f"{dev}: line 3: label 'fear' in the validation split never appears in train (2 train "
                              "labels); fix the data or set data.label_names to all the labels")


def test_multi_label_metric_for_best_is_checked(tmp_path):
    with pytest.raises(AdaptError, match=r"^train.metric_for_best 'pearson' is not a metric of "
                                         r"multi_label_classification .*use one of f1_micro, f1_macro"):
        task_for(tmp_path / "x.tsv", ("task_options.problem_type", "multi_label_classification"),
                 ("train.metric_for_best", "pearson"))


def test_the_test_split_applies_the_validation_tuned_threshold_even_when_it_is_the_same_file(tmp_path):
    from types import SimpleNamespace

    train = write_tsv(tmp_path / "train.tsv", [("a", "0"), ("b", "1"), ("c", "0,1")])
    dev = write_tsv(tmp_path / "dev.tsv", [("d", "0"), ("e", "1")])  # gold [[1, 0], [0, 1]]
    task = task_for(train, ("data.columns.label", "labels"), ("data.label_names", ["joy", "anger"]),
                    ("data.validation", str(dev)), ("data.test", str(dev)), ("task_options.tune_threshold", True))
    splits = task.load_splits()

    def predictions(probs):
        return [{"labels": [], "probs": row} for row in probs]

    # validation: every threshold in (0.1, 0.3] is perfect; of those, 0.3 is nearest 0.5
    validation = task.score(predictions([[0.3, 0.1], [0.1, 0.35]]), splits["validation"])
    assert validation["threshold"] == 0.3 and validation["f1_micro"] == 1.0
    model = SimpleNamespace(config=SimpleNamespace())
    task.finalize_validation(model, validation)
    assert model.config.threshold == 0.3
    # the same file as test, other probabilities: tuned on itself it would pick 0.65 (perfect); the validation
    # threshold 0.3 predicts both labels of both rows: tp 2, predicted 4, gold 2 -> micro F1 2*2/(4+2)
    test = task.score(predictions([[0.9, 0.6], [0.6, 0.9]]), splits["test"])
    assert test["threshold"] == 0.3 and test["f1_micro"] == pytest.approx(2 / 3)
    assert test["subset_accuracy"] == 0.0


def test_a_saved_model_of_another_problem_type_refuses_threshold_options(tmp_path):
    from types import SimpleNamespace

    train = write_tsv(tmp_path / "train.tsv", [("a", "0"), ("b", "1")])
    task = task_for(train, ("task_options.threshold", 0.3))
    config = SimpleNamespace(problem_type="regression", id2label={0: "score"})
    with pytest.raises(AdaptError, match=r"^task_options.threshold applies to multi-label classification only, and "
                                         r"this run is regression \(the model's config.problem_type\); remove it$"):
        task.restore_from_model(SimpleNamespace(config=config))
    saved = task_for(train, ("task_options.tune_threshold", True))
    saved.restore_from_model(SimpleNamespace(config=SimpleNamespace(
        problem_type="multi_label_classification", id2label={0: "joy", 1: "anger"}, threshold=0.4)))
    assert saved.threshold == 0.4 and not saved.tuning_threshold  # a saved model's threshold, never re-tuned


# ---- loss, a tiny run, the saved folder ------------------------------------------------------------------
def emotion_rows(n: int = 48) -> list[tuple[str, str]]:
    """Texts whose labels follow their words: 'happy' -> joy, 'mad' -> anger, 'afraid' -> fear (some none)."""
    cues = {"happy": "joy", "mad": "anger", "afraid": "fear"}
    fillers = ["today", "at work", "again", "so much", "really", "now"]
    rows = []
    for i in range(n):
        words = [w for k, w in enumerate(cues) if (i >> k) & 1]
        labels = [NAMES.index(cues[w]) for w in words]
        rows.append((" ".join(words + [fillers[i % len(fillers)]]), ",".join(map(str, labels)) or "[]"))
    return rows


def test_multi_label_loss_is_transformers_bce_mean_over_examples_and_labels(tiny_bert, tmp_path):
    path = write_tsv(tmp_path / "t.tsv", emotion_rows(8))
    task = task_for(path, ("data.columns.label", "labels"), ("data.label_names", NAMES))
    task.load_tokenizer(str(tiny_bert))
    raw = task.read_source(str(path), "train")
    task.setup({"train": raw})
    model = task.build_model(str(tiny_bert))
    assert model.config.problem_type == "multi_label_classification" and model.config.threshold == 0.5
    batch = task.collate(task.featurize(raw, "train")[:8])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (8, 3)
    assert batch["labels"][3].tolist() == [1.0, 1.0, 0.0] and batch["labels"][0].tolist() == [0.0, 0.0, 0.0]
    summed, targets = task.loss(model, batch)
    assert int(targets) == 24 == task.count_targets(batch)
    reference = model(**{k: v for k, v in batch.items() if k != "length"}).loss  # BCEWithLogitsLoss(), mean
    assert float(summed.detach() / targets) == pytest.approx(float(reference.detach()), rel=1e-5)


@pytest.fixture(scope="module")
def multilabel_run(tiny_bert, tmp_path_factory):
    from adapt.train import finetune

    root = tmp_path_factory.mktemp("multilabel")
    train = write_tsv(root / "emotions.tsv", emotion_rows())
    test = write_tsv(root / "test.tsv", emotion_rows(16))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPT_CACHE", str(root / "cache"))
        final = finetune(resolve_recipe("sentiment", [
            ("model", str(tiny_bert)), ("data.train", str(train)), ("data.test", str(test)),
            ("output_dir", str(root / "run")), ("tracking", []), ("train.batch_size", 8), ("train.max_steps", 8),
            ("train.eval_steps", 4), ("train.lr", 1e-3), ("train.seed", 3), ("data.columns.label", "labels"),
            ("data.label_names", NAMES), ("task_options.tune_threshold", True)]))
    return root / "run", final, test


def test_a_multi_label_run_saves_problem_type_and_the_tuned_threshold(multilabel_run):
    run, final, _ = multilabel_run
    config = json.loads((run / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "joy", "1": "anger", "2": "fear"}
    assert config["threshold"] == final["validation"]["threshold"] == final["test"]["threshold"]
    assert set(final["validation"]) >= {"f1_micro", "f1_macro", "subset_accuracy", "f1_per_class"}
    rows = [json.loads(line) for line in (run / "predictions_validation.jsonl").read_text().splitlines()]
    threshold = config["threshold"]
    for row in rows:
        assert row["prediction"] == [n for n in NAMES if row["scores"][n] >= threshold]


def test_pipeline_applies_sigmoid_to_the_saved_multi_label_folder(multilabel_run):
    from transformers import pipeline

    run, _, _ = multilabel_run
    rows = [json.loads(line) for line in (run / "predictions_validation.jsonl").read_text().splitlines()]
    scorer = pipeline("text-classification", model=str(run), top_k=None)  # config.problem_type -> sigmoid
    for row, scored in zip(rows, scorer([r["text"] for r in rows])):
        assert {s["label"]: s["score"] for s in scored} == pytest.approx(row["scores"], abs=1e-4)


def test_eval_of_the_saved_folder_uses_the_saved_threshold(multilabel_run):
    run, final, test = multilabel_run
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--data", str(test), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["scores"]["model"]
    assert metrics["threshold"] == final["test"]["threshold"]
    assert metrics["f1_micro"] == pytest.approx(final["test"]["f1_micro"], abs=1e-6)
    predicted = CliRunner().invoke(app, ["predict", "--model", str(run), "happy mad now"])
    assert predicted.exit_code == 0, predicted.output
    record = json.loads(predicted.stdout.splitlines()[0])
    assert record["labels"] == [n for n, p in zip(NAMES, record["probs"]) if p >= final["test"]["threshold"]]


def test_finetune_cli_refuses_an_out_of_range_id_with_exit_2_and_writes_nothing(tiny_bert, tmp_path):
    train = write_tsv(tmp_path / "t.tsv", [("a", "0,1"), ("b", "2"), ("c", "0,7")])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["finetune", "--model", str(tiny_bert), "--data", str(train), "--output-dir",
                                      str(out), "--max-steps", "2", "tracking=[]", "data.columns.label=labels",
                                      "data.label_names=[joy,anger,fear]"])
    assert result.exit_code == 2, result.output
    assert f"{train}: line 4: the label ('labels') holds label id 7, outside data.label_names (0..2)" in result.stderr
    assert "Traceback" not in result.output and not out.exists()


def test_a_fresh_multi_label_head_starts_at_the_train_label_rates(tiny_bert, tmp_path):
    path = write_tsv(tmp_path / "t.tsv", [("a", "0"), ("b", "0,1"), ("c", "0"), ("d", "2")])
    task = task_for(path, ("data.columns.label", "labels"), ("data.label_names", NAMES))
    task.load_tokenizer(str(tiny_bert))
    task.setup({"train": task.read_source(str(path), "train")})
    model = task.build_model(str(tiny_bert))
    # rates 3/4, 1/4, 1/4 -> log-odds log 3, -log 3, -log 3: sigmoid(bias) reproduces the rates
    assert model.classifier.bias.tolist() == pytest.approx([np.log(3), -np.log(3), -np.log(3)], abs=1e-6)
    assert torch.sigmoid(model.classifier.bias).tolist() == pytest.approx([0.75, 0.25, 0.25], abs=1e-6)
