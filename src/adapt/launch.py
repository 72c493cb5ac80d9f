"""`adapt finetune --num-processes N`: relaunch this command as N processes, with torchrun (gloo) on CPU
or `accelerate launch` on GPUs, so users need not know the launcher."""

from __future__ import annotations

import os
import subprocess
import sys


def _without_flag(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = True
            continue
        if arg.startswith(flag + "="):
            continue
        out.append(arg)
    return out


def launcher_command(num_processes: int, argv: list[str], use_gpu: bool) -> list[str]:
    args = _without_flag(argv, "--num-processes")
    if use_gpu:
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                str(num_processes), "-m", "adapt", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes),
            "-m", "adapt", *args]


# what the launcher (torchrun, also inside `accelerate launch`) forwards to every process: its defaults plus
# SIGUSR1, which schedulers send before a job's time is up (SLURM's --signal)
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
INTERRUPTED = 130  # the exit code of an interrupted run (adapt.cli), as for Ctrl-C in one process


def relaunch(num_processes: int) -> int:
    """Run this command as `num_processes` processes and return the exit code. Ctrl-C, SIGTERM and SIGUSR1 are
    passed once to the launcher, which forwards them to every process (each saves its part of a checkpoint and
    exits 130 with the resume hint); the launcher runs in a session of its own, so a terminal's Ctrl-C reaches it
    only this way. An interrupted job exits 130, as a one-process run does."""
    import signal

    import torch

    use_gpu = torch.cuda.is_available()
    env = dict(os.environ)
    if not use_gpu and "OMP_NUM_THREADS" not in env:  # split the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    # torchrun's --signals-to-handle (read from PET_SIGNALS_TO_HANDLE by torchrun and by `accelerate launch`,
    # which runs torchrun's parser), not TORCHELASTIC_SIGNALS_TO_HANDLE, which torchrun overwrites from it
    env["PET_SIGNALS_TO_HANDLE"] = FORWARDED_SIGNALS
    launcher = subprocess.Popen(launcher_command(num_processes, sys.argv[1:], use_gpu), env=env,
                                start_new_session=True)
    received: list[int] = []

    def forward(signum, frame) -> None:
        if not received:  # once: the launcher shuts the processes down on the first
            launcher.send_signal(signum)
        received.append(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        code = launcher.wait()
    finally:
        for handled, handler in previous.items():
            signal.signal(handled, handler)
    return INTERRUPTED if received else code
