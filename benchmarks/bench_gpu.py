"""Issue 16, acceptance 5: the SST-2 bench on a CUDA GPU. adapt's sentiment fine-tune with its defaults (speed
layer on: bf16 weights with fp32 masters, padding-free batches through transformers' attention registry)
against `transformers.Trainer` in its best standard configuration for sequence classification, at equal
hyperparameters, alternately, at batch 32 and at a larger batch (a small model on a GPU is launch-bound at 32);
reports samples/s, real tokens/s, MFU, wall time and GPU memory. Started by benchmarks/gpu_check.sh.

The model is MiniLM's architecture (BertModel, 6 layers, width 384) with RANDOM weights built from the config
and tokenizer files in --model-files: for speed a random model computes exactly what the trained one does, and
its 88 MB of weights need not travel to the GPU machine. Dev accuracy is therefore meaningless here and is not
reported (it is kept in the JSON as `dev_accuracy_random_weights`); `make bench` measures accuracy.

The Trainer side (`trainer_peer.py`, configuration "bf16": dynamic padding, length-grouped batches, bf16
autocast) runs with attn_implementation="sdpa", and also "flash_attention_2" where flash_attn imports (its
transformers integration unpads each batch by its attention_mask and calls the varlen kernel).
`DataCollatorWithFlattening` is no Trainer configuration for this task: it builds causal-LM labels
(`[-100] + labels[1:]` per example, which fails on SST-2's integer labels), and BertForSequenceClassification
on the flattened [1, total_tokens] row pools only the first sequence's [CLS] (one logit row per batch); it is
the peer of the prompt/completion workload (bench_sft.py).

Also recorded: torch / transformers versions, whether `torch.nn.attention.varlen.varlen_attn` and flash_attn
exist; and with --probe (instead of the bench, in its own process) a probe of adapt's padding-free on this
device (`padding_free_probe`): which attention path a training step and an evaluation forward take, how far
its logits and gradients are from transformers' sdpa forward, and a training step's time of each.

    python benchmarks/bench_gpu.py --model-files .gpu/minilm --data .gpu/sst2 --out OUT.json [--probe]
    python benchmarks/bench_gpu.py --dry ...   # CPU, tiny sizes: checks the script end to end"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_sst2  # noqa: E402
import trainer_peer  # noqa: E402
from bench_sst2 import console  # noqa: E402

PEER_CONFIG = "bf16"  # trainer_peer.CONFIGS: dynamic padding + length grouping + bf16 autocast
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


# ---- set-up ---------------------------------------------------------------------------------------------
def build_random_model(model_files: Path, target: Path, seed: int = 0) -> Path:
    """A checkpoint folder of `model_files`' architecture with random weights: `AutoModel.from_config` of its
    config.json (for MiniLM a BertModel, as the embedded checkpoint is, so each system adds its own
    classifier head), initialised from `seed`, saved as safetensors, with the tokenizer files copied.

    Raises:
        FileNotFoundError: `model_files` has no config.json."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_files)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (model_files / name).exists():
            shutil.copy(model_files / name, target / name)
    return target


def dev_subset(data: Path, target: Path, sentences: int) -> Path:
    """A copy of the SST-2 folder `data` whose dev.tsv keeps its header and first `sentences` rows."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "train.tsv", target / "train.tsv")
    rows = (data / "dev.tsv").read_text().splitlines(keepends=True)
    (target / "dev.tsv").write_text("".join(rows[:sentences + 1]))
    return target


def module_available(name: str) -> str | None:
    """`name`'s version (or "yes") when it imports, else None."""
    try:
        module = importlib.import_module(name)
    except Exception:  # an installed but broken flash_attn raises more than ImportError
        return None
    return getattr(module, "__version__", "yes")


def environment() -> dict:
    """Versions and the attention kernels this machine offers."""
    import torch
    import transformers

    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        varlen = True
    except ImportError:
        varlen = False
    info = {**bench_sst2.machine(), "transformers": transformers.__version__, "cuda": torch.version.cuda,
            "torch_varlen_attn": varlen, "flash_attn": module_available("flash_attn")}
    if torch.cuda.is_available():
        info["gpu_bf16"] = torch.cuda.is_bf16_supported()
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return info


# ---- where adapt's padding-free attention goes ----------------------------------------------------------
@contextlib.contextmanager
def counting_calls(calls: Counter, targets: list[tuple[object, str, str]]):
    """Count calls of each `owner.name` (a module's function or a class's method) under `label` while the block
    runs; a name the owner lacks is skipped. Calls that return None are counted as `label + " -> None"` (the
    caller then falls back to another path). The owners' attributes are restored afterwards."""
    saved = []
    for owner, name, label in targets:
        original = getattr(owner, name, None)
        if original is None:
            continue

        def wrapper(*args, _original=original, _label=label, **kwargs):
            result = _original(*args, **kwargs)
            calls[_label if result is not None else f"{_label} -> None"] += 1
            return result

        saved.append((owner, name, name in vars(owner), vars(owner).get(name)))
        setattr(owner, name, wrapper)
    try:
        yield calls
    finally:
        for owner, name, own, value in reversed(saved):
            if own:
                setattr(owner, name, value)
            else:  # inherited (e.g. autograd.Function.apply): uncover it again
                delattr(owner, name)


def attention_targets() -> list[tuple[object, str, str]]:
    """Where adapt's "adapt_varlen" attention may end, as counting_calls targets (those that exist here)."""
    from adapt.speed import padding_free

    targets = [(getattr(padding_free, "NativeAttention", None), "apply", "native CPU kernel"),
               (padding_free, "_gpu_varlen", "gpu varlen kernel"), (padding_free, "_padded_sdpa", "padded sdpa"),
               (padding_free, "sdpa_attention_forward", "transformers sdpa (batch not packed)")]
    with contextlib.suppress(ImportError):
        import torch.nn.attention.varlen as varlen_module
        targets.append((varlen_module, "varlen_attn", "torch varlen_attn"))
    if module_available("flash_attn"):
        import flash_attn
        targets.append((flash_attn, "flash_attn_varlen_func", "flash_attn_varlen_func"))
    return targets


def padding_free_probe(model_dir: Path, texts: list[str], batch_size: int, timed_steps: int = 20) -> dict:
    """adapt's padding-free on this device, in the dtype adapt trains in here (bf16 on CUDA, fp32 on CPU), on
    one right-padded batch of `texts` (max length 128) of the seq-classification model in `model_dir`:
      - "paths": the attention functions reached in a training step (dropout as configured) and an evaluation
        forward (counting_calls labels);
      - "parity" (dropout off): max |logits - sdpa logits| and the relative L2 error of all parameter gradients
        of padding-free and of transformers' sdpa forward in that dtype, both against sdpa in fp32. The
        padding-free error must stay within 2x the sdpa error plus 1e-3 (the same rounding, other kernels);
      - "step_ms" (training mode): median time of a forward + backward of that batch, transformers' sdpa
        forward against padding-free, both in that dtype (`timed_steps` after 3 warm-ups)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from adapt.speed import padding_free

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(texts[:batch_size], padding=True, truncation=True, max_length=trainer_peer.MAX_LENGTH,
                      return_tensors="pt").to(device)
    torch.manual_seed(0)
    reference = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, attn_implementation="sdpa")
    reference = reference.to(device, torch.float32)
    result = {"device": device, "dtype": str(dtype).removeprefix("torch."), "batch": list(batch["input_ids"].shape),
              "real_tokens": int(batch["attention_mask"].sum()), "unsupported": padding_free.unsupported(reference)}

    def logits_and_grads(model):
        model.zero_grad(set_to_none=True)
        logits = model(**batch).logits
        logits.float().square().sum().backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        return logits.detach().float(), grads

    def error(logits, grads, exact):
        return {"logits_max_abs": float((logits - exact[0]).abs().max()),
                "grads_rel_l2": float((grads - exact[1]).norm() / exact[1].norm())}

    reference.eval()  # dropout off: parity
    exact = logits_and_grads(reference)
    plain = copy.deepcopy(reference).to(dtype)
    fast = copy.deepcopy(reference).to(dtype)
    result["installed"] = padding_free.install(fast)
    calls = Counter()
    with counting_calls(calls, attention_targets()):
        fast_error = error(*logits_and_grads(fast), exact)
    result["paths"] = {"evaluation forward + backward": dict(calls)}
    plain_error = error(*logits_and_grads(plain), exact)
    result["parity"] = {"padding_free_vs_fp32_sdpa": fast_error, "sdpa_same_dtype_vs_fp32_sdpa": plain_error,
                        "ok": all(fast_error[k] <= 2 * plain_error[k] + 1e-3 for k in fast_error)}
    fast.train()  # the training step's path: attention dropout as configured
    calls = Counter()
    with counting_calls(calls, attention_targets()):
        logits_and_grads(fast)
    result["paths"]["training step"] = dict(calls)
    plain.train()
    result["step_ms"] = {"transformers sdpa": step_ms(lambda: logits_and_grads(plain), device, timed=timed_steps),
                         "padding-free": step_ms(lambda: logits_and_grads(fast), device, timed=timed_steps)}
    return result


def step_ms(step, device: str, warmup: int = 3, timed: int = 20) -> float:
    """Median wall time of `step()` in milliseconds, the device synchronised around each call."""
    import statistics

    import torch

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    for i in range(warmup + timed):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


# ---- the bench --------------------------------------------------------------------------------------------
def run_one(system: str, batch_size: int, args: argparse.Namespace, scratch: Path) -> dict:
    """One measured run of `system` ("adapt" or "trainer-<attn_implementation>") in a fresh folder (adapt with
    an empty feature cache) through bench_sst2's launcher; a failed run returns {"error": ...}."""
    workdir = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{system}-"))
    console.print(f"[dim]{time.strftime('%H:%M:%S')} {system}, batch {batch_size}, {args.examples} examples[/dim]")
    try:
        if system == "adapt":
            result = bench_sst2.run_adapt(args.data, str(args.model_dir), args.examples, args.seed, workdir,
                                          cache=workdir / "cache", batch_size=batch_size)
        else:
            result = bench_sst2.run_peer(PEER_CONFIG, args.data, str(args.model_dir), args.examples, args.seed,
                                         workdir, batch_size=batch_size,
                                         attn_implementation=system.removeprefix("trainer-"))
            result["system"] = system
    except SystemExit as failure:  # run_measured's report of a failed child
        console.print(f"[red]{system} failed[/red]: {failure}")
        return {"system": system, "batch_size": batch_size, "error": str(failure)[-3000:]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["dev_accuracy_random_weights"] = result.pop("dev_accuracy")
    return {**result, "batch_size": batch_size}


def bench(args: argparse.Namespace, systems: list[str], scratch: Path, save) -> dict:
    """Alternating rounds over `systems` at each batch size; stops starting runs when the next one would end
    past `args.budget_s` (estimated from the slowest finished run). `save(partial)` after every run."""
    started = time.perf_counter()
    peaks = [bench_sst2.matmul_peak(args.matmul_size)]
    per_token = bench_sst2.flops_per_real_token(args.data, str(args.model_dir), args.examples, args.seed)
    state = {"runs": [], "skipped": [], "bf16_matmul_flops_per_s": peaks, "model_flops_per_real_token": per_token}
    for round_index in range(args.rounds):
        for batch_size in args.batch_sizes:
            # alternate the order every round so drifts of the machine hit both sides alike
            for system in systems if round_index % 2 == 0 else systems[::-1]:
                slowest = max((r.get("wall_seconds", 0.0) for r in state["runs"]), default=0.0)
                if args.budget_s and time.perf_counter() - started + 1.2 * slowest > args.budget_s:
                    state["skipped"].append({"round": round_index, "batch_size": batch_size, "system": system})
                    continue
                run = run_one(system, batch_size, args, scratch)
                if "train_tokens_per_s" in run:
                    run["model_flops_per_s"] = per_token * run["train_tokens_per_s"]
                    run["mfu"] = run["model_flops_per_s"] / max(peaks)
                state["runs"].append({"round": round_index, **run})
                save(state)
    if not args.budget_s or time.perf_counter() - started < args.budget_s:
        peaks.append(bench_sst2.matmul_peak(args.matmul_size))
        for run in state["runs"]:
            if "model_flops_per_s" in run:
                run["mfu"] = run["model_flops_per_s"] / max(peaks)
    state["summary"] = {}
    for batch_size in args.batch_sizes:
        done = [r for r in state["runs"] if r["batch_size"] == batch_size and "error" not in r]
        present = [s for s in systems if any(r["system"] == s for r in done)]
        if "adapt" not in present or len(present) < 2:
            continue
        summary = bench_sst2.summarise(done, present)
        state["summary"][str(batch_size)] = summary
        rounds = min(sum(r["system"] == s for r in done) for s in present)
        bench_sst2.print_speed_tables(summary, done, present, rounds, max(peaks),
                                      workload=f"SST-2 on {bench_sst2.machine().get('gpu', 'CPU')}, batch {batch_size}")
    save(state)
    return state


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-files", type=Path, default=ROOT / ".gpu" / "minilm",
                        help="config.json and tokenizer files of the model (random weights are built from them)")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu" / "sst2", help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--examples", type=int, default=None, help="training examples per run (default 32000; dry 64)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 32 128 (dry: 16)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2; dry 1)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--matmul-size", type=int, default=None, help="bf16 matmul size for the peak (default 8192; dry 256)")
    parser.add_argument("--budget-s", type=float, default=None, help="start no run that would end after this many seconds")
    parser.add_argument("--probe", action="store_true",
                        help="the padding-free probe instead of the bench (its own process: the bench's parent stays "
                             "small, since a child's peak RSS starts from its parent's at the fork)")
    parser.add_argument("--dry", action="store_true", help="allow a CPU run and use tiny sizes (checks the script)")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (rewritten after every run)")
    args = parser.parse_args(argv)
    dry = args.dry
    args.examples = args.examples or (64 if dry else 32000)
    args.batch_sizes = args.batch_sizes or ([16] if dry else [32, 128])
    args.rounds = args.rounds or (1 if dry else 2)
    args.matmul_size = args.matmul_size or (256 if dry else None)
    bench_sst2.check_sst2_data(parser, args)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # per-shard bars would fill the log

    if not torch.cuda.is_available() and not args.dry:
        raise SystemExit("no CUDA device: this is the GPU bench (--dry runs it on CPU at tiny sizes)")
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    result = {"started": time.strftime("%Y%m%d-%H%M%S"), "environment": environment(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "note": "random weights of MiniLM's architecture: speed only, accuracy is not measured on GPU"}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(part: dict) -> None:
        result.update(part)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    console.print(f"environment: {json.dumps(result['environment'])}")
    console.print(f"[bold]{result['note']}[/bold]")
    with tempfile.TemporaryDirectory(prefix="adapt-bench-gpu-") as scratch:
        if args.dry:  # both systems score the whole dev set after training: cut it, the check is of the script
            args.data = dev_subset(args.data, Path(scratch) / "sst2", sentences=64)
        args.model_dir = build_random_model(args.model_files, Path(scratch) / "model", seed=args.seed)
        if args.probe:
            texts = list(trainer_peer.read_sst2(args.data / "dev.tsv")["sentence"])
            try:
                probe = padding_free_probe(args.model_dir, texts, batch_size=32, timed_steps=2 if args.dry else 20)
            except Exception:  # the failure is the finding
                probe = {"error": traceback.format_exc()}
            console.print(f"padding-free probe: {json.dumps(probe, indent=1)}")
            save({"padding_free_probe": probe})
        else:
            systems = ["adapt", "trainer-sdpa"] + (["trainer-flash_attention_2"] if result["environment"]["flash_attn"] else [])
            bench(args, systems, Path(scratch), save)
    console.print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
