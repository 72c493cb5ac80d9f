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


def relaunch(num_processes: int) -> int:
    import torch

    use_gpu = torch.cuda.is_available()
    env = dict(os.environ)
    if not use_gpu and "OMP_NUM_THREADS" not in env:  # split the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    return subprocess.call(launcher_command(num_processes, sys.argv[1:], use_gpu), env=env)
