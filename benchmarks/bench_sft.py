"""`make bench`, second workload: prompt/completion SFT of the embedded SmolLM2 on Code Alpaca instructions,
adapt's default (`adapt finetune --recipe clm-instruct`, speed layer on) against plain `transformers.Trainer`
with `DataCollatorWithFlattening` (padding-free, completion-only loss; `sft_peer.py`) at equal
hyperparameters, run alternately on one machine in one session; reports samples/s, tokens/s, wall time and
memory, and the adapt/peer ratio of each round (target: median samples/s ratio >= 1.3).

Runs are launched and measured by bench_sst2.py's machinery (`run_measured`, `launch.py`); see
benchmarks/README.md."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_sst2 import (console, print_cpu_features, print_speed_tables, run_measured, summarise,  # noqa: E402
                        write_results)

SYSTEMS = ["adapt", "trainer-flattening"]
TARGET = 1.3  # issue 16: adapt at least 1.3x the peer's samples/s, median of the rounds


def instruction_pairs(alpaca_json: Path, train_examples: int, validation_examples: int,
                      seed: int) -> tuple[list[dict], list[dict]]:
    """Prompt/completion pairs from an Alpaca-format JSON array (`instruction`, `input`, `output`): prompt =
    the instruction, then a blank line and the input when there is one; completion = the output. Records with
    an empty output (two in code_alpaca_2k) are left out; the rest are shuffled with `seed`, and the first
    `train_examples` train, the next `validation_examples` validate.

    Raises:
        SystemExit: the file has fewer usable records than asked for."""
    records = [r for r in json.loads(alpaca_json.read_text(encoding="utf-8")) if r["output"].strip()]
    random.Random(seed).shuffle(records)
    wanted = train_examples + validation_examples
    if len(records) < wanted:
        raise SystemExit(f"{alpaca_json}: {len(records)} usable records, fewer than the {wanted} asked for")
    pairs = [{"prompt": r["instruction"] + (f"\n\n{r['input']}" if r["input"].strip() else ""),
              "completion": r["output"]} for r in records[:wanted]]
    return pairs[:train_examples], pairs[train_examples:]


def write_jsonl(pairs: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return path


# ---- running one system ----------------------------------------------------------------------------
def run_adapt(args: argparse.Namespace, train: Path, validation: Path, workdir: Path) -> dict:
    """adapt as a user runs it, with an empty feature cache so it tokenizes its data just as the peer does."""
    output_dir = workdir / "run"
    command = ["finetune", "--recipe", "clm-instruct", "--model", args.model_path, "--data", str(train),
               "--validation", str(validation), "--epochs", "1", "--batch-size", str(args.batch_size),
               "--lr", str(args.lr), "--seed", str(args.seed), "--output-dir", str(output_dir), "--overwrite",
               f"train.max_length={args.max_length}", "tracking=[]"]
    measured = run_measured("adapt", command, workdir, {"ADAPT_CACHE": str(workdir / "cache")})
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {"system": "adapt", "examples": metrics["train_samples"], "train_steps": metrics["train_steps"],
            "train_seconds": metrics["train_seconds"], "train_samples_per_s": metrics["train_samples_per_s"],
            "train_tokens_per_s": metrics["train_tokens_per_s"], "data_seconds": metrics["data_seconds"],
            "validation_perplexity": metrics["validation"]["perplexity"],
            "mixed_precision": metrics["mixed_precision"], "device": metrics["device"], **measured}


def run_peer(args: argparse.Namespace, train: Path, validation: Path, workdir: Path) -> dict:
    result_file = workdir / "peer.json"
    command = ["--train", str(train), "--validation", str(validation), "--model", args.model_path,
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--epochs", "1",
               "--max-length", str(args.max_length), "--seed", str(args.seed), "--out", str(result_file)]
    measured = run_measured("sft-peer", command, workdir, {})
    # the parent's wall time and RSS replace the peer's own figures, so both systems are measured alike
    return {**json.loads(result_file.read_text()), **measured}


def run_system(system: str, args: argparse.Namespace, train: Path, validation: Path, scratch: Path) -> dict:
    workdir = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{system}-"))
    console.print(f"[dim]{time.strftime('%H:%M:%S')} running {system} ({args.examples} pairs)[/dim]")
    runner = run_adapt if system == "adapt" else run_peer
    result = runner(args, train, validation, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def speed_mode(args: argparse.Namespace, scratch: Path) -> dict:
    from adapt.assets import resolve_model_path

    # both systems load this one folder: the same weights and tokenizer, and adapt's fresh ADAPT_CACHE does
    # not make it convert the embedded GGUF checkpoint again in every run
    args.model_path = resolve_model_path(args.model)
    train_pairs, validation_pairs = instruction_pairs(args.data / "code_alpaca_2k.json", args.examples,
                                                      args.validation_examples, args.seed)
    train = write_jsonl(train_pairs, scratch / "train.jsonl")
    validation = write_jsonl(validation_pairs, scratch / "validation.jsonl")
    runs = []
    for round_index in range(args.rounds):
        # alternate the order every round so slow drifts of a shared machine hit both sides alike
        for system in SYSTEMS if round_index % 2 == 0 else SYSTEMS[::-1]:
            runs.append({"round": round_index, **run_system(system, args, train, validation, scratch)})
    runs.sort(key=lambda r: (SYSTEMS.index(r["system"]), r["round"]))
    summary = summarise(runs, SYSTEMS)
    print_speed_tables(summary, runs, SYSTEMS, args.rounds, None,
                       workload=f"SFT: SmolLM2 on {args.examples} Code Alpaca pairs, batch {args.batch_size}, "
                                f"max length {args.max_length}")
    ratio = summary["ratios"][SYSTEMS[1]]["train_samples_per_s"]["median"]
    console.print(f"adapt / {SYSTEMS[1]} samples/s, median of {args.rounds} round(s): {ratio:.2f} "
                  f"(target >= {TARGET}: {'[green]met' if ratio >= TARGET else '[red]NOT met'}[/])")
    for system in SYSTEMS:  # both should learn alike: a sanity check, not a score
        perplexities = [r["validation_perplexity"] for r in runs if r["system"] == system]
        console.print(f"[dim]{system}: validation perplexity after training, median "
                      f"{statistics.median(perplexities):.3f}[/dim]")
    return {"runs": runs, "summary": summary, "samples_per_s_ratio_median": ratio, "target_met": ratio >= TARGET}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "code_alpaca_2k",
                        help="folder with code_alpaca_2k.json (Alpaca format)")
    parser.add_argument("--model", default="embedded:smollm2", help="model for both systems: embedded:NAME, Hub id or folder")
    parser.add_argument("--examples", type=int, default=64, help="training pairs (seeded sample)")
    parser.add_argument("--validation-examples", type=int, default=32, help="pairs both systems score after training")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256, help="prompt + completion tokens, cut from the right")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--seed", type=int, default=42, help="picks the pairs, and seeds both systems")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default runs/bench/sft-<time>.json)")
    args = parser.parse_args(argv)
    args.data = args.data.resolve()  # the children run in the repository root
    if not (args.data / "code_alpaca_2k.json").exists():
        parser.error(f"--data {args.data}: needs code_alpaca_2k.json")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # offline: everything is local, and a Hub lookup must never stall a timed run
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    started = time.strftime("%Y%m%d-%H%M%S")
    print_cpu_features()
    with tempfile.TemporaryDirectory(prefix="adapt-bench-sft-") as scratch:  # the JSONL files live here
        run = speed_mode(args, Path(scratch))
    write_results({"workload": "sft", "started": started, **run}, args, f"sft-{started}.json")


if __name__ == "__main__":
    main()
