"""The benchmark harness parses its modes, summarises paired rounds and counts FLOPs as documented (no runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_sst2  # noqa: E402
import mfu  # noqa: E402


@pytest.fixture
def sst2_dir(tmp_path: Path) -> Path:
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text("sentence\tlabel\ngood film \t1\nbad film \t0\n")
    return tmp_path


def test_modes_pick_their_defaults(sst2_dir):
    speed = bench_sst2.parse_args(["--data", str(sst2_dir)])
    assert (speed.examples, speed.rounds, speed.configs) == (2000, 3, ["padded", "dynamic", "grouped", "bf16"])
    accuracy = bench_sst2.parse_args(["--data", str(sst2_dir), "--accuracy-seeds", "3"])
    assert (accuracy.examples, accuracy.configs) == (8000, ["bf16"])
    with pytest.raises(SystemExit):
        bench_sst2.parse_args(["--data", str(sst2_dir / "missing")])
    with pytest.raises(SystemExit):
        bench_sst2.parse_args(["--data", str(sst2_dir), "--accuracy-seeds", "2", "--cache-check"])


def test_summary_pairs_rounds_into_ratios():
    def run(system, rnd, samples):
        return {"system": system, "round": rnd, "train_samples_per_s": samples, "train_tokens_per_s": samples * 10,
                "wall_seconds": 100.0, "peak_rss_mb": 1000.0, "cuda_peak_mb": None, "dev_accuracy": 0.8, "mfu": 0.1}

    runs = [run("adapt", 0, 20.0), run("adapt", 1, 30.0), run("trainer-dynamic", 0, 10.0), run("trainer-dynamic", 1, 10.0)]
    summary = bench_sst2.summarise(runs, ["adapt", "trainer-dynamic"])
    assert summary["medians"]["adapt"]["train_samples_per_s"] == 25.0
    assert "cuda_peak_mb" not in summary["medians"]["adapt"]
    assert summary["ratios"]["trainer-dynamic"]["train_samples_per_s"] == {"min": 2.0, "median": 2.5, "max": 3.0}
    assert "dev_accuracy" not in summary["ratios"]["trainer-dynamic"]


def test_flops_formula_matches_the_documented_count():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=2)
    counts = mfu.classifier_flop_counts(BertForSequenceClassification(config))
    layer = 4 * (16 * 16 + 16) + 2 * 16 + (16 * 32 + 32) + (32 * 16 + 16) + 2 * 16  # attention, FFN, 2 LayerNorms
    assert counts == {"layer_params": 2 * layer, "head_params": 16 * 16 + 16 + 16 * 2 + 2,
                      "num_layers": 2, "hidden_size": 16}
    assert mfu.training_flops([3, 5], counts) == sum(
        6 * 2 * layer * t + 12 * 2 * 16 * t * t + 6 * counts["head_params"] for t in (3, 5))
