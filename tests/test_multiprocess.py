"""Data-parallel training for real: two CPU processes (gloo) against one process with the same global
batch; evaluation counts every validation example exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from distributed_helpers import JOB_TIMEOUT


def _finetune(model: Path, data: Path, out: Path, cache: Path, *extra: str) -> dict:
    command = [sys.executable, "-m", "adapt", "finetune", "--model", str(model), "--data", str(data),
               "--max-steps", "6", "--output-dir", str(out), "--seed", "3", "tracking=[]",
               "train.mixed_precision=no", "train.lr=1e-3", *extra]
    env = {**os.environ, "ADAPT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_processes_match_one_with_the_same_global_batch(tiny_bert_builder, sentiment_csv, tmp_path):
    # no dropout: the only difference left between the runs is how the global batch is split
    model = tiny_bert_builder(tmp_path / "model", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cache = tmp_path / "cache"
    one = _finetune(model, sentiment_csv, tmp_path / "one", cache, "--batch-size", "8")
    two = _finetune(model, sentiment_csv, tmp_path / "two", cache, "--batch-size", "4", "--num-processes", "2")

    assert (one["processes"], two["processes"]) == (1, 2)
    # 40 examples, 10% validation: every one of the 4 is scored once, none twice, in both runs
    assert one["validation"]["examples"] == two["validation"]["examples"] == 4
    predictions = [json.loads(line) for line in (tmp_path / "two" / "predictions_validation.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and len({p["text"] for p in predictions}) == 4
    assert two["train_samples"] == one["train_samples"]  # the same examples, split over the processes
    assert abs(one["validation"]["accuracy"] - two["validation"]["accuracy"]) < 1e-9
    train_losses = [[r["loss"] for r in map(json.loads, (tmp_path / run / "train_log.jsonl").read_text().splitlines())
                     if r["kind"] == "train"] for run in ("one", "two")]
    assert len(train_losses[0]) == len(train_losses[1]) > 0
    for a, b in zip(*train_losses):
        assert abs(a - b) < 1e-4, train_losses
