"""Helpers for the tests that launch real multi-process runs on the CPU (gloo): the shipped Accelerate configs
turned into CPU test configs, the launch command, waiting on a running job, and weight comparisons."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from adapt import checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
# a 2-process job of these tests takes 10-60 s on 2 loaded cores; a hung one fails its test well before CI's limit
JOB_TIMEOUT = 240


def free_port() -> int:
    """A TCP port nothing listens on now (for the rendezvous of one test's processes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_config(example: str, folder: Path, **changes) -> Path:
    """examples/accelerate/<example>.yaml with `use_cpu: true`, 2 processes, a free port and `changes`
    (`fsdp_config` keys merge into its section), written into `folder`."""
    settings = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    settings.update(use_cpu=True, num_processes=2, main_process_port=free_port())
    settings["fsdp_config"] = {**settings.get("fsdp_config", {}), **changes.pop("fsdp_config", {})} or None
    settings.update(changes)
    settings = {k: v for k, v in settings.items() if v is not None}
    path = folder / f"{example}-{os.urandom(3).hex()}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings))
    return path


def launch(config: Path, *adapt_args: str) -> list[str]:
    """`accelerate launch --config_file CONFIG -m adapt ARGS` with this interpreter."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "adapt",
            *adapt_args]


def env(cache: Path) -> dict:
    """The test processes' environment: one thread each (2 processes share 2 cores; identical reduction order
    in every run), the feature cache in `cache`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "ADAPT_CACHE": str(cache)}


def run(command: list[str], cache: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """Run a launched job to its end; with `ok`, assert it succeeded (its stderr tail as the message)."""
    done = subprocess.run(command, env=env(cache), capture_output=True, text=True, timeout=JOB_TIMEOUT)
    if ok:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def start(command: list[str], cache: Path) -> subprocess.Popen:
    """Start a launched job in its own process group (so a test can signal or kill all of it)."""
    return subprocess.Popen(command, env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_checkpoint(proc: subprocess.Popen, checkpoints: Path, step: int, timeout: float = 300) -> None:
    """Block until the job has committed `checkpoints/step-N` with N >= step (fails if the job ends first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = checkpoint.step_checkpoints(checkpoints)
        if found and found[-1][0] >= step:
            return
        assert proc.poll() is None, f"the job ended before step {step}: {proc.communicate()[1][-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step {step} within {timeout}s")


def descendants(pid: int) -> list[int]:
    """Every process started by `pid`, directly or not (torchrun starts each worker in a session of its own,
    so a process group does not reach them)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the job's launcher and every process it started (a crash: nothing can save)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=60)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
