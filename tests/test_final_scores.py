"""A run's final scores are those of the model it saves, computed once: the evaluation at the last step scores
the weights as saved (fp32 masters, no autocast), and only a best checkpoint scored during training in bf16 is
scored again. Checked by counting the loop's evaluations and by reloading the saved run."""

from __future__ import annotations

import json

import pytest
from conftest import run_tiny_finetune

import adapt.train


@pytest.fixture
def evaluations(monkeypatch) -> list[bool]:
    """The `autocast` flag of every adapt.train.evaluate call the run makes, in order."""
    calls = []
    real = adapt.train.evaluate

    def counted(*args, autocast: bool = True, **kwargs):
        calls.append(autocast)
        return real(*args, autocast=autocast, **kwargs)

    monkeypatch.setattr(adapt.train, "evaluate", counted)
    return calls


def reloaded_scores(run_dir) -> tuple[list[dict], list[dict]]:
    """(the run's predictions_validation.jsonl rows, `adapt predict`'s predictions for their texts)."""
    from adapt.runner import load_trained, predict_stream

    rows = [json.loads(line) for line in (run_dir / "predictions_validation.jsonl").read_text().splitlines()]
    task, model = load_trained(str(run_dir))
    return rows, list(predict_stream(task, model, [r["text"] for r in rows]))


def eval_records(run_dir) -> list[dict]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "eval"]


def test_bf16_master_run_scores_its_saved_model_once(tiny_bert, sentiment_csv, tmp_path, evaluations):
    # one evaluation, at the last step: it is the best, and it already scored the fp32 weights that are saved
    final = run_tiny_finetune(tiny_bert, sentiment_csv, tmp_path / "run", tmp_path / "cache",
                              [("train.eval_steps", None), ("train.mixed_precision", "bf16-master")])
    assert final["mixed_precision"] == "bf16-master"
    assert evaluations == [False]
    (record,) = eval_records(tmp_path / "run")
    assert record["step"] == final["best_step"] == 6
    assert {k: v for k, v in record.items() if k not in ("kind", "step")} == adapt.train.outputs.scalar_metrics(final["validation"])
    rows, predicted = reloaded_scores(tmp_path / "run")
    assert [p["label"] for p in predicted] == [r["prediction"] for r in rows]
    assert [p["score"] for p in predicted] == pytest.approx([r["score"] for r in rows], abs=1e-6)


def test_bf16_best_from_an_earlier_step_is_scored_again_as_saved(tiny_bert, sentiment_csv, tmp_path, evaluations):
    # a metric that never improves pins the best to step 2, scored in bf16 then; the final scores come from
    # one more evaluation of the restored fp32 best weights
    final = run_tiny_finetune(tiny_bert, sentiment_csv, tmp_path / "run", tmp_path / "cache",
                              [("train.metric_for_best", "examples"), ("train.mixed_precision", "bf16-master")])
    assert final["best_step"] == 2
    assert evaluations == [True, True, False, False]  # steps 2 and 4 in bf16, step 6 as saved, the best again
    rows, predicted = reloaded_scores(tmp_path / "run")
    assert [p["score"] for p in predicted] == pytest.approx([r["score"] for r in rows], abs=1e-6)
    assert final["validation"]["accuracy"] == sum(r["label"] == r["prediction"] for r in rows) / len(rows)


def test_fp32_run_reuses_the_best_evaluation(tiny_bert, sentiment_csv, tmp_path, evaluations):
    # in fp32 every evaluation scores the model as saved: the best one's scores are the final ones
    final = run_tiny_finetune(tiny_bert, sentiment_csv, tmp_path / "run", tmp_path / "cache",
                              [("train.metric_for_best", "examples"), ("train.mixed_precision", "no")])
    assert final["best_step"] == 2 and final["mixed_precision"] == "no"
    assert evaluations == [True, True, False]
    best = eval_records(tmp_path / "run")[0]
    assert {k: v for k, v in best.items() if k not in ("kind", "step")} == adapt.train.outputs.scalar_metrics(final["validation"])
    rows, predicted = reloaded_scores(tmp_path / "run")
    assert [p["score"] for p in predicted] == pytest.approx([r["score"] for r in rows], abs=1e-6)
