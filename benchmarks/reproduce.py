"""`make reproduce`: run every recipe on the shared benchmark data with the embedded models on small fixed
budgets (each an `adapt finetune` child process with explicit overrides), then write results/RESULTS.md
(our numbers next to published references), one plot per run, and results/MACHINE.md.

    python benchmarks/reproduce.py --data ../shared/data --out results [--only sentiment,ner] [--dry-run]

The budgets are sized so that all runs together take under 3 hours on a 2-core CPU. Same seed and same
machine give the same numbers (CPU kernels are deterministic for a fixed thread count)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from adapt.plots import write_run_plots
from adapt.recipe import available_recipes, load_recipe_dict
from adapt.runs import format_duration, key_metric

ROOT = Path(__file__).resolve().parents[1]

SHARED_PREFIX = "../shared/data/"  # how the recipes name the shared benchmark data
SEED = 42
PLOT_PREFERENCE = ("per_type_f1.png", "confusion_matrix.png", "loss_curve.png")


@dataclass
class Benchmark:
    name: str  # also the run folder and the plot name
    recipe: str
    dataset: str
    max_steps: int
    # data sources relative to --data; None keeps the recipe's own sources (re-rooted to --data)
    data: dict[str, str] | None = None
    flags: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    reference: str = "no published figure cited"


BENCHMARKS = [
    Benchmark(
        "sentiment", "sentiment", "SST-2 (GLUE), 8,000 train examples, dev 872", 250,
        data={"train": "sst2/train.tsv", "validation": "sst2/dev.tsv"},
        flags=["--max-train-examples", "8000"], overrides=["data.columns.text=sentence"],
        reference="accuracy 92.32: bert-base-cased (110M), full train set, 3 epochs "
                  "(Hugging Face transformers, examples/pytorch/text-classification README, GLUE table)",
    ),
    Benchmark(
        "pairs", "pairs", "GLUE MRPC (Hugging Face Hub)", 200,
        reference="no local copy of MRPC in the shared data; needs the Hub",
    ),
    Benchmark(
        "ner", "ner", "CoNLL-2003 English (IOB2), dev 3,250 / test 3,453 sentences", 600,
        reference="test F1 92.4: BERT-base (110M, cased), full train set, document context "
                  "(Devlin et al. 2019, BERT paper, Table 3)",
    ),
    Benchmark(
        "qa", "qa", "SQuAD v1.1 dev: 80% of articles train (2 epochs), all questions of the other 20% scored", 540,
        reference="F1 88.5 / EM 80.8: BERT-base (110M, uncased), full SQuAD train set (87,599 questions), "
                  "scored on all of dev (Devlin et al. 2019, Table 2; the transformers question-answering "
                  "example README reports F1 88.52 / EM 81.22)",
    ),
    Benchmark(
        "summarize", "summarize", "SciTLDR-A (abstract -> TLDR), 100 dev / 100 test papers scored", 200,
        overrides=["data.max_eval_examples=100", "train.eval_on_start=true"],
    ),
    Benchmark(
        "translate", "translate", "Multi30k en->de, 500 val / 500 test_2016_flickr sentences scored", 600,
        overrides=["data.max_eval_examples=500", "train.eval_on_start=true"],
    ),
    Benchmark(
        "clm", "clm", "tiny Shakespeare (90/10 split, 256-token blocks)", 60,
        overrides=["train.eval_on_start=true"],
    ),
]


# ---- commands ----------------------------------------------------------------------------------------
def data_sources(bench: Benchmark, data_dir: Path) -> tuple[dict[str, str], str | None]:
    """({train/validation/test: local path}, None) or ({}, why the benchmark cannot run here)."""
    if bench.recipe not in available_recipes():
        return {}, f"recipe '{bench.recipe}' is not among the packaged recipes (src/adapt/recipes/)"
    if bench.data is not None:
        sources = {role: str(data_dir / rel) for role, rel in bench.data.items()}
    else:
        raw, _ = load_recipe_dict(bench.recipe)
        sources = {}
        for role in ("train", "validation", "test"):
            ref = (raw.get("data") or {}).get(role)
            if ref is None:
                continue
            if not str(ref).startswith(SHARED_PREFIX):
                return {}, f"its data '{ref}' is not in the shared benchmark data (needs the Hub or another source)"
            sources[role] = str(data_dir / str(ref)[len(SHARED_PREFIX):])
    missing = [path for path in sources.values() if not Path(path).exists()]
    if missing:
        return {}, f"data file {missing[0]} does not exist"
    return sources, None


def finetune_command(bench: Benchmark, sources: dict[str, str], run_dir: Path) -> list[str]:
    flag_of = {"train": "--data", "validation": "--validation", "test": "--test"}
    command = [sys.executable, "-m", "adapt", "finetune", "--recipe", bench.recipe, "--output-dir", str(run_dir),
               "--overwrite", "--seed", str(SEED), "--max-steps", str(bench.max_steps), *bench.flags]
    for role, path in sources.items():
        command += [flag_of[role], path]
    return command + bench.overrides + ["tracking=[]"]


def display_command(command: list[str], data_dir: Path, data_arg: str) -> str:
    """The command as a user types it in the repository: `adapt ...`, paths relative to the checkout and
    the data folder as given on the command line."""
    root, data = f"{ROOT}/", str(data_dir)
    shown = [arg.replace(data, data_arg.rstrip("/")).replace(root, "") for arg in command[3:]]
    return shlex.join(["adapt", *shown])


# ---- running ---------------------------------------------------------------------------------------
def run_benchmark(bench: Benchmark, sources: dict[str, str], runs_dir: Path, out: Path) -> dict:
    run_dir = runs_dir / bench.name
    log_path = runs_dir / f"{bench.name}.log"
    runs_dir.mkdir(parents=True, exist_ok=True)
    command = finetune_command(bench, sources, run_dir)
    print(f"[{bench.name}] {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if code != 0:
        lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        return {"status": f"failed (exit {code}): {lines[-1][:200] if lines else 'no output'}; log {log_path}"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    write_run_plots(run_dir)
    plot = next((run_dir / name for name in PLOT_PREFERENCE if (run_dir / name).exists()), None)
    if plot is not None:
        shutil.copyfile(plot, out / f"{bench.name}.png")
    metric, value = key_metric(metrics)
    test_value = metrics.get("test", {}).get(metric)
    print(f"[{bench.name}] done in {format_duration(wall)}: validation {metric} = {value}", flush=True)
    return {"status": "ok", "wall_seconds": wall, "metrics": metrics, "metric": metric, "value": value,
            "test_value": test_value, "plot": f"{bench.name}.png" if plot else None}


# ---- reports ---------------------------------------------------------------------------------------
def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) >= 1.5 else f"{value:.4f}"


def results_markdown(rows: list[tuple[Benchmark, str, dict]], data_dir: Path) -> str:
    lines = [
        "# adapt: reproduced results",
        "",
        f"Produced by `python benchmarks/reproduce.py --data {data_dir}` (`make reproduce`) on the machine described "
        "in [MACHINE.md](MACHINE.md), seed 42. Every run is a plain `adapt finetune` with the recipe's settings "
        "and the explicit overrides shown below, on a small fixed budget of optimizer steps so that all of them "
        "finish on a 2-core CPU in under 3 hours.",
        "",
        "**The published figures use 110M-parameter models trained on the full data sets for several epochs; our "
        "runs use the embedded 22.7M-parameter MiniLM (135M SmolLM2 for language modelling) for a few hundred "
        "steps. They show that each pipeline learns and scores correctly, not state-of-the-art accuracy.**",
        "",
        "*Before training* is the same model scored on the same validation examples before its first update "
        "(`train.eval_on_start=true`): the baseline each generation and language-modelling run must beat.",
        "",
        "| run | task | dataset | model | steps | wall time | train samples/s | validation metric | before training | "
        "test | published reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for bench, model, result in rows:
        if result["status"] != "ok":
            lines.append(f"| {bench.name} | {bench.recipe} | {bench.dataset} | {model} | - | - | - | "
                         f"{result['status']} | - | - | {bench.reference} |")
            continue
        m = result["metrics"]
        lines.append(
            f"| {bench.name} | {bench.recipe} | {bench.dataset} | {model} | {m.get('train_steps')} | "
            f"{format_duration(result['wall_seconds'])} | {m.get('train_samples_per_s', 0):.1f} | "
            f"{result['metric']} {_number(result['value'])} | "
            f"{_number(m.get('initial_validation', {}).get(result['metric']))} | "
            f"{_number(result['test_value'])} | {bench.reference} |"
        )
    total = sum(result.get("wall_seconds", 0.0) for _, _, result in rows)
    lines += ["", f"All runs together: {format_duration(total)}.", "", "## Commands", ""]
    for bench, _, result in rows:
        if "command" in result:
            lines.append(f"- `{bench.name}`: `{result['command']}`")
    plots = [(bench.name, result["plot"]) for bench, _, result in rows if result.get("plot")]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({plot})" for name, plot in plots]
    return "\n".join(lines) + "\n"


def machine_markdown() -> str:
    import accelerate
    import datasets
    import psutil
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    rows = {
        "CPU": cpu,
        "logical cores": os.cpu_count(),
        "physical cores": psutil.cpu_count(logical=False),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "bf16 CPU matmul (AVX512-BF16/AMX)": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        "torch threads": torch.get_num_threads(),
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
    }
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    return f"# Machine used for RESULTS.md\n\n| | |\n|---|---|\n{table}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding the shared benchmark data sets")
    parser.add_argument("--out", default="results", help="where RESULTS.md, MACHINE.md and the plots go")
    parser.add_argument("--runs", default="runs/reproduce", help="where the run folders and logs go")
    parser.add_argument("--only", action="append", default=[],
                        help="run only these benchmarks (comma-separated or repeated): "
                             + ", ".join(b.name for b in BENCHMARKS))
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args()

    wanted = {name for item in args.only for name in item.split(",") if name}
    unknown = wanted - {b.name for b in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from "
                     + ", ".join(b.name for b in BENCHMARKS))
    chosen = [b for b in BENCHMARKS if not wanted or b.name in wanted]
    data_dir, out, runs_dir = Path(args.data).resolve(), (ROOT / args.out), (ROOT / args.runs)
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)

    rows = []
    for bench in chosen:
        sources, unavailable = data_sources(bench, data_dir)
        model = load_recipe_dict(bench.recipe)[0].get("model", "-") if bench.recipe in available_recipes() else "-"
        if unavailable:
            print(f"[{bench.name}] not available: {unavailable}", flush=True)
            rows.append((bench, model, {"status": f"not available: {unavailable}"}))
            continue
        command = finetune_command(bench, sources, runs_dir / bench.name)
        if args.dry_run:
            print(shlex.join(command))
            continue
        result = run_benchmark(bench, sources, runs_dir, out)
        result["command"] = display_command(command, data_dir, args.data)
        rows.append((bench, model, result))
    if args.dry_run:
        return 0
    (out / "RESULTS.md").write_text(results_markdown(rows, Path(args.data)), encoding="utf-8")
    (out / "MACHINE.md").write_text(machine_markdown(), encoding="utf-8")
    print(f"wrote {out / 'RESULTS.md'} and {out / 'MACHINE.md'}")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("not available") for _, _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
