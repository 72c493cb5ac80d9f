"""The training loop end to end on a tiny BERT: artefacts, determinism, evaluation schedule, best-checkpoint
selection, exact gradient accumulation, and that the output loads in a plain transformers pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_tiny_finetune
from safetensors.torch import load_file

import adapt.train
from adapt.recipe import resolve_recipe
from adapt.tasks import get_task

TIMING_KEYS = {"train_seconds", "train_samples_per_s", "train_tokens_per_s", "data_seconds", "wall_seconds",
               "samples_per_s", "tokens_per_s"}


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def test_run_writes_a_standard_checkpoint_and_its_records(tiny_run):
    run_dir, final = tiny_run
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "metrics.json",
                 "recipe.yaml", "train_log.jsonl", "loss_curve.png", "README.md", "predictions_validation.jsonl"):
        assert (run_dir / name).is_file(), name
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")], "temporary files left behind"

    config = json.loads((run_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert config["architectures"] == ["BertForSequenceClassification"]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(final))
    # 40 examples -> 36 train / 4 validation; batches of 8 -> 5 micro-batches per epoch (8,8,8,8,4), so
    # 6 steps see 8*4 + 4 + 8 examples.
    assert metrics["validation"]["examples"] == 4
    assert metrics["train_steps"] == 6 and metrics["train_samples"] == 44
    assert metrics["processes"] == 1 and metrics["stopped_early"] is False
    assert 0.0 <= metrics["validation"]["accuracy"] <= 1.0

    predictions = [json.loads(line) for line in (run_dir / "predictions_validation.jsonl").read_text().splitlines()]
    assert len(predictions) == 4
    assert all(set(p) == {"text", "label", "prediction", "score"} for p in predictions)
    assert all(p["prediction"] in ("negative", "positive") for p in predictions)

    assert (run_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_log_has_train_and_eval_records_at_the_configured_steps(tiny_run):
    run_dir, _ = tiny_run
    log = read_log(run_dir)
    train = [r for r in log if r["kind"] == "train"]
    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6]  # log_steps=2
    assert [r["step"] for r in evals] == [2, 4, 6]  # eval_steps=2 (the last step is always evaluated)
    assert [r["epoch"] for r in train] == [0.4, 0.8, 1.2]
    assert all(0 < r["loss"] < 5 and r["lr"] >= 0 for r in train)
    assert train[-1]["lr"] == 0.0  # linear decay reaches zero at max_steps
    assert all(r["examples"] == 4 and 0 <= r["accuracy"] <= 1 for r in evals)


def test_model_card_names_data_hyperparameters_and_metrics(tiny_run, sentiment_csv_shared):
    run_dir, final = tiny_run
    card = (run_dir / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    assert f"- train: `{sentiment_csv_shared}`" in card
    assert "10% carved from train (seed 7)" in card
    assert "examples: train: 36, validation: 4" in card
    assert "| learning rate | 0.001 |" in card and "| max_steps | 6 |" in card and "| seed | 7 |" in card
    assert f"| validation accuracy | {final['validation']['accuracy']:.4f} |" in card


def test_best_checkpoint_is_the_final_model(tiny_run):
    run_dir, final = tiny_run
    evals = [r for r in read_log(run_dir) if r["kind"] == "eval"]
    best = max(evals, key=lambda r: r["accuracy"])  # first maximum: later ties do not replace it
    assert final["best_step"] == best["step"] and final["best_accuracy"] == best["accuracy"]
    # the final evaluation is of the restored best weights, so it reproduces that step's evaluation
    assert final["validation"]["accuracy"] == best["accuracy"]
    saved, best_weights = load_file(run_dir / "model.safetensors"), load_file(run_dir / "checkpoints/best/model.safetensors")
    assert set(best_weights) == set(saved)
    assert all(torch.equal(saved[k], best_weights[k]) for k in best_weights)


def test_best_checkpoint_replaces_later_weights(tiny_bert, sentiment_csv, tmp_path):
    # a metric that never improves after the first evaluation pins the best step to the first one (3),
    # so the saved model must be step 3's weights, not step 6's
    final = run_tiny_finetune(tiny_bert, sentiment_csv, tmp_path / "run", tmp_path / "cache",
                              [("train.eval_steps", 3), ("train.metric_for_best", "examples")])
    run_dir = tmp_path / "run"
    assert [r["step"] for r in read_log(run_dir) if r["kind"] == "eval"] == [3, 6]
    assert final["best_step"] == 3 and final["best_examples"] == 4
    saved = load_file(run_dir / "model.safetensors")
    best = load_file(run_dir / "checkpoints/best/model.safetensors")
    last = load_file(run_dir / "checkpoints/step-6/model.safetensors")
    assert all(torch.equal(saved[k], best[k]) for k in best)
    assert any(not torch.equal(saved[k], last[k]) for k in last)


def test_eval_on_start_scores_the_untrained_model_as_a_baseline_only(tiny_bert, sentiment_csv, tmp_path):
    # with a metric that never changes, the first evaluation would be the best; step 0 must not count
    final = run_tiny_finetune(tiny_bert, sentiment_csv, tmp_path / "run", tmp_path / "cache",
                              [("train.eval_on_start", True), ("train.metric_for_best", "examples")])
    evals = [r for r in read_log(tmp_path / "run") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4, 6]
    assert final["initial_validation"] == {k: v for k, v in evals[0].items() if k not in ("kind", "step")}
    assert final["best_step"] == 2
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["initial_validation"]["examples"] == 4


def test_same_seed_gives_identical_runs(tiny_run, tiny_bert, sentiment_csv_shared, tmp_path):
    first_dir, first = tiny_run
    second = run_tiny_finetune(tiny_bert, sentiment_csv_shared, tmp_path / "again", tmp_path / "cache")
    assert without_timings(second) == without_timings(first)
    assert [without_timings(r) for r in read_log(tmp_path / "again")] == [without_timings(r) for r in read_log(first_dir)]
    assert (tmp_path / "again/model.safetensors").read_bytes() == (first_dir / "model.safetensors").read_bytes()


def test_output_loads_in_a_plain_transformers_pipeline(tiny_run):
    from transformers import pipeline

    run_dir, _ = tiny_run
    classify = pipeline("text-classification", model=str(run_dir), device="cpu")
    results = classify(["a wonderful and moving story", "a dull and tedious story"])
    assert [r["label"] in ("negative", "positive") for r in results] == [True, True]
    assert all(0.5 <= r["score"] <= 1.0 for r in results)


# ---- gradient accumulation ------------------------------------------------------------------------
def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulated_micro_batches_of_unequal_length_equal_one_big_batch(tiny_bert, sentiment_csv, adapt_cache):
    recipe = resolve_recipe("sentiment", [("model", str(tiny_bert)), ("data.train", str(sentiment_csv)),
                                          ("tracking", []), ("train.mixed_precision", "no")])
    task = get_task(recipe)
    task.load_tokenizer(str(tiny_bert))
    raw = task.load_splits()
    features = task.featurize(raw["train"], "train")
    model = task.build_model(str(tiny_bert)).float().eval()  # eval(): no dropout, so passes are comparable

    by_length = sorted(range(len(features)), key=lambda i: features[i]["length"])
    # micro-batches of 1, 3, 5 and 7 examples from short to long: different sizes and padded widths
    micro_indices = [by_length[0:1], by_length[8:11], by_length[18:23], by_length[29:36]]
    micro = [task.collate(features[idx]) for idx in micro_indices]
    assert len({b["input_ids"].shape[1] for b in micro}) == 4
    big = task.collate(features[[i for idx in micro_indices for i in idx]])

    loss_sum, targets = task.loss(model, big)
    assert int(targets) == task.count_targets(big) == 16
    (loss_sum / targets).backward()
    expected = gradients(model)
    model.zero_grad(set_to_none=True)

    # the loop's normalisation: every micro-batch's summed loss over the target count of the whole window
    window_targets = sum(task.count_targets(b) for b in micro)
    for b in micro:
        summed, _ = task.loss(model, b)
        (summed * (1 / window_targets)).backward()
    accumulated = gradients(model)
    model.zero_grad(set_to_none=True)

    assert set(accumulated) == set(expected)
    for name in expected:
        torch.testing.assert_close(accumulated[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)

    # averaging per-micro-batch means (the common mistake) is measurably different, so the check has teeth
    for b in micro:
        summed, count = task.loss(model, b)
        (summed / count / len(micro)).backward()
    naive = gradients(model)
    assert max((naive[n] - expected[n]).abs().max().item() for n in expected) > 1e-4


class GradientRecorder(torch.optim.Optimizer):
    """An optimizer that records the gradients it is given and leaves the weights alone."""

    def __init__(self, named_parameters):
        named = list(named_parameters)
        super().__init__([p for _, p in named], {"lr": 1e-3, "weight_decay": 0.0})
        self.names = [n for n, _ in named]
        self.steps: list[dict[str, torch.Tensor]] = []

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        self.steps.append({n: p.grad.detach().clone() for n, p in zip(self.names, params) if p.grad is not None})


def test_training_loop_accumulation_equals_one_big_batch(tiny_bert_builder, sentiment_csv, tmp_path, monkeypatch):
    """The loop's own code path: 4 accumulated micro-batches of 2 give the gradients of one batch of 8."""
    model_dir = tiny_bert_builder(tmp_path / "no_dropout", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    recorders = []

    real_init = adapt.speed.Optimization.__init__

    def recording_optimizer(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        recorders.append(GradientRecorder(self.weights.named_parameters()))
        self.optimizer = recorders[-1]

    monkeypatch.setattr(adapt.speed.Optimization, "__init__", recording_optimizer)
    # the recorder reads `.grad`: the unfused update, which puts the used embedding rows' gradient there too
    monkeypatch.setattr(adapt.speed.fused_adamw, "available", lambda device: False)
    # group_by_length off: both runs then draw the same examples in the same order for each step
    common = [("train.max_steps", 2), ("train.eval_steps", None), ("train.save_steps", None), ("train.log_steps", 1),
              ("train.group_by_length", False), ("train.mixed_precision", "no"), ("train.max_grad_norm", None)]
    for name, batch_size, accum in (("big", 8, 1), ("accumulated", 2, 4)):
        run_tiny_finetune(model_dir, sentiment_csv, tmp_path / name, tmp_path / "cache",
                          [*common, ("train.batch_size", batch_size), ("train.grad_accum", accum)])
    big, accumulated = recorders
    assert len(big.steps) == len(accumulated.steps) == 2
    for step_big, step_accumulated in zip(big.steps, accumulated.steps):
        assert set(step_big) == set(step_accumulated)
        for name in step_big:
            torch.testing.assert_close(step_accumulated[name], step_big[name], atol=1e-5, rtol=1e-4, msg=name)
    losses = [[r["loss"] for r in read_log(tmp_path / name) if r["kind"] == "train"] for name in ("big", "accumulated")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
