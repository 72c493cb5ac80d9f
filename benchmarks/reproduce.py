"""`make reproduce`: run every recipe on the shared benchmark data with the embedded models on small fixed
budgets (each an `adapt finetune` child process with explicit overrides), then write results/RESULTS.md
(our numbers next to published references), one plot per run, and results/MACHINE.md (the machine of this
invocation; each stored result also keeps a short tag of the machine it ran on, shown per row).

    python benchmarks/reproduce.py --data ../shared/data --out results [--only sentiment,ner] [--dry-run]

Each run's result is kept in results/runs/<name>.json, and RESULTS.md is rebuilt from all of them, so `--only`
refreshes some rows and keeps the others (rows never run say "not run yet"). A two-step benchmark
(`model_from`, e.g. sentiment-mlm after mlm) trains from the run folder of its first step.

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

from adapt.outputs import atomic_write_json, atomic_write_text
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
    # a two-step benchmark: the name of the benchmark whose saved run folder is this one's --model
    model_from: str | None = None


# SmolLM2 (135M) steps of 16 Multi30k pairs that fit the translate row's CPU budget (~12 minutes with the
# baseline, validation and test generations)
TRANSLATE_STEPS = 120

BENCHMARKS = [
    Benchmark(
        "sentiment", "sentiment", "SST-2 (GLUE), 8,000 train examples, dev 872", 250,
        data={"train": "sst2/train.tsv", "validation": "sst2/dev.tsv"},
        flags=["--max-train-examples", "8000"], overrides=["data.columns.text=sentence"],
        reference="accuracy 92.32: bert-base-cased (110M), full train set, 3 epochs "
                  "(Hugging Face transformers, examples/pytorch/text-classification README, GLUE table)",
    ),
    Benchmark(
        # ~1.5x a sentiment step (measured here by CPU time): ~5 minutes where sentiment's 250 steps take 44 s
        "mlm", "mlm", "SST-2 train sentences as unlabelled text (67,349); masked-token perplexity on dev 872", 1000,
        data={"train": "sst2/train.tsv", "validation": "sst2/dev.tsv"},
        overrides=["data.columns.text=sentence", "train.eval_on_start=true"],
        reference="no published figure: masked-LM domain adaptation, step 1 of 2 (transformers "
                  "examples/pytorch/language-modeling run_mlm); the sentiment-mlm row is step 2",
    ),
    Benchmark(
        "sentiment-mlm", "sentiment", "SST-2 (GLUE), 8,000 train examples, dev 872, from the mlm row's model", 250,
        data={"train": "sst2/train.tsv", "validation": "sst2/dev.tsv"},
        flags=["--max-train-examples", "8000"], overrides=["data.columns.text=sentence"], model_from="mlm",
        reference="the sentiment row: the same budget and seed from embedded:minilm without the MLM step",
    ),
    Benchmark(
        "pairs", "pairs", "GLUE MRPC (local TSV), train 3,668 / dev 408 pairs", 200,
        data={"train": "mrpc/train.tsv", "validation": "mrpc/dev.tsv"},
        overrides=["data.columns.text=#1 String", "data.columns.text_pair=#2 String", "data.columns.label=Quality"],
        reference="dev F1 88.85 / accuracy 84.07: bert-base-cased (110M), full train set, 3 epochs (Hugging Face "
                  "transformers, examples/pytorch/text-classification README, GLUE table)",
    ),
    Benchmark(
        "similarity", "similarity", "STS-B (regression, 0-5 scores): train 5,749 pairs (3 epochs of 16), dev "
        "1,500 / test 1,379 scored by Pearson", 1080,
        reference="dev Pearson 0.85-0.89: BERT-base (110M), full train set (Devlin et al. 2019, GLUE table; the "
                  "transformers text-classification README: Pearson/Spearman 88.64/88.48, bert-base-cased)",
    ),
    Benchmark(
        "emotions", "emotions", "GoEmotions (multi-label, 28 labels): 1,000 steps of 32 of 43,410 train comments, "
        "threshold tuned on dev 5,426, test 5,427 scored (micro/macro F1)", 1000,
        reference="test macro F1 0.46: BERT-base (110M), full train set, threshold 0.3 (Demszky et al. 2020, "
                  "GoEmotions, full 28-label taxonomy)",
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
        "translate", "translate",
        "Multi30k en->de, SmolLM2 prompt/completion, greedy; BLEU on 256 val / 500 test_2016_flickr sentences",
        TRANSLATE_STEPS, overrides=["data.max_eval_examples=500", "train.eval_on_start=true"],
    ),
    Benchmark(
        "translate-encdec", "translate-encdec",
        "Multi30k en->de, MiniLM encoder-decoder (uncased vocabulary), 500 val / 500 test_2016_flickr sentences scored",
        600, overrides=["data.max_eval_examples=500", "train.eval_on_start=true"],
    ),
    Benchmark(
        "clm", "clm", "tiny Shakespeare (90/10 split, 256-token blocks)", 60,
        overrides=["train.eval_on_start=true"],
    ),
    Benchmark(
        "chat", "chat", "FastChat dummy_conversation (ShareGPT, 1-3 turns; 450 train / 50 validation conversations), "
        "loss on assistant turns; perplexity over assistant tokens, greedy replies to the last user turn", 56,
        overrides=["train.eval_on_start=true"],
        reference="no published figure: FastChat's synthetic identity set is a smoke test (SOURCE.md), not a "
                  "benchmark; the row shows assistant-token perplexity before and after one epoch",
    ),
    Benchmark(
        "dpo", "dpo", "Anthropic HH-RLHF harmless-base test, SmolLM2 + LoRA (lr 5e-4): all 2,077 train pairs (1 epoch), "
        "128 of 231 held-out pairs scored, 160 tokens", 260,
        reference="no published figure for this model and split: reward accuracy above 0.5 (chance) on held-out "
                  "pairs is the bar (TRL DPOTrainer metric rewards/accuracies; an untrained policy ties at 0)",
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
    """The `adapt finetune` child command of `bench` writing `run_dir`; a two-step benchmark (`model_from`)
    trains from the run folder of that benchmark beside `run_dir`."""
    flag_of = {"train": "--data", "validation": "--validation", "test": "--test"}
    command = [sys.executable, "-m", "adapt", "finetune", "--recipe", bench.recipe, "--output-dir", str(run_dir),
               "--overwrite", "--seed", str(SEED), "--max-steps", str(bench.max_steps), *bench.flags]
    if bench.model_from:
        command += ["--model", str(run_dir.parent / bench.model_from)]
    for role, path in sources.items():
        command += [flag_of[role], path]
    return command + bench.overrides + ["tracking=[]"]


def display_command(command: list[str], data_dir: Path, data_arg: str) -> str:
    """The command as a user types it in the repository: `adapt ...`, paths relative to the checkout and
    the data folder as given on the command line."""
    root, data = f"{ROOT}/", str(data_dir)
    shown = [arg.replace(data, data_arg.rstrip("/")).replace(root, "") for arg in command[3:]]
    return shlex.join(["adapt", *shown])


def model_label(bench: Benchmark) -> str:
    """The model column of a row: the recipe's model, or for a two-step benchmark the run it starts from."""
    if bench.model_from:
        first = next((b for b in BENCHMARKS if b.name == bench.model_from), None)
        base = model_label(first) if first else "?"
        return f"{base} after the {bench.model_from} row"
    return load_recipe_dict(bench.recipe)[0].get("model", "-") if bench.recipe in available_recipes() else "-"


def missing_first_step(bench: Benchmark, runs_dir: Path, ran_now: dict[str, dict]) -> str | None:
    """Why a two-step benchmark cannot run now (its first step's model is missing, or that step failed in
    this invocation, so the folder holds an older model), else None."""
    if not bench.model_from:
        return None
    first = ran_now.get(bench.model_from)
    if first is not None and first["status"] != "ok":
        return f"the {bench.model_from} row it starts from failed"
    if not (runs_dir / bench.model_from / "config.json").exists():
        return (f"it starts from the {bench.model_from} row's model ({runs_dir / bench.model_from}), which is not "
                f"there; run --only {bench.model_from},{bench.name}")
    return None


# ---- stored results -----------------------------------------------------------------------------------
def result_file(out: Path, name: str) -> Path:
    """Where a benchmark's latest result is kept: results/runs/<name>.json beside RESULTS.md."""
    return out / "runs" / f"{name}.json"


def store_result(out: Path, bench: Benchmark, result: dict) -> None:
    """Keep `result` (ok or failed) as the benchmark's latest, atomically: RESULTS.md is rebuilt from these."""
    atomic_write_json(result_file(out, bench.name), {"benchmark": bench.name, **result})


def stored_result(out: Path, bench: Benchmark) -> dict | None:
    """The benchmark's latest stored result, or None (never run, or an unreadable file, which is reported)."""
    path = result_file(out, bench.name)
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        print(f"[{bench.name}] ignoring {path}: unreadable ({type(err).__name__}); rerun --only {bench.name}")
        return None
    return result if isinstance(result, dict) and "status" in result else None


def collect_rows(out: Path, data_dir: Path, data_arg: str, runs_dir: Path) -> list[tuple[Benchmark, str, dict]]:
    """One row per benchmark in BENCHMARKS, from its stored result; a row never run says why ("not run yet" or
    "not available: ..."), and a stored result whose command is not today's is marked stale."""
    rows = []
    for bench in BENCHMARKS:
        sources, unavailable = data_sources(bench, data_dir)
        result = stored_result(out, bench)
        if result is None:
            result = {"status": f"not available: {unavailable}" if unavailable else "not run yet"}
        elif not unavailable and result.get("command"):
            current = display_command(finetune_command(bench, sources, runs_dir / bench.name), data_dir, data_arg)
            result["stale"] = current != result["command"]
        rows.append((bench, model_label(bench), result))
    return rows


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
        f"Produced by `python benchmarks/reproduce.py --data {data_dir}` (`make reproduce`), seed 42. Each row is "
        "the latest run of its benchmark, possibly from an earlier invocation on another machine: its *machine* "
        "column names the machine it ran on (listed below the table; [MACHINE.md](MACHINE.md) details the "
        "machine of the latest invocation). Every run is a plain `adapt finetune` with the recipe's settings "
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
        "| run | task | dataset | model | steps | wall time | machine | train samples/s | validation metric | "
        "before training | test | published reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    machines: dict[str, str] = {}  # machine tag -> its label in the table (M1, M2, ...), in order of appearance

    def machine(result: dict) -> str:
        if "command" not in result:  # never ran: no machine
            return "-"
        if not result.get("machine"):
            return "not recorded"
        return machines.setdefault(result["machine"], f"M{len(machines) + 1}")

    for bench, model, result in rows:
        if result["status"] != "ok":
            lines.append(f"| {bench.name} | {bench.recipe} | {bench.dataset} | {model} | - | - | {machine(result)} | "
                         f"- | {result['status']} | - | - | {bench.reference} |")
            continue
        m = result["metrics"]
        stale = " (settings changed since: rerun this row)" if result.get("stale") else ""
        lines.append(
            f"| {bench.name}{stale} | {bench.recipe} | {bench.dataset} | {model} | {m.get('train_steps')} | "
            f"{format_duration(result['wall_seconds'])} | {machine(result)} | {m.get('train_samples_per_s', 0):.1f} | "
            f"{result['metric']} {_number(result['value'])} | "
            f"{_number(m.get('initial_validation', {}).get(result['metric']))} | "
            f"{_number(result['test_value'])} | {bench.reference} |"
        )
    if machines:
        lines += ["", "Machines: " + "; ".join(f"{label} = {tag}" for tag, label in machines.items()) + "."]
    total = sum(result.get("wall_seconds", 0.0) for _, _, result in rows)
    lines += ["", f"Wall times of the rows shown, summed: {format_duration(total)}. Each row is the latest run of its "
              "benchmark (kept in runs/NAME.json beside this file; `--only NAME` refreshes one row and keeps the "
              "others), so the rows may come from separate invocations and machines: the sum is not the duration "
              "of one `make reproduce`.",
              "", "## Commands", ""]
    for bench, _, result in rows:
        if "command" in result:
            when = f" (run {result['finished']})" if result.get("finished") else ""
            lines.append(f"- `{bench.name}`{when}: `{result['command']}`")
    plots = [(bench.name, result["plot"]) for bench, _, result in rows if result.get("plot")]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({plot})" for name, plot in plots]
    return "\n".join(lines) + "\n"


def machine_facts() -> dict[str, object]:
    """This machine and software, as MACHINE.md lists them (name -> value)."""
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
    return {
        "CPU": cpu,
        "logical cores": os.cpu_count(),
        "physical cores": psutil.cpu_count(logical=False),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "CPU vector instructions (torch)": torch.backends.cpu.get_cpu_capability(),
        "bf16 CPU matmul (AVX512-BF16/AMX)": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        "torch threads": torch.get_num_threads(),
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
    }


def machine_tag(facts: dict[str, object]) -> str:
    """The short machine description stored with each result (runs/NAME.json "machine") and shown per row of
    RESULTS.md: CPU model, vector instructions, bf16 matmul support, and the GPU if any."""
    bf16 = "bf16 matmul" if facts["bf16 CPU matmul (AVX512-BF16/AMX)"] else "no bf16 matmul"
    gpu = f", GPU {facts['GPU']}" if facts["GPU"] != "none" else ""
    return f"{facts['CPU']} ({facts['logical cores']} cores, {facts['CPU vector instructions (torch)']}, {bf16}){gpu}"


def machine_markdown(facts: dict[str, object]) -> str:
    table = "\n".join(f"| {k} | {v} |" for k, v in facts.items())
    return (f"# Machine of the latest reproduce.py invocation\n\nRows of RESULTS.md run elsewhere name their own "
            f"machine.\n\n| | |\n|---|---|\n{table}\n")


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

    ran_now: dict[str, dict] = {}  # this invocation's results (a two-step benchmark checks its first step's)
    facts = None if args.dry_run else machine_facts()
    for bench in chosen:
        sources, unavailable = data_sources(bench, data_dir)
        if not unavailable and not args.dry_run:
            unavailable = missing_first_step(bench, runs_dir, ran_now)
        if unavailable:
            print(f"[{bench.name}] not available: {unavailable}", flush=True)
            ran_now[bench.name] = {"status": f"not available: {unavailable}"}
            continue
        command = finetune_command(bench, sources, runs_dir / bench.name)
        if args.dry_run:
            print(shlex.join(command))
            continue
        result = run_benchmark(bench, sources, runs_dir, out)
        result["command"] = display_command(command, data_dir, args.data)
        result["finished"] = time.strftime("%Y-%m-%d %H:%M")
        result["machine"] = machine_tag(facts)
        store_result(out, bench, result)
        ran_now[bench.name] = result
    if args.dry_run:
        return 0
    rows = collect_rows(out, data_dir, args.data, runs_dir)  # every benchmark's latest result, not only these
    atomic_write_text(out / "RESULTS.md", results_markdown(rows, Path(args.data)))
    atomic_write_text(out / "MACHINE.md", machine_markdown(facts))
    print(f"wrote {out / 'RESULTS.md'} (rows refreshed now: {', '.join(ran_now) or 'none'}) and {out / 'MACHINE.md'}")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("not available") for r in ran_now.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
