"""`make bench`: adapt's sentiment fine-tune against plain `transformers.Trainer` on the same SST-2 examples,
run alternately on one machine in one session; reports throughput, wall time, memory, accuracy and MFU.

Modes (see benchmarks/README.md):
  default              speed: adapt and each Trainer configuration, --rounds times, alternating
  --accuracy-seeds K   accuracy: adapt and the best Trainer configuration over K seeds
  --cache-check        a second identical adapt run must load its tokenized features from the cache"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import mfu  # noqa: E402
import trainer_peer  # noqa: E402

BEST_PEER = "bf16"  # dynamic padding + length grouping + bf16: the fastest standard Trainer set-up
console = Console(width=None if sys.stdout.isatty() else 150)  # logs of `make bench` keep whole tables


# ---- running one system ----------------------------------------------------------------------------
def run_measured(target: str, args: list[str], workdir: Path, env: dict[str, str]) -> dict:
    """Run one system in a child process; wall time and peak RSS are taken by this parent from the
    child's own rusage (`os.wait4`), identically for both systems."""
    report, log = workdir / "launch.json", workdir / "output.log"
    command = [sys.executable, str(HERE / "launch.py"), "--report", str(report), target, *args]
    start = time.perf_counter()
    with open(log, "w") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env={**os.environ, **env})
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"{target} failed with exit code {child.returncode}; end of its output:\n{tail}")
    return {"wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
            **json.loads(report.read_text())}


def run_adapt(data_dir: Path, model: str, examples: int, seed: int, workdir: Path, cache: Path,
              batch_size: int = 32) -> dict:
    output_dir = workdir / "run"
    args = ["finetune", "--recipe", "sentiment", "--model", model, "--data", str(data_dir / "train.tsv"),
            "--validation", str(data_dir / "dev.tsv"), "--max-train-examples", str(examples), "--epochs", "1",
            "--batch-size", str(batch_size), "--lr", "5e-5", "--seed", str(seed), "--output-dir", str(output_dir),
            "--overwrite", "data.columns.text=sentence", "tracking=[]"]
    measured = run_measured("adapt", args, workdir, {"ADAPT_CACHE": str(cache)})
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {"system": "adapt", "seed": seed, "examples": examples,
            "train_samples_per_s": metrics["train_samples_per_s"], "train_tokens_per_s": metrics["train_tokens_per_s"],
            "dev_accuracy": metrics["validation"]["accuracy"], "data_seconds": metrics["data_seconds"],
            "train_seconds": metrics["train_seconds"], "mixed_precision": metrics["mixed_precision"],
            "device": metrics["device"], **measured}


def run_peer(config: str, data_dir: Path, model: str, examples: int, seed: int, workdir: Path,
             batch_size: int = 32, attn_implementation: str | None = None) -> dict:
    result_file = workdir / "peer.json"
    args = ["--data", str(data_dir), "--model", model, "--config", config, "--examples", str(examples),
            "--seed", str(seed), "--batch-size", str(batch_size), "--out", str(result_file)]
    if attn_implementation:
        args += ["--attn-implementation", attn_implementation]
    measured = run_measured("peer", args, workdir, {})
    # the parent's wall time and RSS replace the peer's own figures, so both systems are measured alike
    return {**json.loads(result_file.read_text()), **measured}


def run_system(system: str, args: argparse.Namespace, seed: int, scratch: Path) -> dict:
    """Each run in a fresh folder; adapt with an empty feature cache, so it tokenizes like the peer does."""
    workdir = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{system}-"))
    console.print(f"[dim]{time.strftime('%H:%M:%S')} running {system} (seed {seed}, {args.examples} examples)[/dim]")
    if system == "adapt":
        result = run_adapt(args.data, args.model, args.examples, seed, workdir, cache=workdir / "cache")
    else:
        result = run_peer(system.removeprefix("trainer-"), args.data, args.model, args.examples, seed, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


# ---- FLOPs ---------------------------------------------------------------------------------------------
def flops_per_real_token(data_dir: Path, model: str, examples: int, seed: int) -> float:
    """Model training FLOPs per real token of the selected training examples (formula in mfu.py)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from adapt.assets import resolve_model_path

    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = list(trainer_peer.training_examples(data_dir, examples, seed)["sentence"])
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=trainer_peer.MAX_LENGTH)["input_ids"]]
    classifier = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(path, num_labels=2))
    return mfu.training_flops(lengths, mfu.classifier_flop_counts(classifier)) / sum(lengths)


def matmul_peak(size: int | None) -> float:
    import torch

    return mfu.bf16_matmul_flops_per_s(size or (8192 if torch.cuda.is_available() else 2048))


# ---- reporting -----------------------------------------------------------------------------------------
METRICS = [  # key, heading, format, higher is better
    ("train_samples_per_s", "samples/s", "{:.1f}", True),
    ("train_tokens_per_s", "real tokens/s", "{:.0f}", True),
    ("wall_seconds", "end-to-end s", "{:.1f}", False),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}", False),
    ("cuda_peak_mb", "GPU peak MB", "{:.0f}", False),
    ("dev_accuracy", "dev acc", "{:.4f}", True),
    ("mfu", "MFU", "{:.2%}", True),
]


def present(metric: str, runs: list[dict]) -> bool:
    return any(r.get(metric) is not None for r in runs)


def summarise(runs: list[dict], systems: list[str]) -> dict:
    """Medians per system, and per peer the adapt/peer ratio of each round (runs pair up by round)."""
    by_system = {s: [r for r in runs if r["system"] == s] for s in systems}
    medians = {s: {m: statistics.median(r[m] for r in rs) for m, *_ in METRICS if present(m, rs)}
               for s, rs in by_system.items()}
    ratios = {}
    for peer in systems[1:]:
        ratios[peer] = {}
        for metric, *_ in METRICS:
            if metric == "dev_accuracy" or not present(metric, runs):
                continue
            per_round = [a[metric] / p[metric] for a, p in zip(by_system["adapt"], by_system[peer]) if p[metric]]
            ratios[peer][metric] = {"min": min(per_round), "median": statistics.median(per_round), "max": max(per_round)}
    return {"medians": medians, "ratios": ratios}


def print_speed_tables(summary: dict, runs: list[dict], systems: list[str], rounds: int, peak: float | None,
                       workload: str = "SST-2") -> None:
    """The medians table and the per-round adapt/peer ratio table; `peak` (FLOP/s) None when no MFU was computed."""
    shown = [m for m in METRICS if present(m[0], runs)]
    mfu_note = f"; MFU against a measured bf16 matmul peak of {peak / 1e12:.3f} TFLOP/s" if peak else ""
    table = Table(title=f"{workload}, medians over {rounds} round(s){mfu_note}")
    table.add_column("system")
    table.add_column("precision")
    for _, heading, _, _ in shown:
        table.add_column(heading, justify="right")
    for system in systems:
        values = summary["medians"][system]
        precision = next(r["mixed_precision"] for r in runs if r["system"] == system)
        table.add_row(system, precision, *[fmt.format(values[m]) for m, _, fmt, _ in shown])
    console.print(table)

    ratio_table = Table(title="adapt / peer per round: min / median / max  (throughput, MFU: >1 means adapt is "
                              "faster; time, memory: <1 means adapt needs less)")
    ratio_table.add_column("peer")
    for metric, heading, _, _ in shown:
        if metric != "dev_accuracy":
            ratio_table.add_column(heading, justify="right")
    for peer, per_metric in summary["ratios"].items():
        cells = [f"{v['min']:.2f} / [bold]{v['median']:.2f}[/bold] / {v['max']:.2f}" for v in per_metric.values()]
        ratio_table.add_row(peer, *cells)
    console.print(ratio_table)


# ---- modes ----------------------------------------------------------------------------------------------
def speed_mode(args, scratch: Path) -> dict:
    systems = ["adapt", *[f"trainer-{c}" for c in args.configs]]
    peaks = [matmul_peak(args.matmul_size)]
    per_token = flops_per_real_token(args.data, args.model, args.examples, args.seed)
    runs = []
    for round_index in range(args.rounds):
        # alternate the order every round so slow drifts of a shared machine hit both sides alike
        order = systems if round_index % 2 == 0 else systems[::-1]
        for system in order:
            result = run_system(system, args, args.seed, scratch)
            runs.append({"round": round_index, **result})
    peaks.append(matmul_peak(args.matmul_size))
    peak = max(peaks)
    for run in runs:
        run["model_flops_per_s"] = per_token * run["train_tokens_per_s"]
        run["mfu"] = run["model_flops_per_s"] / peak
    runs.sort(key=lambda r: (systems.index(r["system"]), r["round"]))
    summary = summarise(runs, systems)
    print_speed_tables(summary, runs, systems, args.rounds, peak)
    return {"runs": runs, "summary": summary, "bf16_matmul_flops_per_s": peaks,
            "model_flops_per_real_token": per_token}


def accuracy_mode(args, scratch: Path) -> dict:
    systems = ["adapt", *[f"trainer-{c}" for c in args.configs]]
    seeds = [args.seed + i for i in range(args.accuracy_seeds)]
    runs = []
    for i, seed in enumerate(seeds):
        for system in systems if i % 2 == 0 else systems[::-1]:
            runs.append(run_system(system, args, seed, scratch))
    means = {s: statistics.mean(r["dev_accuracy"] for r in runs if r["system"] == s) for s in systems}
    table = Table(title=f"SST-2 dev accuracy, {args.examples} training examples, seeds {seeds}")
    table.add_column("system")
    for seed in seeds:
        table.add_column(f"seed {seed}", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("adapt - system (points)", justify="right")
    for system in systems:
        per_seed = [r["dev_accuracy"] for s in seeds for r in runs if r["system"] == system and r["seed"] == s]
        gap = 100 * (means["adapt"] - means[system])
        table.add_row(system, *[f"{a:.4f}" for a in per_seed], f"{means[system]:.4f}", "" if system == "adapt" else f"{gap:+.2f}")
    console.print(table)
    verdicts = {s: 100 * (means["adapt"] - means[s]) >= -0.5 for s in systems[1:]}
    for system, ok in verdicts.items():
        console.print(f"adapt within 0.5 points of {system} or above: {'[green]yes' if ok else '[red]NO'}")
    return {"runs": runs, "mean_dev_accuracy": means, "adapt_within_half_point": verdicts}


def cache_mode(args, scratch: Path) -> dict:
    """Two identical adapt runs sharing one initially empty cache: the second must skip tokenization."""
    cache = scratch / "cache"
    runs = []
    for attempt in ("first (empty cache)", "second (same command)"):
        workdir = Path(tempfile.mkdtemp(dir=scratch, prefix="adapt-"))
        console.print(f"[dim]{time.strftime('%H:%M:%S')} running adapt, {attempt}[/dim]")
        runs.append({"run": attempt, **run_adapt(args.data, args.model, args.examples, args.seed, workdir, cache)})
    cached_sets = len(list((cache / "features").iterdir())) if (cache / "features").exists() else 0
    table = Table(title=f"adapt tokenization cache ({cached_sets} feature sets cached in {cache.name}/features)")
    for heading in ("run", "data_seconds", "end-to-end s", "dev acc"):
        table.add_column(heading, justify="right")
    for r in runs:
        table.add_row(r["run"], f"{r['data_seconds']:.2f}", f"{r['wall_seconds']:.1f}", f"{r['dev_accuracy']:.4f}")
    console.print(table)
    return {"runs": runs, "cached_feature_sets": cached_sets,
            "second_run_faster_data": runs[1]["data_seconds"] < runs[0]["data_seconds"]}


CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_features() -> dict:
    """The CPU features that decide adapt's precision and kernels: the /proc/cpuinfo flags among CPU_FLAGS
    (Linux; empty elsewhere), PyTorch's CPU dispatch level, and whether oneDNN has native bf16 matmul (what
    `train.mixed_precision: auto` checks: bf16 with it, fp32 without)."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return {"flags": [f for f in CPU_FLAGS if f in flags], "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def print_cpu_features() -> None:
    features = cpu_features()
    console.print(f"CPU features: {' '.join(features['flags']) or 'unknown'}; torch dispatch "
                  f"{features['torch_cpu_capability']}; native bf16 matmul: {'yes' if features['native_bf16'] else 'no (fp32)'}")


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_features": cpu_features()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sst2",
                        help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--model", default="embedded:minilm", help="model for both systems: embedded:NAME, Hub id or folder")
    parser.add_argument("--examples", type=int, default=None, help="training examples (default 2000; 8000 with --accuracy-seeds)")
    parser.add_argument("--rounds", type=int, default=3, help="speed mode: alternating rounds")
    parser.add_argument("--configs", nargs="+", choices=list(trainer_peer.CONFIGS), default=None,
                        help=f"Trainer configurations (default: all in speed mode, {BEST_PEER} with --accuracy-seeds)")
    parser.add_argument("--seed", type=int, default=42, help="seed (first seed with --accuracy-seeds)")
    parser.add_argument("--matmul-size", type=int, default=None, help="bf16 matmul size for the peak (default 2048 CPU, 8192 GPU)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--accuracy-seeds", type=int, default=0, help="accuracy mode over this many seeds")
    mode.add_argument("--cache-check", action="store_true", help="check that a second identical adapt run skips tokenization")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default runs/bench/sst2-<mode>-<time>.json)")
    args = parser.parse_args(argv)
    if args.examples is None:
        args.examples = 8000 if args.accuracy_seeds else 2000
    if args.configs is None:
        args.configs = [BEST_PEER] if args.accuracy_seeds else list(trainer_peer.CONFIGS)
    check_sst2_data(parser, args)
    return args


def check_sst2_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve `args.data` (the children run in the repository root); a parser error unless it holds SST-2."""
    args.data = args.data.resolve()
    if not (args.data / "train.tsv").exists() or not (args.data / "dev.tsv").exists():
        parser.error(f"--data {args.data}: needs train.tsv and dev.tsv (GLUE SST-2)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    mode = "accuracy" if args.accuracy_seeds else "cache" if args.cache_check else "speed"
    # offline: everything is local, and a Hub lookup must never stall a timed run
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    started = time.strftime("%Y%m%d-%H%M%S")
    print_cpu_features()
    with tempfile.TemporaryDirectory(prefix="adapt-bench-") as scratch:
        run = {"accuracy": accuracy_mode, "cache": cache_mode, "speed": speed_mode}[mode](args, Path(scratch))
    write_results({"mode": mode, "started": started, **run}, args, f"sst2-{mode}-{started}.json")


def write_results(result: dict, args: argparse.Namespace, name: str) -> Path:
    """Write a bench's results with the machine and the settings to `args.out` (default runs/bench/NAME)."""
    result = {**result, "machine": machine(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    out = args.out or ROOT / "runs" / "bench" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"results written to {out}")
    return out


if __name__ == "__main__":
    main()
