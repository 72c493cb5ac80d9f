"""`adapt runs` listing, the run plots, and `adapt estimate` on a tiny random model."""

from __future__ import annotations

import json

import pytest
import yaml

from adapt.errors import AdaptError
from adapt.plots import write_run_plots
from adapt.runs import list_runs


def _fake_run(folder, name="sst2-small", metrics=None):
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump({"name": name, "task": "classification", "model": "embedded:minilm"}))
    metrics = metrics or {"best_step": 40, "best_accuracy": 0.85, "validation": {"accuracy": 0.86, "examples": 4},
                          "train_steps": 50, "wall_seconds": 125.4}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_lists_runs_and_skips_non_runs(tmp_path):
    _fake_run(tmp_path / "a")
    _fake_run(tmp_path / "a" / "checkpoints" / "step-10")  # inside a run's checkpoints: never listed
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "metrics.json").write_text("{}")
    runs = list_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert (run["name"], run["task"], run["model"], run["steps"]) == ("sst2-small", "classification", "embedded:minilm", 50)
    assert (run["metric"], run["value"], run["wall_seconds"]) == ("accuracy", 0.86, 125.4)
    assert run["date"][:2] == "20"


def test_missing_runs_dir_is_a_user_error(tmp_path):
    with pytest.raises(AdaptError, match="does not exist"):
        list_runs(tmp_path / "nope")


def test_run_plots(tmp_path):
    classification = _fake_run(tmp_path / "cls")
    rows = [{"text": "x", "label": g, "prediction": p} for g, p in [("pos", "pos"), ("neg", "pos"), ("neg", "neg")]]
    (classification / "predictions_validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.name for p in write_run_plots(classification)] == ["confusion_matrix.png"]

    per_type = {"PER": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10},
                "LOC": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 3}}
    ner = _fake_run(tmp_path / "ner", metrics={"best_f1": 0.7, "validation": {"f1": 0.7, "per_type": per_type}})
    rows = [{"tokens": ["Ann"], "tags": ["B-PER"], "prediction": ["B-PER"]}]  # sequences: no confusion matrix
    (ner / "predictions_validation.jsonl").write_text(json.dumps(rows[0]) + "\n")
    written = write_run_plots(ner)
    assert [p.name for p in written] == ["per_type_f1.png"] and written[0].stat().st_size > 1000


def test_estimate_counts_steps_and_flops(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from adapt import assets
    from adapt.estimate import estimate
    from adapt.recipe import resolve_recipe

    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(assets.resolve_model_path("embedded:minilm"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    lines = ["text,label"] + [f"{'good ' * (i % 5 + 1)}film {i},positive" for i in range(30)]
    lines += [f"{'bad ' * (i % 3 + 1)}film {i},negative" for i in range(30)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    recipe = resolve_recipe("sentiment", [("model", str(tmp_path / "tiny")), ("data.train", str(tmp_path / "train.csv")),
                                          ("train.batch_size", 8), ("train.epochs", 2), ("train.grad_accum", 2),
                                          ("train.max_length", 64)])  # the tiny model has 64 positions
    report = estimate(recipe, timed_steps=1)
    # 54 train examples after the 10% validation carve -> 7 micro-batches per epoch, 14 in 2 epochs, 7 steps
    assert report["train_examples"] == 54
    assert (report["micro_batches"], report["optimizer_steps"]) == (14, 7)
    assert report["train_flops"] == 6 * report["non_embedding_params"] * report["train_tokens"]
    assert report["non_embedding_params"] < report["total_params"]
    assert report["estimated_train_seconds"] > 0 and report["timed_steps"] == 1
