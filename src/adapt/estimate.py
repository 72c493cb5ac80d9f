"""`adapt estimate`: optimizer steps, training FLOPs and the expected duration of a recipe on this machine,
from the run's exact batch plan and a few real, timed training steps."""

from __future__ import annotations

import time
from typing import Any

import torch

from adapt import batching
from adapt.recipe import Recipe
from adapt.runs import format_duration

# Training FLOPs ~= 6 * N * D (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1):
# 2 N per token for the forward pass and 4 N for the backward pass, N = non-embedding parameters,
# D = (non-padding) tokens trained on. It ignores attention's sequence-length term, small at these lengths.
FLOPS_PER_PARAM_TOKEN = 6
# An evaluation forward pass costs about a third of a training step per token (2N of 6N).
EVAL_COST_SHARE = 1 / 3


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters outside embedding tables (token, position, segment), each tied tensor counted once."""
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def padded_tokens(batch: list[int], lengths: list[int]) -> int:
    return len(batch) * max(lengths[i] for i in batch)


def time_training_steps(task, model, optimization, accelerator, features, plan: list[list[int]], grad_accum: int,
                        steps: int) -> dict[str, float]:
    """Run `steps` + 1 real optimizer steps on the run's first batches, with the loop's own gradient
    code; the first warms caches and allocators and is not timed. Returns seconds per padded token
    (forward+backward) and per optimizer update."""
    from adapt.train import accumulate_gradients

    lengths = batching.example_lengths(features)
    groups = [plan[i:i + grad_accum] for i in range(0, len(plan), grad_accum)][: steps + 1]
    compute_seconds = update_seconds = 0.0
    timed_tokens = 0
    model.train()
    for step, group in enumerate(groups):
        batches = [task.collate(features[b]) for b in group]
        t0 = time.perf_counter()
        accumulate_gradients(task, model, batches, accelerator)
        t1 = time.perf_counter()
        optimization.update(model, accelerator)
        t2 = time.perf_counter()
        if step > 0:
            compute_seconds += t1 - t0
            update_seconds += t2 - t1
            timed_tokens += sum(padded_tokens(b, lengths) for b in group)
    timed = max(1, len(groups) - 1)
    return {"timed_steps": len(groups) - 1, "seconds_per_padded_token": compute_seconds / max(1, timed_tokens),
            "seconds_per_update": update_seconds / timed, "seconds_per_step": (compute_seconds + update_seconds) / timed}


def estimate(recipe: Recipe, timed_steps: int = 3) -> dict[str, Any]:
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    from adapt import speed
    from adapt.train import build_training_model, load_task_data, make_accelerator, prepare_optimization

    cfg = recipe.train
    AcceleratorState._reset_state()
    accelerator = make_accelerator(recipe.model_copy(update={"tracking": []}), None)
    precision = speed.mixed_precision_mode(cfg)
    set_seed(cfg.seed)
    # the same loading and cache keys as `adapt finetune`, so the run that follows reuses these features
    task, model_path, raw, features = load_task_data(recipe, accelerator, output=False)  # what stops a run stops the estimate
    train_lengths = batching.example_lengths(features["train"])

    steps, total_micro = batching.optimizer_steps(len(train_lengths), cfg)
    plan = batching.micro_batch_plan(train_lengths, cfg, total_micro)
    train_tokens = sum(train_lengths[i] for batch in plan for i in batch)
    train_padded = sum(padded_tokens(batch, train_lengths) for batch in plan)

    model = build_training_model(task, model_path, recipe)
    n_params = sum(p.numel() for p in model.parameters())
    n_non_embedding = non_embedding_params(model)
    model, optimization, _ = prepare_optimization(model, task, recipe, features, accelerator, steps)
    timing = time_training_steps(task, model, optimization, accelerator, features["train"], plan, cfg.grad_accum,
                                 timed_steps)

    train_seconds = train_padded * timing["seconds_per_padded_token"] + steps * timing["seconds_per_update"]
    # evaluations: before training if asked, every eval_steps, at the last step, and the test split (the
    # best weights' validation scores are kept from their evaluation, not recomputed)
    periodic = steps // cfg.eval_steps - (steps % cfg.eval_steps == 0) if cfg.eval_steps else 0
    eval_tokens = sum(batching.example_lengths(features["validation"])) * (periodic + 1 + cfg.eval_on_start)
    if "test" in features:
        eval_tokens += sum(batching.example_lengths(features["test"]))
    eval_seconds = eval_tokens * timing["seconds_per_padded_token"] * EVAL_COST_SHARE
    return {
        "recipe": recipe.name, "task": recipe.task, "model": recipe.model,
        "device": str(accelerator.device), "mixed_precision": precision,
        "threads": torch.get_num_threads(),
        "train_examples": len(train_lengths), "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
        "epochs": round(total_micro / batching.steps_per_epoch(len(train_lengths), cfg.batch_size), 3),
        "optimizer_steps": steps, "micro_batches": total_micro,
        "train_tokens": train_tokens, "padding_share": round(1 - train_tokens / max(1, train_padded), 4),
        "total_params": n_params, "non_embedding_params": n_non_embedding,
        "train_flops": FLOPS_PER_PARAM_TOKEN * n_non_embedding * train_tokens,
        **{k: round(v, 9) if isinstance(v, float) else v for k, v in timing.items()},
        "estimated_train_seconds": round(train_seconds, 1),
        "estimated_eval_seconds": round(eval_seconds, 1),
        "estimated_total_seconds": round(train_seconds + eval_seconds, 1),
    }


def estimate_table(report: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"adapt estimate: {report['recipe']}", header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("model", report["model"]), ("device / precision", f"{report['device']} / {report['mixed_precision']}"),
        ("train examples", f"{report['train_examples']:,}"),
        ("batch size x accumulation", f"{report['batch_size']} x {report['grad_accum']}"),
        ("epochs", report["epochs"]), ("optimizer steps", f"{report['optimizer_steps']:,}"),
        ("train tokens (padding share)", f"{report['train_tokens']:,} ({report['padding_share']:.1%})"),
        ("non-embedding params", f"{report['non_embedding_params']:,} of {report['total_params']:,}"),
        ("train FLOPs (6 N D)", f"{report['train_flops']:.3e}"),
        ("measured seconds / step", f"{report['seconds_per_step']:.3f} (over {report['timed_steps']} steps)"),
        ("estimated training", format_duration(report["estimated_train_seconds"])),
        ("estimated evaluation", format_duration(report["estimated_eval_seconds"])),
        ("estimated total", format_duration(report["estimated_total_seconds"])),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    table.caption = ("data loading, tokenization and saving are not included; generation tasks decode token by "
                     "token, so their evaluation takes longer than estimated")
    return table
