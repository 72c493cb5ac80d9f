"""Exact resume: a run killed with SIGKILL at a random step and resumed ends bitwise equal to an
uninterrupted run; Ctrl-C saves a checkpoint; half-written checkpoints are never picked."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from adapt import checkpoint

TRIALS = int(os.environ.get("ADAPT_RESUME_TRIALS", "1"))
STEPS = 14


def _command(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "adapt", "finetune", "--model", str(model_dir), "--data", str(data),
            "--max-steps", str(STEPS), "--batch-size", "4", "--save-steps", "1", "--eval-steps", "5",
            "--output-dir", str(out), "tracking=[]", "train.log_steps=1", "train.save_total_limit=3", *extra]


def _env(tmp_path: Path) -> dict:
    # one thread: identical float reduction order in every run, and the other test worker keeps its core
    return {**os.environ, "OMP_NUM_THREADS": "1", "ADAPT_CACHE": str(tmp_path / "cache")}


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert a[name].view(-1).view(dtype=a[name].dtype).equal(b[name].view(-1)), name


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_then_resume_is_bitwise_identical(tiny_bert, sentiment_csv, tmp_path, trial):
    env = _env(tmp_path)
    reference = tmp_path / "reference"
    subprocess.run(_command(tiny_bert, sentiment_csv, reference), env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    kill_at = random.Random(trial).randint(2, STEPS - 2)
    proc = subprocess.Popen(_command(tiny_bert, sentiment_csv, killed), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = checkpoint.step_checkpoints(killed / "checkpoints")
        if found and found[-1][0] >= kill_at:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "run finished before it could be killed"
    resumed = subprocess.run(_command(tiny_bert, sentiment_csv, killed, "--resume"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr

    _assert_bitwise_equal(_weights(reference), _weights(killed))
    ref_metrics = (reference / "metrics.json").read_text()
    import json

    a, b = json.loads(ref_metrics), json.loads((killed / "metrics.json").read_text())
    assert a["validation"] == b["validation"]
    assert a["best_step"] == b["best_step"] and a["train_steps"] == b["train_steps"] == STEPS


def test_half_written_checkpoint_is_never_picked(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "step-3").mkdir(parents=True)
    (folder / "step-3" / checkpoint.STATE_FILE).write_text("{}")
    (folder / ".tmp-step-4").mkdir()  # a run killed while writing step 4
    (folder / "step-5").mkdir()  # no state file: incomplete
    assert checkpoint.latest_checkpoint(folder) == folder / "step-3"


def test_sigint_saves_a_checkpoint_and_explains_resume(tiny_bert, sentiment_csv, tmp_path):
    out = tmp_path / "run"
    cmd = _command(tiny_bert, sentiment_csv, out)
    cmd[cmd.index("--save-steps") + 1] = "1000"
    cmd[cmd.index("--max-steps") + 1] = "100000"
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    log = out / "train_log.jsonl"
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "--resume" in stderr and "checkpoint saved" in stderr
    assert checkpoint.latest_checkpoint(out / "checkpoints") is not None
