"""Regression on `task: classification` (task_options.problem_type=regression, or auto from a column of
continuous numbers): metrics, target parsing, header-less tab-separated files (STS-B), the MSE loss, a tiny run
whose saved folder `pipeline()` scores as a regression, `adapt eval`/`adapt predict`, and LoRA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapt import data
from adapt.cli import app
from adapt.errors import AdaptError
from adapt.metrics import regression_scores
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task

WORDS = ["good", "bad", "cat", "dog", "sun", "rain", "red", "blue"]


def score_rows(n: int = 48) -> list[dict]:
    """Sentences of 3 words whose score counts 'good'/'sun' (1.7 each) plus a fraction: learnable, continuous."""
    rows = []
    for i in range(n):
        words = [WORDS[(i * k + k) % len(WORDS)] for k in (1, 3, 5)]
        score = sum(w in ("good", "sun") for w in words) * 1.7 + (i % 7) / 10
        rows.append({"text": " ".join(words), "score": round(score, 2)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def task_for(train: Path, *overrides):
    return get_task(resolve_recipe("sentiment", [("data.train", str(train)), ("tracking", []),
                                                 ("data.label_names", None), *overrides]))


def refused(train: Path, *overrides) -> str:
    with pytest.raises(AdaptError) as err:
        task_for(train, *overrides).read_source(str(train), "train")
    return str(err.value)


# ---- metrics ------------------------------------------------------------------------------------------
def test_regression_scores_on_hand_checked_cases():
    # x=[1,2,3], y=[1,3,2]: deviations (-1,0,1) and (-1,1,0): r = 1 / sqrt(2*2) = 0.5; ranks equal the values
    scores = regression_scores([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert scores["pearson"] == pytest.approx(0.5) and scores["spearman"] == pytest.approx(0.5)
    assert scores["mse"] == pytest.approx(2 / 3) and scores["rmse"] == pytest.approx(math.sqrt(2 / 3))
    # a tie takes the average rank: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5)
    tied = regression_scores([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert tied["spearman"] == pytest.approx(4.5 / math.sqrt(22.5))
    assert tied["mse"] == pytest.approx((0 + 0 + 1 + 1) / 4)
    # a perfect linear relation with an offset: r = rho = 1, mse = mean((x - 2x)^2) = (1+4+9+16)/4
    assert regression_scores([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(
        {"pearson": 1.0, "spearman": 1.0, "mse": 7.5, "rmse": math.sqrt(7.5)})
    # constant predictions: correlation undefined, reported 0.0 (never NaN, which would break best-checkpoint picks)
    assert regression_scores([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"] == 0.0
    with pytest.raises(AdaptError, match="2 predictions but 3 references"):
        regression_scores([1, 2], [1, 2, 3])


# ---- reading: detection, targets, bad input --------------------------------------------------------------
def test_auto_detects_continuous_scores_as_regression(tmp_path, capsys):
    train = write_jsonl(tmp_path / "s.jsonl", score_rows())
    task = task_for(train, ("data.columns.label", "score"))
    ds = task.read_source(str(train), "train")
    assert task.problem_type == "regression" and task.default_metric == "pearson"
    assert task.metric_names == ("pearson", "spearman", "mse", "rmse")
    assert ds["label"][:4] == [0.0, 0.1, 0.2, 5.4]
    # integer-valued numbers stay class ids (single-label), as before
    ints = write_jsonl(tmp_path / "i.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    single = task_for(ints)
    assert single.read_source(str(ints), "train")["label"] == ["1", "0"]
    assert single.problem_type == "single_label_classification" and single.default_metric == "accuracy"


def test_regression_refuses_non_numbers_and_empty_scores_naming_the_line(tmp_path):
    words = tmp_path / "w.csv"
    words.write_text("text,score\na,1.5\nb,high\n", encoding="utf-8")
    assert refused(words, ("data.columns.label", "score"), ("task_options.problem_type", "regression")) == (
        f"{words}: line 3: the label ('score') is 'high', not a number, and task_options.problem_type is regression; "
        "give every example a numeric score (or check data.columns.label / task_options.problem_type)")
    empty = tmp_path / "e.csv"
    empty.write_text("text,score\na,1.5\nb,\nc,2.25\n", encoding="utf-8")  # auto still decides regression
    assert refused(empty, ("data.columns.label", "score")) == (
        f"{empty}: line 3: the label ('score') is empty; a regression example needs a number as its target: give "
        "one or remove that row")
    nan = tmp_path / "n.jsonl"
    nan.write_text('{"text": "a", "score": 1.5}\n{"text": "b", "score": NaN}\n', encoding="utf-8")
    assert "line 2: the label ('score') is empty" in refused(nan, ("data.columns.label", "score"),
                                                            ("task_options.problem_type", "regression"))


def test_explicit_single_label_refuses_continuous_scores(tmp_path):
    train = write_jsonl(tmp_path / "s.jsonl", score_rows(6))
    message = refused(train, ("data.columns.label", "score"),
                      ("task_options.problem_type", "single_label_classification"))
    assert message.startswith(f"{train}: line 2: the label column 'score' holds continuous numbers (0.1 here")
    assert "set task_options.problem_type=regression (or auto)" in message


def test_metric_for_best_and_threshold_are_checked_against_the_problem_type(tmp_path):
    train = write_jsonl(tmp_path / "s.jsonl", score_rows(6))
    with pytest.raises(AdaptError, match=r"^train.metric_for_best 'accuracy' is not a metric of regression "
                                         r"\(task_options.problem_type\); use one of pearson, spearman, mse, rmse "
                                         r"\(default pearson\)$"):
        task_for(train, ("task_options.problem_type", "regression"), ("train.metric_for_best", "accuracy"))
    # auto: known only once train is read
    task = task_for(train, ("data.columns.label", "score"), ("train.metric_for_best", "f1_macro"))
    with pytest.raises(AdaptError, match=r"^train.metric_for_best 'f1_macro' is not a metric of regression "
                                         r"\(task_options.problem_type=auto, from "):
        task.read_source(str(train), "train")
    lower = task_for(train, ("task_options.problem_type", "regression"), ("train.metric_for_best", "rmse"))
    assert lower.greater_is_better is False
    with pytest.raises(AdaptError, match=r"^task_options.tune_threshold applies to multi-label classification only"):
        task_for(train, ("task_options.problem_type", "regression"), ("task_options.tune_threshold", True))
    with pytest.raises(AdaptError, match=r"^recipe task_options: bad value .* 'problem_type'"):
        task_for(train, ("task_options.problem_type", "ordinal"))


# ---- header-less tab-separated files (STS-B layout) ---------------------------------------------------------
STS_NAMES = ["genre", "file", "year", "id", "score", "sentence1", "sentence2"]


def write_sts(path: Path) -> Path:
    lines = ["main-news\tMSRpar\t2012\t0001\t4.000\tHe said \"yes\".\tHe said yes.",
             "main-news\theadlines\t2013\t0002\t1.500\tA cat sleeps.\tA dog barks.\tEurope Media Monitor\tnone",
             "main-forums\tanswers\t2015\t0003\t0.000\tIt rains.\tStocks rose 3%."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_headerless_tab_separated_csv_reads_named_fields_and_ignores_extra_ones(tmp_path):
    path = write_sts(tmp_path / "sts-train.csv")  # tab-separated despite the .csv name
    table = data.read_table(path, "\t", STS_NAMES)
    assert table.column_names == STS_NAMES and len(table) == 3
    assert table["sentence1"][0] == 'He said "yes".'  # quotes are literal (TSV is unquoted)
    assert table["sentence2"][1] == "A dog barks." and table["score"] == ["4.000", "1.500", "0.000"]
    assert [data.row_location(str(path), i) for i in range(3)] == ["line 1", "line 2", "line 3"]
    with pytest.raises(AdaptError) as err:
        data.read_table(path, None, STS_NAMES)
    assert str(err.value).startswith(f"{path}: line 1 has 1 field but data.header_names names 7 (looks "
                                     "tab-separated, not comma-separated")
    assert str(err.value).endswith("set data.delimiter); fix that line or data.header_names")
    short = tmp_path / "short.tsv"
    short.write_text("a\tb\t1.0\tx\ty\n", encoding="utf-8")
    with pytest.raises(AdaptError, match=r"short.tsv: line 1 has 5 fields but data.header_names names 7; fix that "
                                         r"line or data.header_names$"):
        data.read_table(short, None, STS_NAMES)


def test_similarity_recipe_reads_sts_layout_as_a_regression_pair_task(tmp_path):
    path = write_sts(tmp_path / "sts.csv")
    task = get_task(resolve_recipe("similarity", [("data.train", str(path)), ("tracking", [])]))
    ds = task.read_source(str(path), "train")
    assert ds.to_list()[1] == {"text": "A cat sleeps.", "text_pair": "A dog barks.", "label": 1.5}
    assert task.problem_type == "regression"


# ---- loss, a tiny run, the saved folder ------------------------------------------------------------------
def test_regression_loss_is_transformers_mse_on_float32_targets(tiny_bert, tmp_path):
    train = write_jsonl(tmp_path / "s.jsonl", score_rows(8))
    task = task_for(train, ("data.columns.label", "score"), ("model", str(tiny_bert)))
    task.load_tokenizer(str(tiny_bert))
    raw = task.read_source(str(train), "train")
    task.setup({"train": raw})
    model = task.build_model(str(tiny_bert))
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    batch = task.collate(task.featurize(raw, "train")[:8])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (8,)
    summed, targets = task.loss(model, batch)
    assert int(targets) == 8 == task.count_targets(batch)
    reference = model(**{k: v for k, v in batch.items() if k != "length"}).loss  # transformers' MSELoss (mean)
    assert float(summed.detach() / targets) == pytest.approx(float(reference), rel=1e-5)


TINY = (("tracking", []), ("train.batch_size", 8), ("train.max_steps", 8), ("train.lr", 1e-3),
        ("train.seed", 3), ("data.label_names", None), ("data.columns.label", "score"))


@pytest.fixture(scope="module")
def regression_run(tiny_bert, tmp_path_factory):
    from adapt.train import finetune

    root = tmp_path_factory.mktemp("regression")
    train = write_jsonl(root / "scores.jsonl", score_rows())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPT_CACHE", str(root / "cache"))
        final = finetune(resolve_recipe("sentiment", [("model", str(tiny_bert)), ("data.train", str(train)),
                                                      ("output_dir", str(root / "run")), *TINY]))
    return root / "run", final


def test_a_regression_run_saves_a_folder_pipeline_scores_as_regression(regression_run):
    from transformers import pipeline

    run, final = regression_run
    config = json.loads((run / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "score"}
    assert set(final["validation"]) >= {"pearson", "spearman", "mse", "rmse"} and "best_pearson" in final
    rows = [json.loads(line) for line in (run / "predictions_validation.jsonl").read_text().splitlines()]
    scorer = pipeline("text-classification", model=str(run), function_to_apply="none")
    scored = scorer([r["text"] for r in rows])
    assert [s["label"] for s in scored] == ["score"] * len(rows)
    assert [s["score"] for s in scored] == pytest.approx([r["prediction"] for r in rows], abs=1e-4)
    mse = sum((r["prediction"] - r["label"]) ** 2 for r in rows) / len(rows)
    assert final["validation"]["mse"] == pytest.approx(mse, rel=1e-5)


def test_eval_and_predict_of_the_saved_regression_folder(regression_run, tmp_path):
    run, final = regression_run
    rows = [json.loads(line) for line in (run / "predictions_validation.jsonl").read_text().splitlines()]
    gold = write_jsonl(tmp_path / "val.jsonl", [{"text": r["text"], "score": r["label"]} for r in rows])
    result = CliRunner().invoke(app, ["eval", "--model", str(run), "--data", str(gold), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["scores"]["model"]
    assert metrics["pearson"] == pytest.approx(final["validation"]["pearson"], abs=1e-5)
    predicted = CliRunner().invoke(app, ["predict", "--model", str(run), rows[0]["text"]])
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout.splitlines()[0])["score"] == pytest.approx(rows[0]["prediction"], abs=1e-4)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "score": "n/a"}])
    refused = CliRunner().invoke(app, ["eval", "--model", str(run), "--data", str(bad)])
    assert refused.exit_code == 2 and "line 1: the label ('score') is 'n/a', not a number" in refused.output


def test_finetune_cli_refuses_a_non_number_score_with_exit_2_and_writes_nothing(tiny_bert, tmp_path):
    train = tmp_path / "t.csv"
    train.write_text("text,score\na,1.5\nb,2.5\nc,x\n", encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["finetune", "--model", str(tiny_bert), "--data", str(train), "--output-dir",
                                      str(out), "--max-steps", "2", "tracking=[]", "data.label_names=null",
                                      "data.columns.label=score", "task_options.problem_type=regression"])
    assert result.exit_code == 2, result.output
    assert f"{train}: line 4: the label ('score') is 'x', not a number" in result.stderr
    assert "Traceback" not in result.output and not out.exists()


def test_a_lora_regression_run_keeps_the_head_trainable_and_reloads(tiny_bert, tmp_path):
    from adapt.runner import load_trained
    from adapt.train import finetune

    train = write_jsonl(tmp_path / "scores.jsonl", score_rows())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
        final = finetune(resolve_recipe("sentiment", [
            ("model", str(tiny_bert)), ("data.train", str(train)), ("output_dir", str(tmp_path / "run")), *TINY,
            ("peft", {"method": "lora", "r": 4, "target_modules": ["query", "value"]})]))
    run = tmp_path / "run"
    assert (run / "adapter_model.safetensors").exists() and not (run / "model.safetensors").exists()
    from safetensors import safe_open

    with safe_open(str(run / "adapter_model.safetensors"), "pt") as weights:
        assert any("classifier" in key for key in weights.keys())  # peft SEQ_CLS saves the trained head
    task, model = load_trained(str(run))
    assert task.problem_type == "regression" and model.config.num_labels == 1
    rows = [json.loads(line) for line in (run / "predictions_validation.jsonl").read_text().splitlines()]
    from adapt.runner import predict_stream

    again = list(predict_stream(task, model, [r["text"] for r in rows]))
    assert [p["score"] for p in again] == pytest.approx([r["prediction"] for r in rows], abs=1e-4)
    assert final["validation"]["pearson"] == pytest.approx(
        regression_scores([p["score"] for p in again], [r["label"] for r in rows])["pearson"], abs=1e-4)
