"""Preemption of a running 2-process job (`adapt finetune --num-processes 2`: torchrun, gloo), as a scheduler
does it: SIGTERM or SIGUSR1 to the job's launcher, or SIGUSR1 to every process of the job. Each process stops at the same
step, saves its part of one complete checkpoint and exits 130 with the resume hint, as Ctrl-C does in one
process; the job exits 130 too; the same command plus --resume ends bitwise equal to an uninterrupted run.
(A signal to the workers alone, not to the launcher, still saves and exits 130 in each of them, but torchrun
then reports failed workers and exits 1.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed_helpers import JOB_TIMEOUT, assert_bitwise_equal, descendants, env, weights

from adapt import checkpoint

STEPS = 100  # long enough (a second or more) for the signal to land mid-run


def _command(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "adapt", "finetune", "--model", str(model), "--data", str(data), "--num-processes",
            "2", "--max-steps", str(STEPS), "--batch-size", "4", "--eval-steps", str(STEPS), "--seed", "5",
            "--output-dir", str(out), "tracking=[]", "train.mixed_precision=no",
            "train.log_steps=5", *extra]


def _workers(launcher: int) -> list[int]:
    """The training processes under `launcher` (those torchrun gave a LOCAL_RANK)."""
    found = []
    for pid in descendants(launcher):
        try:
            if b"LOCAL_RANK=" in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def setup(tiny_bert_builder, tmp_path_factory):
    from conftest import sentiment_rows, write_table

    root = tmp_path_factory.mktemp("preemption")
    model = tiny_bert_builder(root / "model", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return model, write_table(root / "sentiment.csv", sentiment_rows()), root


# (SIGUSR1, "launcher"): torchrun forwards SIGUSR1 only when adapt's launcher asks for it (--signals-to-handle);
# by default it is not among torchrun's handled signals, so it ended torchrun and left the workers running
@pytest.mark.parametrize("sent, to", [(signal.SIGTERM, "launcher"), (signal.SIGUSR1, "launcher"), (signal.SIGUSR1, "all")])
def test_a_signal_saves_a_checkpoint_in_every_process_and_resume_finishes_the_run(setup, sent, to):
    model, data, root = setup
    cache = root / "cache"
    out = root / f"{sent.name}-{to}"
    job = subprocess.Popen(_command(model, data, out), env=env(cache), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    log = out / "train_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None and not (log.exists() and log.read_text()):
        time.sleep(0.02)  # the first log line: training has begun, the handlers are in place
    # "launcher": what reaches a job's first process (Kubernetes, SLURM's batch step); "all": every process of
    # the job at once, launchers and workers (SLURM's `scancel --signal=USR1 --full`, a cgroup-wide kill)
    targets = [job.pid] if to == "launcher" else [job.pid, *descendants(job.pid)]
    assert to == "launcher" or len(_workers(job.pid)) == 2
    for pid in targets:
        os.kill(pid, sent)
    _, stderr = job.communicate(timeout=JOB_TIMEOUT)

    assert job.returncode == 130, stderr[-3000:]
    assert not (out / "metrics.json").exists(), "the run ended before the signal"
    step = checkpoint.latest_checkpoint(out / "checkpoints")
    hint = (f"interrupted ({sent.name}) at step {step.name[5:]}/{STEPS}; checkpoint saved to {step}. "
            "Resume with the same command plus --resume")
    assert stderr.count(hint) == 2, stderr[-3000:]  # both processes, the same step
    assert checkpoint.damage(step) is None
    assert {p.name for p in step.glob("rng-*.safetensors")} == {"rng-0.safetensors", "rng-1.safetensors"}
    assert json.loads((step / "trainer_state.json").read_text())["step"] == int(step.name[5:])
    assert not re.search(r"Traceback.*\n(.*\n)*.*adapt/train\.py", stderr)

    if sent == signal.SIGTERM:  # and the requeued job continues to the same end as an uninterrupted one
        reference = root / "reference"
        subprocess.run(_command(model, data, reference), env=env(cache), check=True, capture_output=True, timeout=JOB_TIMEOUT)
        resumed = subprocess.run(_command(model, data, out, "--resume"), env=env(cache), capture_output=True,
                                 text=True, timeout=JOB_TIMEOUT)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert_bitwise_equal(weights(reference), weights(out))
        ref_metrics, metrics = (json.loads((d / "metrics.json").read_text()) for d in (reference, out))
        assert metrics["validation"] == ref_metrics["validation"]
        assert metrics["train_samples"] == ref_metrics["train_samples"]
