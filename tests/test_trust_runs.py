"""A run's output directory off the happy path: --resume refuses changed settings and falls back past damaged
checkpoints, --overwrite keeps the old run until the new one has finished and never deletes what is not an
adapt run, one run per output directory at a time, SIGTERM saves a resumable checkpoint, a diverging run
stops without saving NaN weights, files get the umask's modes, killed runs' temporaries are cleaned up."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, run_tiny_finetune, sentiment_rows, write_table
from safetensors.torch import load_file
from typer.testing import CliRunner

import adapt.train
from adapt import checkpoint, rundir
from adapt.cli import app

# the run every test starts from: TINY_RUN with checkpoints at steps 2, 4 and 6, all kept
RUN = (*TINY_RUN, ("train.save_steps", 2), ("train.save_total_limit", 3))


def run_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """`adapt finetune` arguments that resolve to exactly the recipe of RUN, then `extra` (key=value overrides
    win over RUN's; flags would not)."""
    return ["finetune", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            *[f"{key}={value}" for key, value in RUN], *extra]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def error_line(result) -> str:
    """The user-error contract: exit 2, no traceback, exactly one `error:` line; returns it."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_bert, sentiment_csv_shared, tmp_path_factory) -> Path:
    """A finished run of RUN (checkpoints step-2, step-4, step-6); copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    run_tiny_finetune(tiny_bert, sentiment_csv_shared, root / "run", root / "cache", RUN[len(TINY_RUN):])
    return root / "run"


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target


# ---- --resume checks what it continues ------------------------------------------------------------
@pytest.mark.parametrize("extra, change", [
    (["train.lr=0.002"], "train.lr: 0.001 -> 0.002"),
    (["train.batch_size=4"], "train.batch_size: 8 -> 4"),
    (["train.grad_accum=2"], "train.grad_accum: 1 -> 2"),
    (["train.max_steps=8"], "train.max_steps: 6 -> 8"),
])
def test_resume_with_changed_settings_exits_2_naming_the_change(run_copy, tiny_bert, sentiment_csv_shared, extra,
                                                                change, adapt_cache):
    before = snapshot(run_copy)
    line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, run_copy, "--resume", *extra)))
    assert line.startswith(f"error: --resume: {run_copy / 'checkpoints/step-6'} was trained with other settings ("
                           f"{change}); resume with the original settings"), line
    assert snapshot(run_copy) == before


def test_resume_with_changed_data_names_the_file_and_its_content(run_copy, tiny_bert, sentiment_csv_shared, tmp_path,
                                                                 adapt_cache):
    same = tmp_path / "same.csv"
    shutil.copy(sentiment_csv_shared, same)
    line = error_line(invoke(*run_args(tiny_bert, same, run_copy, "--resume")))
    # the same content at another path: only the path differs
    assert f"(data.train: {sentiment_csv_shared} -> {same}); resume" in line, line

    edited = write_table(tmp_path / "edited.csv", [(text + "!", label) for text, label in sentiment_rows()])
    line = error_line(invoke(*run_args(tiny_bert, edited, run_copy, "--resume")))
    assert f"data.train: {sentiment_csv_shared} -> {edited}; train data fingerprint: " in line, line
    assert "; validation data fingerprint: " in line


def test_resume_with_another_process_count_is_refused(run_copy, tiny_bert, sentiment_csv_shared, adapt_cache):
    run_file = run_copy / "checkpoints/step-6" / checkpoint.RUN_FILE
    recorded = json.loads(run_file.read_text())
    assert recorded["processes"] == 1 and recorded["train.batch_size"] == 8 and recorded["train.grad_accum"] == 1
    run_file.write_text(json.dumps({**recorded, "processes": 2}))
    (run_file.parent / checkpoint.MANIFEST).unlink()  # else the edit reads as damage (see the fallback test)
    line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, run_copy, "--resume")))
    assert "(processes: 2 -> 1)" in line, line


def test_resume_with_only_output_settings_changed_continues(run_copy, tiny_bert, sentiment_csv_shared, adapt_cache):
    result = invoke(*run_args(tiny_bert, sentiment_csv_shared, run_copy, "--resume", "train.eval_steps=3",
                              "train.log_steps=1"))
    assert result.exit_code == 0, result.output
    assert f"resuming from {run_copy / 'checkpoints/step-6'} at step 6/6" in result.output


def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(run_copy, finished, tiny_bert,
                                                                      sentiment_csv_shared, adapt_cache):
    newest = run_copy / "checkpoints/step-6/model.safetensors"
    size = newest.stat().st_size
    with newest.open("r+b") as handle:
        handle.truncate(size // 2)  # a copy cut short
    state = run_copy / "checkpoints/step-4" / checkpoint.STATE_FILE
    (run_copy / "checkpoints/step-4/optimizer.safetensors").write_bytes(b"\0" * 100)  # step-4 damaged too
    result = invoke(*run_args(tiny_bert, sentiment_csv_shared, run_copy, "--resume"))
    assert result.exit_code == 0, result.output
    assert (f"skipping damaged checkpoint {newest.parent} (model.safetensors has {size // 2} bytes, {size} were "
            "written)") in result.output
    assert f"skipping damaged checkpoint {state.parent} (optimizer.safetensors has 100 bytes" in result.output
    assert f"resuming from {run_copy / 'checkpoints/step-2'} at step 2/6" in result.output
    # steps 3-6 redone from step 2 give the uninterrupted run's final weights, bit for bit
    assert (run_copy / "model.safetensors").read_bytes() == (finished / "model.safetensors").read_bytes()
    assert json.loads((run_copy / "metrics.json").read_text())["validation"] == \
        json.loads((finished / "metrics.json").read_text())["validation"]


def test_every_checkpoint_damaged_is_one_line(run_copy, tiny_bert, sentiment_csv_shared, adapt_cache):
    for step in (2, 4, 6):
        (run_copy / f"checkpoints/step-{step}/scheduler.json").write_text("{")
    line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, run_copy, "--resume")))
    assert line.startswith(f"error: --resume: every checkpoint in {run_copy / 'checkpoints'} is damaged (step-2: "
                           "scheduler.json has 1 bytes, "), line
    assert line.endswith(" were written); start again with --overwrite"), line


def failing_update(after_calls: int, check=None):
    """A stand-in for adapt.speed.Optimization.update that runs the real update, calls `check()` at call
    `after_calls`, then raises RuntimeError: a run that dies mid-training."""
    real = adapt.speed.Optimization.update
    calls = []

    def update(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == after_calls:
            if check:
                check()
            raise RuntimeError("killed mid-run")

    return update


def test_resume_of_an_attempt_without_checkpoints_starts_it_afresh(tiny_bert, sentiment_csv_shared, tmp_path,
                                                                   adapt_cache, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(adapt.speed.Optimization, "update", failing_update(1))
        with pytest.raises(RuntimeError, match="killed mid-run"):
            run_tiny_finetune(tiny_bert, sentiment_csv_shared, out, adapt_cache, RUN[len(TINY_RUN):])
    assert (out / "recipe.yaml").is_file() and not checkpoint.step_checkpoints(out / "checkpoints")

    line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, out, "--resume", "train.lr=0.002")))
    assert line == (f"error: --resume: {out} holds an attempt that stopped before its first checkpoint, with other "
                    "settings (train.lr: 0.001 -> 0.002); run the original command, or start this one with "
                    "--overwrite instead of --resume")
    result = invoke(*run_args(tiny_bert, sentiment_csv_shared, out, "--resume"))
    assert result.exit_code == 0, result.output
    assert (f"{out} holds an attempt of this recipe that stopped before its first checkpoint: starting it afresh"
            in result.output)
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 6


# ---- --overwrite ----------------------------------------------------------------------------------
def test_overwrite_refuses_a_folder_that_is_not_an_adapt_run(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "recipe.yaml").write_text("my: notes\n")  # a recipe.yaml alone does not make an adapt run
    (out / "thesis.tex").write_text("keep me")
    line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, out, "--overwrite")))
    assert line == (f"error: --overwrite: {out} is not an adapt run (it has no recipe.yaml and train_log.jsonl), so "
                    "adapt will not delete it; remove it yourself or choose another --output-dir")
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml", "thesis.tex"]
    assert [p.name for p in tmp_path.iterdir() if p.name != "adapt_cache"] == ["mine"]  # no lock file left


def test_overwrite_keeps_the_old_run_until_the_new_one_has_finished(run_copy, tiny_bert, sentiment_csv_shared,
                                                                    adapt_cache, monkeypatch):
    old = snapshot(run_copy)
    staging = rundir.staging_dir(run_copy)
    seen = []

    def old_run_untouched():
        seen.append((snapshot(run_copy) == old, (staging / "checkpoints/step-2").is_dir()))

    # a replacement that dies at step 3: the old run is as it was, the partial new one is gone
    with monkeypatch.context() as patch:
        patch.setattr(adapt.speed.Optimization, "update", failing_update(3, old_run_untouched))
        with pytest.raises(RuntimeError, match="killed mid-run"):
            run_tiny_finetune(tiny_bert, sentiment_csv_shared, run_copy, adapt_cache,
                              (*RUN[len(TINY_RUN):], ("train.seed", 8)), overwrite=True)
    assert seen == [(True, True)]
    assert snapshot(run_copy) == old and not staging.exists()

    # a replacement that finishes takes the old run's place, and nothing of the old one remains
    final = run_tiny_finetune(tiny_bert, sentiment_csv_shared, run_copy, adapt_cache,
                              (*RUN[len(TINY_RUN):], ("train.seed", 8)), overwrite=True)
    assert json.loads((run_copy / "metrics.json").read_text()) == json.loads(json.dumps(final))
    assert "seed: 8" in (run_copy / "recipe.yaml").read_text()
    assert (run_copy / "model.safetensors").read_bytes() != old["model.safetensors"]
    assert sorted(p.name for p in run_copy.parent.iterdir()) == ["adapt_cache", "run"]


# ---- one run per output directory -----------------------------------------------------------------
def test_a_second_run_on_a_locked_output_dir_is_refused(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache):
    out = tmp_path / "run"
    with rundir.RunLock(out):  # another process's run (flock locks separate opens even within one process)
        line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, out)))
    assert line.startswith(f"error: output directory {out} is in use by another adapt finetune (pid {os.getpid()} on ")
    assert line.endswith("wait for it to end or choose another --output-dir")
    assert not out.exists()


def test_a_stale_lock_of_a_dead_process_does_not_block(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache):
    out = tmp_path / "run"
    lock = tmp_path / ".run.lock"
    lock.write_text("999999 elsewhere\n")  # left by a killed run: the file exists, nobody holds the lock
    result = invoke(*run_args(tiny_bert, sentiment_csv_shared, out, "train.max_steps=2"))
    assert result.exit_code == 0, result.output
    assert not lock.exists() and (out / "model.safetensors").is_file()


def test_concurrent_runs_in_two_processes_one_is_refused(tiny_bert, sentiment_csv_shared, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAPT_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "adapt", *run_args(tiny_bert, sentiment_csv_shared, out, "train.max_steps=100000")]  # runs until the SIGTERM below, however slow the second start is
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120  # the first is training (its signal handlers are in place)
        while time.time() < deadline and not ((out / "train_log.jsonl").exists() and (out / "train_log.jsonl").read_text()):
            time.sleep(0.05)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"is in use by another adapt finetune (pid {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 130


# ---- signals, counters ----------------------------------------------------------------------------
def _records(folder: Path, kind: str) -> list[dict]:
    timing = {"samples_per_s", "tokens_per_s"}
    return [{k: v for k, v in r.items() if k not in timing}
            for r in map(json.loads, (folder / "train_log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_sigterm_saves_a_checkpoint_and_resume_gives_the_same_run(tiny_bert, sentiment_csv, tmp_path):
    """In a real process, as a scheduler sends it: the resumed run equals an uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAPT_CACHE": str(tmp_path / "cache")}

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "adapt", "finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv),
                "--max-steps", "14", "--batch-size", "4", "--eval-steps", "5", "--output-dir", str(out),
                "tracking=[]", "train.log_steps=4", *extra]

    reference = tmp_path / "reference"
    subprocess.run(command(reference), env=env, check=True, capture_output=True)
    out = tmp_path / "run"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "train_log.jsonl").exists() and (out / "train_log.jsonl").read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    step = checkpoint.latest_checkpoint(out / "checkpoints")
    assert step is not None and not (out / "metrics.json").exists(), "the run ended before the signal"
    assert f"interrupted (SIGTERM) at step {step.name[5:]}/14; checkpoint saved to {step}. " \
           "Resume with the same command plus --resume" in stderr

    resumed = subprocess.run(command(out, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_metrics, metrics = (json.loads((d / "metrics.json").read_text()) for d in (reference, out))
    # the counters of the log window open at the checkpoint are carried over, not lost
    assert metrics["train_samples"] == ref_metrics["train_samples"] == 56
    assert metrics["validation"] == ref_metrics["validation"]
    assert _records(out, "train") == _records(reference, "train")


def test_sigusr1_mid_window_then_resume_keeps_the_counters(finished, tiny_bert, sentiment_csv_shared, tmp_path,
                                                          adapt_cache, monkeypatch):
    """SIGUSR1 at step 3 (the log window of steps 3-4 open): the checkpoint carries the window, so the
    resumed run's log lines, sample count and weights equal the uninterrupted run's."""
    real = adapt.speed.Optimization.update
    calls = []

    def signal_at_step_3(*args):
        real(*args)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(adapt.speed.Optimization, "update", signal_at_step_3)
        with pytest.raises(adapt.train.Interrupted) as caught:
            run_tiny_finetune(tiny_bert, sentiment_csv_shared, out, adapt_cache, RUN[len(TINY_RUN):])
    assert str(caught.value) == (f"interrupted (SIGUSR1) at step 3/6; checkpoint saved to {out / 'checkpoints/step-3'}. "
                                 "Resume with the same command plus --resume")
    assert json.loads((out / "checkpoints/step-3" / checkpoint.STATE_FILE).read_text())["window"]["samples"] == 8
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # the handlers are put back
    final = run_tiny_finetune(tiny_bert, sentiment_csv_shared, out, adapt_cache, RUN[len(TINY_RUN):], resume=True)
    expected = json.loads((finished / "metrics.json").read_text())
    assert final["train_samples"] == expected["train_samples"] == 44
    assert _records(out, "train") == _records(finished, "train")
    assert (out / "model.safetensors").read_bytes() == (finished / "model.safetensors").read_bytes()


# ---- non-finite training --------------------------------------------------------------------------
def test_infinite_learning_rate_is_refused_before_anything_is_written(tiny_bert, sentiment_csv_shared, tmp_path,
                                                                      adapt_cache):
    out = tmp_path / "run"
    line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, out, "train.lr=.inf")))
    assert "'train.lr'" in line and "finite" in line
    assert not out.exists()


def test_diverging_run_stops_naming_the_last_good_checkpoint(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache):
    out = tmp_path / "run"
    line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, out, "train.lr=1e30", "train.save_steps=1",
                                       "train.log_steps=1")))
    good = checkpoint.latest_checkpoint(out / "checkpoints")
    assert good is not None
    assert line.startswith(f"error: training diverged at step {int(good.name[5:]) + 1}: ")
    assert line.endswith(f"no model was saved. Last good checkpoint: {good}. Lower train.lr (now 1e+30) and start "
                         "again with --overwrite")
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    for _, folder in checkpoint.step_checkpoints(out / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in load_file(folder / "model.safetensors").values())


def test_a_nan_loss_stops_training_at_that_step(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache, monkeypatch):
    real = adapt.train.accumulate_gradients
    calls = []

    def nan_at_step_3(*args):
        loss, *rest = real(*args)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss, *rest)

    monkeypatch.setattr(adapt.train, "accumulate_gradients", nan_at_step_3)
    out = tmp_path / "run"
    with pytest.raises(adapt.train.TrainingDiverged) as caught:
        run_tiny_finetune(tiny_bert, sentiment_csv_shared, out, adapt_cache, RUN[len(TINY_RUN):])
    assert str(caught.value).startswith("training diverged at step 3: the training loss is nan; no model was saved. "
                                        f"Last good checkpoint: {out / 'checkpoints/step-2'}.")
    assert not (out / "model.safetensors").exists()


# ---- what is written: modes, durability, temporaries, write failures -------------------------------
def test_saved_files_respect_the_umask(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache):
    previous = os.umask(0o022)
    try:
        run_tiny_finetune(tiny_bert, sentiment_csv_shared, tmp_path / "run", adapt_cache, RUN[len(TINY_RUN):])
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*")}
    assert modes["run/model.safetensors"] == modes["run/metrics.json"] == modes["run/recipe.yaml"] == 0o644
    assert modes["run/checkpoints/step-6/model.safetensors"] == modes["run/checkpoints/best/model.safetensors"] == 0o644
    assert {m for p, m in modes.items() if (tmp_path / p).is_file()} == {0o644}
    assert {m for p, m in modes.items() if (tmp_path / p).is_dir()} == {0o755}


def test_checkpoints_carry_a_manifest_of_their_files(finished):
    folder = finished / "checkpoints/step-6"
    manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
    assert set(manifest) == {p.name for p in folder.iterdir()} - {checkpoint.MANIFEST}
    assert manifest["model.safetensors"]["bytes"] == (folder / "model.safetensors").stat().st_size
    assert checkpoint.damage(folder) is None


def test_stale_temporaries_of_killed_runs_are_removed_at_the_next_start(run_copy, tiny_bert, sentiment_csv_shared,
                                                                       adapt_cache):
    junk = [run_copy / ".tmp-.final-k3j2/model.safetensors", run_copy / "checkpoints/.tmp-step-8/model.safetensors",
            run_copy / "checkpoints/.tmp-best-x1/model.safetensors", run_copy / ".final/config.json"]
    for path in junk:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\0" * 1000)
    (run_copy / ".tmp-metrics.json-abc").write_text("{")
    (run_copy / ".my-notes").write_text("not adapt's")
    result = invoke(*run_args(tiny_bert, sentiment_csv_shared, run_copy, "--resume"))
    assert result.exit_code == 0, result.output
    hidden = sorted(str(p.relative_to(run_copy)) for p in run_copy.rglob(".*"))
    assert hidden == [".my-notes"]


def test_a_full_disk_mid_run_is_one_line(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache, monkeypatch):
    def no_space(folder, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "optimizer.safetensors"))

    monkeypatch.setattr(checkpoint, "save_main_state", no_space)
    out = tmp_path / "run"
    line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, out)))
    # the first checkpoint failed: the attempt holds nothing to resume and is removed, so no --resume
    assert line == (f"error: cannot write {out / 'checkpoints/.tmp-step-2/optimizer.safetensors'}: the disk is full; "
                    "free some space (or lower train.save_total_limit) and run the same command")
    assert not out.exists()


def test_write_errors_elsewhere_are_not_reported_as_the_runs(tmp_path):
    unreadable = OSError(errno.EACCES, "Permission denied", "/data/train.csv")
    assert rundir.write_error(unreadable, (tmp_path,)) is None
    read_only = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "run/recipe.yaml"))
    assert str(rundir.write_error(read_only, (tmp_path / "run",))) == (
        f"cannot write {tmp_path / 'run/recipe.yaml'}: the file system is read-only; choose a writable --output-dir")


def test_a_full_disk_reported_by_safetensors_is_recognised(tmp_path):
    from safetensors import SafetensorError

    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert str(rundir.write_error(full, (tmp_path / "run",))) == (
        f"cannot write {tmp_path / 'run'}: the disk is full; free some space (or lower train.save_total_limit) and "
        "run the same command with --resume")
    assert rundir.write_error(SafetensorError("invalid header"), (tmp_path,)) is None


def test_interrupting_an_overwrite_keeps_the_previous_run(run_copy, tiny_bert, sentiment_csv_shared, adapt_cache,
                                                          monkeypatch):
    old = snapshot(run_copy)
    real = adapt.speed.Optimization.update
    monkeypatch.setattr(adapt.speed.Optimization, "update", lambda *args: (real(*args), os.kill(os.getpid(), signal.SIGTERM)))
    with pytest.raises(adapt.train.Interrupted) as caught:
        run_tiny_finetune(tiny_bert, sentiment_csv_shared, run_copy, adapt_cache, RUN[len(TINY_RUN):], overwrite=True)
    assert str(caught.value) == (f"interrupted (SIGTERM) at step 1/6; {run_copy} still holds the previous run, which "
                                 "--overwrite replaces only once the new run finishes; run the command again to start over")
    assert snapshot(run_copy) == old and not rundir.staging_dir(run_copy).exists()


def test_a_signal_during_the_final_save_lets_the_save_finish(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache,
                                                             monkeypatch):
    real = adapt.train.write_final_artefacts

    def signalled(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler notes it; the save goes on
        real(*args)

    monkeypatch.setattr(adapt.train, "write_final_artefacts", signalled)
    run_tiny_finetune(tiny_bert, sentiment_csv_shared, tmp_path / "run", adapt_cache)
    assert (tmp_path / "run/model.safetensors").is_file() and (tmp_path / "run/metrics.json").is_file()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_swap_cut_short_is_repaired_at_the_next_start(tmp_path):
    out = tmp_path / "run"
    replaced = tmp_path / ".run.adapt-old"  # killed between moving the old run aside and moving the new one in
    replaced.mkdir()
    (replaced / "metrics.json").write_text("{}")
    rundir.recover_swap(out)
    assert (out / "metrics.json").read_text() == "{}" and not replaced.exists()
    replaced.mkdir()  # killed after the new run moved in: the old one goes
    rundir.recover_swap(out)
    assert not replaced.exists() and (out / "metrics.json").exists()


# ---- a fresh run that fails leaves the output dir as it found it (wave 2) ----------------------------
def test_a_fresh_run_that_diverges_leaves_nothing_and_reruns_without_overwrite(tiny_bert, sentiment_csv_shared,
                                                                               tmp_path, adapt_cache):
    out = tmp_path / "run"
    line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, out, "train.lr=1e30")))
    assert line.startswith("error: training diverged at steps 1-2: weight ")
    assert line.endswith(f"; no model was saved. Nothing was kept in {out}. Lower train.lr (now 1e+30) and run the "
                         "command again")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapt_cache"]  # no lock file either
    result = invoke(*run_args(tiny_bert, sentiment_csv_shared, out))  # the same command, a sane lr, no --overwrite
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 6


def test_an_error_before_the_first_checkpoint_empties_the_existing_output_dir(tiny_bert, sentiment_csv_shared,
                                                                              tmp_path, adapt_cache, monkeypatch):
    from adapt.errors import AdaptError

    out = tmp_path / "run"
    out.mkdir()

    def update(*args, **kwargs):
        assert (out / "recipe.yaml").is_file() and (out / "train_log.jsonl").is_file()  # the run had written
        raise AdaptError("stopped at step 1")

    monkeypatch.setattr(adapt.speed.Optimization, "update", update)
    with pytest.raises(AdaptError, match="^stopped at step 1$"):
        run_tiny_finetune(tiny_bert, sentiment_csv_shared, out, adapt_cache, RUN[len(TINY_RUN):])
    assert out.is_dir() and list(out.iterdir()) == []


def test_an_error_after_a_checkpoint_keeps_it_and_says_resume(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache,
                                                              monkeypatch):
    from adapt.errors import AdaptError

    def fail(*args, **kwargs):
        raise AdaptError("cannot write the model card")

    monkeypatch.setattr(adapt.train, "write_final_artefacts", fail)
    out = tmp_path / "run"
    with pytest.raises(AdaptError) as caught:
        run_tiny_finetune(tiny_bert, sentiment_csv_shared, out, adapt_cache, RUN[len(TINY_RUN):])
    assert str(caught.value) == (f"cannot write the model card; the run's checkpoints in {out / 'checkpoints'} are "
                                 "kept: once that is fixed, run the same command with --resume")
    assert [step for step, _ in checkpoint.step_checkpoints(out / "checkpoints")] == [2, 4, 6]


# ---- --resume of a finished run, notes on stderr (wave 2) -----------------------------------------------
def test_resume_of_a_finished_run_says_it_finished(run_copy, tiny_bert, sentiment_csv_shared, adapt_cache):
    shutil.rmtree(run_copy / "checkpoints")  # a run saved without step checkpoints (train.save_steps unset)
    line = error_line(invoke(*run_args(tiny_bert, sentiment_csv_shared, run_copy, "--resume")))
    assert line == (f"error: --resume: {run_copy} holds a finished run (at step 6) and no checkpoint to continue from; "
                    "to train again pass --overwrite instead of --resume, or choose another --output-dir (a finished "
                    "run cannot be extended: --max-steps/--epochs set its learning-rate schedule from the first step)")


def test_resume_notes_go_to_stderr(run_copy, tiny_bert, sentiment_csv_shared, adapt_cache):
    (run_copy / "checkpoints/step-6/scheduler.json").write_text("{")
    result = invoke(*run_args(tiny_bert, sentiment_csv_shared, run_copy, "--resume"))
    assert result.exit_code == 0, result.output
    note = f"skipping damaged checkpoint {run_copy / 'checkpoints/step-6'} (scheduler.json has 1 bytes"
    assert note in result.stderr and note not in result.stdout
    resuming = f"resuming from {run_copy / 'checkpoints/step-4'} at step 4/6"
    assert resuming in result.stderr and resuming not in result.stdout


# ---- data inspect --plot: the path is checked before any work (wave 2) ----------------------------------
@pytest.mark.parametrize("name, message", [
    ("missing/dir/x.png", "the folder {parent} does not exist; create it first or choose a path in an existing folder"),
    ("lengths.txt", "the file name must end in .png, .svg, .pdf (it sets the image format); choose e.g. lengths.png"),
])
def test_inspect_plot_path_is_checked_first(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache, name, message):
    plot = tmp_path / name
    line = error_line(invoke("data", "inspect", "--model", str(tiny_bert), "--data", str(sentiment_csv_shared),
                             "--plot", str(plot)))
    assert line == f"error: --plot {plot}: " + message.format(parent=plot.parent)
    assert [p.name for p in tmp_path.iterdir() if p.name != "adapt_cache"] == []  # no folder made, no plot


def test_inspect_plot_writes_the_format_its_name_asks_for(tiny_bert, sentiment_csv_shared, tmp_path, adapt_cache):
    plot = tmp_path / "lengths.svg"
    result = invoke("data", "inspect", "--model", str(tiny_bert), "--data", str(sentiment_csv_shared),
                    "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert plot.read_text().lstrip().startswith("<?xml")
