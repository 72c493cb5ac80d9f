"""Sharded training on a CUDA machine, for benchmarks/gpu_check.sh (stage 5): `adapt finetune` launched with the
shipped Accelerate configs, examples/accelerate/fsdp.yaml (FSDP2) and deepspeed_zero2.yaml (DeepSpeed ZeRO-2),
on every GPU the machine has, for a fixed number of steps of SST-2 on MiniLM's architecture with random weights
(bench_gpu.build_random_model). Each run's samples/s, its peak GPU memory (main process) and validation accuracy,
or its error, go to one JSON file.

    python benchmarks/sharded_check.py --model-files .gpu/minilm --data .gpu/sst2 --out OUT/sharded.json
    python benchmarks/sharded_check.py ... --dry     # print the command lines only (what the CPU test parses)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"fsdp2": "fsdp.yaml", "deepspeed_zero2": "deepspeed_zero2.yaml"}


def accelerate_config(name: str, processes: int, folder: Path) -> Path:
    """The shipped config `name` with the process count set to this machine's GPUs."""
    settings = yaml.safe_load((ROOT / "examples" / "accelerate" / CONFIGS[name]).read_text())
    settings["num_processes"] = processes
    path = folder / CONFIGS[name]
    path.write_text(yaml.safe_dump(settings))
    return path


def command(config: Path, model: str, data: Path, out: Path, steps: int, batch_size: int) -> list[str]:
    """`accelerate launch --config_file CONFIG -m adapt finetune ...` for one sharded SST-2 run."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "adapt",
            "finetune", "--recipe", "sentiment", "--model", model, "--data", str(data / "train.tsv"),
            "--validation", str(data / "dev.tsv"), "--max-steps", str(steps), "--batch-size", str(batch_size),
            "--eval-steps", str(steps), "--seed", "0", "--output-dir", str(out), "--overwrite",
            "data.columns.text=sentence", "tracking=[]"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-files", type=Path, default=ROOT / ".gpu" / "minilm")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu" / "sst2")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--limit-s", type=int, default=150, help="per run")
    parser.add_argument("--dry", action="store_true", help="print the command lines, run nothing")
    args = parser.parse_args(argv)
    import torch

    processes = max(1, torch.cuda.device_count())
    work = Path(tempfile.mkdtemp(prefix="sharded-"))
    model = str(work / "model")
    results = {"gpus": processes, "steps": args.steps, "batch_size_per_process": args.batch_size, "runs": {}}
    for name in CONFIGS:
        out = work / name
        line = command(accelerate_config(name, processes, work), model, args.data, out, args.steps, args.batch_size)
        if args.dry:
            print(json.dumps(line))
            continue
        if not Path(model).exists():
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from bench_gpu import build_random_model

            build_random_model(args.model_files, Path(model))
        start = time.perf_counter()
        try:
            done = subprocess.run(line, capture_output=True, text=True, timeout=args.limit_s,
                                  env={**os.environ, "ADAPT_CACHE": str(work / "cache")})
            ok = done.returncode == 0 and (out / "metrics.json").exists()
            error = None if ok else done.stderr[-1500:]
        except subprocess.TimeoutExpired:
            ok, error = False, f"stopped at {args.limit_s} s"
        run = {"wall_s": round(time.perf_counter() - start, 1)}
        if ok:
            metrics = json.loads((out / "metrics.json").read_text())
            run.update({k: metrics.get(k) for k in ("train_samples_per_s", "train_seconds", "peak_gpu_memory_gb",
                                                    "mixed_precision", "processes")})
            run["accuracy"] = metrics["validation"].get("accuracy")
        else:
            run["error"] = error
        results["runs"][name] = run
        print(name, json.dumps(run), flush=True)
    if not args.dry:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
