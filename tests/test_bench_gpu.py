"""The GPU check's bench (benchmarks/bench_gpu.py) on CPU: its call counting restores what it wraps, its
padding-free probe names the attention path taken and matches transformers' sdpa forward, its defaults and
its dry-run data cut are as documented. (benchmarks/gpu_check.sh runs it on a GPU machine.)"""

from __future__ import annotations

import sys
import types
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_gpu  # noqa: E402
from conftest import sentiment_rows  # noqa: E402


def test_counting_calls_counts_fallbacks_and_restores_functions_and_inherited_methods():
    class Base:
        @classmethod
        def apply(cls, x):
            return x + 1

    class Kernel(Base):
        pass

    module = types.SimpleNamespace(kernel=lambda x: None if x < 0 else 2 * x)
    original_kernel = module.kernel
    calls = Counter()
    with bench_gpu.counting_calls(calls, [(module, "kernel", "k"), (Kernel, "apply", "a"), (None, "apply", "absent"),
                                          (module, "missing", "m")]):
        assert module.kernel(3) == 6 and module.kernel(-1) is None and Kernel.apply(1) == 2
    assert calls == Counter({"k": 1, "k -> None": 1, "a": 1})
    assert module.kernel is original_kernel
    assert "apply" not in vars(Kernel) and Kernel.apply(1) == 2  # the inherited classmethod is uncovered again


def test_padding_free_probe_names_the_path_and_matches_sdpa_on_cpu(tiny_bert):
    from adapt.speed import native

    texts = [text for text, _ in sentiment_rows()]
    probe = bench_gpu.padding_free_probe(tiny_bert, texts, batch_size=8, timed_steps=1)
    assert probe["device"] == "cpu" and probe["dtype"] == "float32" and probe["batch"][0] == 8
    assert probe["installed"] is True and probe["unsupported"] is None
    # the tiny BERT has 2 layers, each one attention call, all on the packed CPU path
    path = "native CPU kernel" if native.library() is not None else "padded sdpa"
    assert probe["paths"] == {"evaluation forward + backward": {path: 2}, "training step": {path: 2}}
    fast = probe["parity"]["padding_free_vs_fp32_sdpa"]
    assert fast["logits_max_abs"] < 1e-5 and fast["grads_rel_l2"] < 1e-5 and probe["parity"]["ok"] is True
    assert probe["parity"]["sdpa_same_dtype_vs_fp32_sdpa"] == {"logits_max_abs": 0.0, "grads_rel_l2": 0.0}
    assert set(probe["step_ms"]) == {"transformers sdpa", "padding-free"} and min(probe["step_ms"].values()) > 0


def test_defaults_and_the_dry_run_cut(tmp_path):
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text("sentence\tlabel\n" + "".join(f"s{i} \t{i % 2}\n" for i in range(100)))
    gpu = bench_gpu.parse_args(["--data", str(tmp_path), "--out", "x.json"])
    assert (gpu.examples, gpu.batch_sizes, gpu.rounds, gpu.matmul_size) == (32000, [32, 128], 2, None)
    dry = bench_gpu.parse_args(["--data", str(tmp_path), "--out", "x.json", "--dry"])
    assert (dry.examples, dry.batch_sizes, dry.rounds, dry.matmul_size) == (64, [16], 1, 256)
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--data", str(tmp_path / "missing"), "--out", "x.json"])
    cut = bench_gpu.dev_subset(tmp_path, tmp_path / "cut", sentences=5)
    assert (cut / "dev.tsv").read_text() == "sentence\tlabel\n" + "".join(f"s{i} \t{i % 2}\n" for i in range(5))
    assert (cut / "train.tsv").read_text() == (tmp_path / "train.tsv").read_text()
