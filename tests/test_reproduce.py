"""`make reproduce` (benchmarks/reproduce.py): each run's result is kept in results/runs/NAME.json and RESULTS.md
is rebuilt from every stored result, so `--only` refreshes rows one at a time; two-step benchmarks (sentiment
from the mlm row's model) pass --model and refuse to run without their first step; the pairs row reads the
local MRPC copy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import reproduce  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A data folder holding (empty) files at the paths of the sentiment, mlm and pairs benchmarks."""
    root = tmp_path / "data"
    for rel in ("sst2/train.tsv", "sst2/dev.tsv", "mrpc/train.tsv", "mrpc/dev.tsv"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x\n")
    return root


FACTS = {"CPU": "Test CPU 9000", "logical cores": 2, "GPU": "none", "CPU vector instructions (torch)": "AVX2",
         "bf16 CPU matmul (AVX512-BF16/AMX)": False}


def bench(name: str) -> reproduce.Benchmark:
    return next(b for b in reproduce.BENCHMARKS if b.name == name)


def run_main(monkeypatch, data_dir: Path, tmp_path: Path, *only: str, outcome=None) -> tuple[int, list[str]]:
    """reproduce.main() with --only `only`; each benchmark "runs" by `outcome(bench)` (default: ok with the
    benchmark's name as its accuracy's source) instead of a child process. Returns (exit code, names run)."""
    ran = []

    def fake_run(b, sources, runs_dir, out):
        ran.append(b.name)
        (runs_dir / b.name).mkdir(parents=True, exist_ok=True)
        (runs_dir / b.name / "config.json").write_text("{}")
        if outcome is not None:
            return outcome(b)
        return {"status": "ok", "wall_seconds": 60.0, "metric": "accuracy", "value": 0.5 + len(ran) / 100,
                "test_value": None, "plot": None,
                "metrics": {"train_steps": b.max_steps, "train_samples_per_s": 10.0, "validation": {}}}

    monkeypatch.setattr(reproduce, "run_benchmark", fake_run)
    monkeypatch.setattr(reproduce, "machine_facts", lambda: dict(FACTS))
    monkeypatch.setattr(sys, "argv", ["reproduce.py", "--data", str(data_dir), "--out", str(tmp_path / "results"),
                                      "--runs", str(tmp_path / "runs"), "--only", ",".join(only)])
    return reproduce.main(), ran


def row(results: Path, name: str) -> str:
    lines = [line for line in (results / "RESULTS.md").read_text().splitlines() if line.startswith(f"| {name} ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_only_refreshes_its_rows_and_keeps_the_others(monkeypatch, data_dir, tmp_path):
    results = tmp_path / "results"
    assert run_main(monkeypatch, data_dir, tmp_path, "sentiment") == (0, ["sentiment"])
    assert "accuracy 0.5100" in row(results, "sentiment")
    assert "| not run yet |" in row(results, "mlm")
    assert "not available: data file" in row(results, "ner")  # its data is not in this data folder
    stored = json.loads((results / "runs" / "sentiment.json").read_text())
    assert stored["status"] == "ok" and stored["command"].startswith("adapt finetune --recipe sentiment")

    assert run_main(monkeypatch, data_dir, tmp_path, "pairs") == (0, ["pairs"])
    assert "accuracy 0.5100" in row(results, "sentiment")  # kept from the first invocation
    assert "accuracy 0.5100" in row(results, "pairs")
    assert "- `sentiment` (run " in (results / "RESULTS.md").read_text()


def test_a_failed_run_replaces_the_row_and_fails_the_invocation(monkeypatch, data_dir, tmp_path):
    run_main(monkeypatch, data_dir, tmp_path, "sentiment")
    code, _ = run_main(monkeypatch, data_dir, tmp_path, "sentiment",
                       outcome=lambda b: {"status": "failed (exit 2): error: boom; log x"})
    assert code == 1
    assert "failed (exit 2): error: boom" in row(tmp_path / "results", "sentiment")


def test_a_row_whose_settings_changed_is_marked_stale(monkeypatch, data_dir, tmp_path):
    run_main(monkeypatch, data_dir, tmp_path, "sentiment")
    assert "settings changed" not in row(tmp_path / "results", "sentiment")
    monkeypatch.setattr(bench("sentiment"), "max_steps", 999)
    run_main(monkeypatch, data_dir, tmp_path, "pairs")
    assert "| sentiment (settings changed since: rerun this row) |" in row(tmp_path / "results", "sentiment (settings")


def test_two_step_benchmark_trains_from_the_first_steps_run(monkeypatch, data_dir, tmp_path):
    follow_up = bench("sentiment-mlm")
    names = [b.name for b in reproduce.BENCHMARKS]
    assert follow_up.model_from == "mlm" and names.index("mlm") < names.index("sentiment-mlm")
    baseline = bench("sentiment")  # the same budget, data and settings as the row it is compared with
    assert (follow_up.recipe, follow_up.max_steps, follow_up.data, follow_up.flags, follow_up.overrides) == (
        baseline.recipe, baseline.max_steps, baseline.data, baseline.flags, baseline.overrides)
    command = reproduce.finetune_command(follow_up, {}, tmp_path / "runs" / "sentiment-mlm")
    assert command[command.index("--model") + 1] == str(tmp_path / "runs" / "mlm")
    assert "--model" not in reproduce.finetune_command(baseline, {}, tmp_path / "runs" / "sentiment")

    # alone and without the first step's model it is not run, and says how to get it
    assert run_main(monkeypatch, data_dir, tmp_path, "sentiment-mlm") == (0, [])
    assert "not run yet" in row(tmp_path / "results", "sentiment-mlm")
    # when its first step fails now, it is not run on an older model left in the folder
    code, ran = run_main(monkeypatch, data_dir, tmp_path, "mlm,sentiment-mlm",
                         outcome=lambda b: {"status": "failed (exit 1): x"})
    assert (code, ran) == (1, ["mlm"])
    # both steps in one invocation: the first step's folder is there for the second
    code, ran = run_main(monkeypatch, data_dir, tmp_path, "mlm,sentiment-mlm")
    assert (code, ran) == (0, ["mlm", "sentiment-mlm"])
    assert "embedded:minilm after the mlm row" in row(tmp_path / "results", "sentiment-mlm")


def test_missing_first_step_reason(tmp_path):
    reason = reproduce.missing_first_step(bench("sentiment-mlm"), tmp_path, {})
    assert reason == (f"it starts from the mlm row's model ({tmp_path / 'mlm'}), which is not there; "
                      "run --only mlm,sentiment-mlm")
    assert reproduce.missing_first_step(bench("sentiment-mlm"), tmp_path, {"mlm": {"status": "failed (exit 1)"}}) \
        == "the mlm row it starts from failed"
    assert reproduce.missing_first_step(bench("sentiment"), tmp_path, {}) is None


def test_unreadable_stored_result_counts_as_not_run(tmp_path, capsys):
    path = reproduce.result_file(tmp_path, "sentiment")
    path.parent.mkdir(parents=True)
    path.write_text("{truncated")
    assert reproduce.stored_result(tmp_path, bench("sentiment")) is None
    assert "unreadable (JSONDecodeError); rerun --only sentiment" in capsys.readouterr().out


@pytest.mark.skipif(not (SHARED / "mrpc" / "train.tsv").exists(), reason="no shared MRPC copy")
def test_pairs_row_reads_the_local_mrpc_copy():
    from adapt.recipe import parse_overrides, resolve_recipe
    from adapt.tasks import get_task

    pairs = bench("pairs")
    sources, unavailable = reproduce.data_sources(pairs, SHARED)
    assert unavailable is None and sources == {"train": str(SHARED / "mrpc/train.tsv"),
                                               "validation": str(SHARED / "mrpc/dev.tsv")}
    task = get_task(resolve_recipe("pairs", parse_overrides(pairs.overrides)))
    dev = task.read_source(sources["validation"], "validation")
    assert len(dev) == 408 and sorted(dev.column_names) == ["label", "text", "text_pair"]
    assert sorted(set(dev["label"])) == ["equivalent", "not_equivalent"]
    assert dev[0]["text"].startswith("He said the foodservice pie business")


def test_each_row_names_the_machine_it_ran_on(monkeypatch, data_dir, tmp_path):
    results = tmp_path / "results"
    run_main(monkeypatch, data_dir, tmp_path, "sentiment")
    stored = json.loads((results / "runs" / "sentiment.json").read_text())
    assert stored["machine"] == "Test CPU 9000 (2 cores, AVX2, no bf16 matmul)"
    # a row imported from an earlier RESULTS.md has no machine tag
    imported = {**stored, "finished": "before 2026-11-30; imported"}
    del imported["machine"]
    (results / "runs" / "pairs.json").write_text(json.dumps(imported))
    monkeypatch.setitem(FACTS, "GPU", "Test GPU")
    run_main(monkeypatch, data_dir, tmp_path, "mlm")
    assert json.loads((results / "runs" / "mlm.json").read_text())["machine"] == (
        "Test CPU 9000 (2 cores, AVX2, no bf16 matmul), GPU Test GPU")
    assert "| 1m00s | M1 |" in row(results, "sentiment")
    assert "| not recorded |" in row(results, "pairs")
    assert "| 1m00s | M2 |" in row(results, "mlm")
    assert "| - | not run yet |" in row(results, "sentiment-mlm")
    text = (results / "RESULTS.md").read_text()
    assert ("Machines: M1 = Test CPU 9000 (2 cores, AVX2, no bf16 matmul); M2 = Test CPU 9000 (2 cores, AVX2, no bf16 "
            "matmul), GPU Test GPU.") in text
    assert "Wall times of the rows shown, summed: 3m00s." in text and "All runs together" not in text
    assert "| GPU | Test GPU |" in (results / "MACHINE.md").read_text()
