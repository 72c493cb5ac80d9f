"""The one training loop every task uses, on Accelerate: AdamW with linear warmup/decay, gradient
accumulation normalised by target count, clipping, bf16 autocast, periodic evaluation, best-checkpoint
selection, early stopping, atomic checkpoints and exact resume. Read it top to bottom."""

from __future__ import annotations

import gc
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from datasets import Dataset

from adapt import assets, batching, checkpoint, data, fsdp, outputs, preflight, rundir, speed
from adapt.errors import AdaptError
from adapt.recipe import Recipe, recipe_to_yaml
from adapt.tasks import get_task
from adapt.tasks.base import Task, check_finite_weights, first_nonfinite, set_pad_multiple
from adapt.ui import console, summary_table, training_progress

CHECKPOINTS = "checkpoints"
CPU_EVAL_TOKENS = 4096  # padded tokens per evaluation batch on CPU
BEST = "best"


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGUSR1 during training: a checkpoint was saved; the message says how to resume."""


class TrainingDiverged(AdaptError):
    """The loss or the weights became NaN/inf: training stopped, nothing non-finite was saved."""


INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # Ctrl-C, and what schedulers send


class InterruptFlag:
    """While installed (`with InterruptFlag() as flag:`), Ctrl-C, SIGTERM and SIGUSR1 set `flag.signal`
    instead of ending the process: the loop finishes its step, saves a checkpoint and raises Interrupted;
    a signal during set-up stops the run after its first step, one during the final save lets the save
    finish; later signals change nothing. A second Ctrl-C raises KeyboardInterrupt. Handlers are only installed in the main thread."""

    def __init__(self):
        self.signal: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.getsignal(s) for s in INTERRUPT_SIGNALS}
            for handled in INTERRUPT_SIGNALS:
                signal.signal(handled, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        # the first signal names the interruption: when a scheduler signals a whole job, torchrun forwards the same
        # signal again, and a second one (from adapt's launcher) makes it follow with SIGTERM while shutting down
        if self.signal is None:
            self.signal = signum

    def __exit__(self, *exc) -> None:
        for handled, previous in self.previous.items():
            signal.signal(handled, previous)


@dataclass
class LoopState:
    """Everything besides weights/optimizer/RNG that a resumed run needs to continue exactly."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches consumed (position in the data stream)
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    train_seconds: float = 0.0
    samples: int = 0
    tokens: int = 0
    history: list[dict] = field(default_factory=list)
    # the log window open at a checkpoint (loss, targets, samples, tokens summed over processes; seconds),
    # so that the resumed run's next log line and its counters equal an uninterrupted run's
    window: dict = field(default_factory=dict)


# ---- set-up ---------------------------------------------------------------------------------------
def make_accelerator(recipe: Recipe | None = None, output_dir: Path | None = None) -> Accelerator:
    # Accelerate only picks gloo for CPU process groups when told the run is on CPU
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if recipe is None:
        return Accelerator(cpu=multi_cpu)
    if not torch.cuda.is_available():
        fsdp.refuse_deepspeed_without_gpu()
    mode = speed.autocast_mode(speed.mixed_precision_mode(recipe.train))
    from adapt import tracking

    accelerator = Accelerator(mixed_precision=mode, cpu=multi_cpu,
                              log_with=tracking.log_with(recipe, output_dir), project_dir=str(output_dir))
    if multi_cpu:  # the Accelerate config's FSDP2, which Accelerate itself enables only on GPUs
        fsdp.enable_on_cpu(accelerator)
    if fsdp.enabled(accelerator):  # needs only the recipe: refused before any data is read
        fsdp.check_precision(speed.mixed_precision_mode(recipe.train))
    return accelerator


def run_description(recipe: Recipe, raw: dict[str, Dataset], world: int, sharding: str | None = None) -> dict[str, Any]:
    """What decides a run's weights, recorded in each checkpoint and compared on --resume: the recipe's
    trajectory settings (batch size and gradient accumulation among them; see rundir.SAFE_TO_CHANGE for
    what may change), the content fingerprints of the train and validation data, the process count and the
    sharding (adapt.fsdp.description; recorded only for sharded runs)."""
    described = rundir.trajectory_settings(recipe)
    for role in ("train", "validation"):
        if role in raw:
            described[f"{role} data fingerprint"] = raw[role]._fingerprint
    described["processes"] = world
    if sharding:
        described["sharding"] = sharding
    return described


def check_resumable(folder: Path, run: dict[str, Any], say) -> None:
    """Refuse (AdaptError, one line naming each change as old -> new) to resume the checkpoint in `folder`
    with other settings, data or process count than it was trained with."""
    saved = checkpoint.read_run(folder)
    if saved is None:
        say(f"note: {folder} records no run settings (an older adapt wrote it); they cannot be compared")
        return
    changes = rundir.describe_changes(saved, run)
    if changes:
        raise AdaptError(f"--resume: {folder} was trained with other settings ({'; '.join(changes)}); resume with "
                         "the original settings, or start anew with --overwrite or another --output-dir")


def featurize_splits(task: Task, raw: dict[str, Dataset], tokenizer_id: str, accelerator: Accelerator) -> dict[str, Dataset]:
    """Tokenize each split once; the main process fills the cache and the others then read it."""
    recipe = task.recipe
    cache = os.environ.get("ADAPT_NO_CACHE") != "1"
    features = {}
    with accelerator.main_process_first():
        for role, ds in raw.items():
            key = [recipe.data.model_dump_json(), role, str(ds._fingerprint), tokenizer_id,
                   str(len(task.tokenizer)), *task.featurize_key()]
            key += [data.fingerprint_source(ref) for ref in (recipe.data.train, recipe.data.validation, recipe.data.test) if ref]
            features[role], _ = data.cached_map(key, lambda ds=ds, role=role: task.featurize(ds, role), enabled=cache)
    return features


def load_task_data(recipe: Recipe, accelerator: Accelerator, output: bool = True) -> tuple[Task, str, dict[str, Dataset], dict[str, Dataset]]:
    """(task, local model path, raw splits, tokenized features): everything a run knows before its model.
    The raw data is read and validated, then every other check that needs no weights runs
    (`preflight.check_run`; `output=False` skips the output-directory check, for inspect and estimate),
    and only then is the data tokenized. Raises AdaptError."""
    task = get_task(recipe)
    model_path = assets.resolve_model_path(recipe.model)
    tokenizer_path = assets.resolve_model_path(recipe.tokenizer) if recipe.tokenizer else model_path
    task.load_tokenizer(tokenizer_path)
    raw = task.load_splits()
    preflight.check_run(recipe, task, model_path, raw, output=output)
    return task, model_path, raw, featurize_splits(task, raw, tokenizer_path, accelerator)


def build_training_model(task: Task, model_path: str, recipe: Recipe):
    """The model a run trains: pretrained weights with the speed layer's patches for its family, LoRA (or
    another peft method) if the recipe asks, gradient checkpointing if asked."""
    model = task.build_model(model_path)
    if not any(p.is_meta for p in model.parameters()):  # FSDP's cpu_ram_efficient_loading: see fsdp.materialize
        check_finite_weights(model, recipe.model)  # a damaged checkpoint, not a diverged run: before any write
    model = speed.prepare_model(model, task, recipe.train)
    if recipe.peft:
        from adapt.lora import wrap_with_peft

        model = wrap_with_peft(model, recipe.peft, task)
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def prepare_optimization(model, task: Task, recipe: Recipe, features: dict[str, Dataset], accelerator: Accelerator,
                         total_steps: int) -> tuple[Any, speed.Optimization, Any]:
    """(the accelerate-prepared model, the speed layer's Optimization with its prepared optimizer, the learning
    rate schedule): the training set-up that `adapt finetune` and `adapt estimate` share. Masters are made where
    the model lives, so the optimizer state is created on the device too."""
    precision = speed.mixed_precision_mode(recipe.train)
    sharded = fsdp.enabled(accelerator)
    optimization = speed.optimization(fsdp.materialize(model, accelerator.device), recipe, precision,
                                      features["train"] if task.inputs_from_features else None,
                                      task.tokenizer.all_special_ids)
    scheduler = linear_schedule(optimization.optimizer, int(recipe.train.warmup_ratio * total_steps), total_steps)
    if sharded:
        fsdp.choose_layers(model, accelerator)
    model, optimization.optimizer = accelerator.prepare(model, optimization.optimizer)
    if sharded:  # fully_shard replaced the parameters by shards, which the optimizer now steps
        optimization.weights = fsdp.ShardedWeights(model, fsdp.state_dict_type(accelerator), accelerator.process_index,
                                                   accelerator.num_processes)
        fsdp.mark_for_generation(model)
    return model, optimization, scheduler


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def accumulate_gradients(task: Task, model, micro_batches: list[dict], accelerator: Accelerator,
                         received: int | None = None) -> tuple[torch.Tensor, int, int, int, int | None]:
    """Backward over the micro-batches of one optimizer step so the gradient equals that of one big
    batch: each micro-batch's summed loss is divided by the target count of the whole global batch
    (all micro-batches, all processes), not by its own. `received`: the interrupting signal this process
    has received (None: none). Returns (this process's loss sum as a device tensor, global targets, this
    process's samples, this process's non-pad tokens, the signal any process had received when the step
    began: the highest number if several, the same on every process, so that all stop at the same step and
    save one checkpoint together; a launcher forwards a scheduler's signal to each process separately and
    they may get it in different steps). Counting happens on the host batches so that nothing waits for the
    device mid-step."""
    world = accelerator.num_processes
    for b in micro_batches:
        b.pop("index", None)
    targets = sum(task.count_targets(b) for b in micro_batches)
    if world > 1:  # the one collective and host-device sync of a step, and only with several processes
        counts = accelerator.gather(torch.tensor([targets, received or 0], device=accelerator.device)).view(world, 2)
        targets, received = int(counts[:, 0].sum()), int(counts[:, 1].max()) or None
    # DDP averages gradients over processes, so each process scales its share by `world`
    scale = world / max(1, targets)
    samples = sum(len(b["input_ids"]) for b in micro_batches)
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in micro_batches)
    loss_total = torch.zeros((), device=accelerator.device)
    for i, b in enumerate(micro_batches):
        b = to_device(b, accelerator.device)
        sync = accelerator.no_sync(model) if i < len(micro_batches) - 1 else nullcontext()
        with sync, accelerator.autocast():
            loss_sum, _ = task.loss(model, b)
            accelerator.backward(loss_sum * scale)
        loss_total += loss_sum.detach().float()
    return loss_total, targets, samples, tokens, received


# ---- evaluation -----------------------------------------------------------------------------------
def predict(task: Task, model, features: Dataset, raw: Dataset, accelerator: Accelerator, batch_size: int,
            autocast: bool = True) -> list[dict]:
    """Batched prediction over a split, sharded over processes and gathered so every example counts
    exactly once; returns one prediction per raw example on every process. `autocast=False` runs in the
    model's own dtype even when the accelerator mixes precision."""
    was_training = model.training
    model.eval()
    lengths = batching.example_lengths(features)
    mine = batching.eval_order(lengths, accelerator.process_index, accelerator.num_processes)
    max_tokens = batch_size * 128
    if accelerator.device.type == "cpu" and not task.generates:
        # a CPU forward is at full matmul speed by a few thousand rows; wider batches only cost memory
        max_tokens = min(max_tokens, CPU_EVAL_TOKENS)
    plan = batching.eval_batches(mine, lengths, batch_size, max_tokens=max_tokens)
    # FSDP: every forward gathers weights from all processes, so each runs as many (extra ones discarded)
    extra = fsdp.missing_forwards(len(plan), accelerator) if fsdp.enabled(accelerator) else 0
    records = []
    with torch.inference_mode(), accelerator.autocast() if autocast else nullcontext():
        for batch in batching.iterate(features, plan, task.collate):
            index = batch.pop("index").tolist()
            out = task.eval_step(model, to_device(batch, accelerator.device))
            host = {k: (v.float() if v.dtype == torch.bfloat16 else v).cpu().numpy() for k, v in out.items()}
            records += [{"index": i, **{k: v[j] for k, v in host.items()}} for j, i in enumerate(index)]
        for batch in batching.iterate(features, [[0]] * extra, task.collate):
            batch.pop("index")
            task.eval_step(model, to_device(batch, accelerator.device))
    if accelerator.num_processes > 1:
        records = gather_object(records)
    records.sort(key=lambda r: r["index"])
    if [r["index"] for r in records] != list(range(len(features))):
        raise RuntimeError("evaluation did not see every example exactly once")
    if was_training:
        model.train()
    return task.postprocess(records, features, raw)


def evaluate(task: Task, model, features: Dataset, raw: Dataset, accelerator: Accelerator,
             batch_size: int, autocast: bool = True) -> tuple[dict[str, Any], list[dict]]:
    """(metrics, predictions) for a labelled split."""
    predictions = predict(task, model, features, raw, accelerator, batch_size, autocast)
    metrics = task.score(predictions, raw)
    metrics["examples"] = len(raw)
    return metrics, predictions


# ---- the loop --------------------------------------------------------------------------------------
def finetune(recipe: Recipe, overwrite: bool = False, resume: bool | str | None = None) -> dict[str, Any]:
    """Train `recipe` into `recipe.output_dir` and return the final metrics (also in metrics.json).

    The output directory is locked for the whole run (adapt.rundir.RunLock); nothing is written to it until
    the data, the settings and the model have passed every check. `overwrite` builds the new run beside the
    old one and swaps it in only when it has finished (and refuses folders that are not adapt runs);
    `resume` (True: the newest intact checkpoint; a path: that checkpoint) refuses other settings than the
    checkpoint's. Raises AdaptError (bad input, a busy or unwritable output directory, a full disk,
    TrainingDiverged) and Interrupted (SIGINT/SIGTERM/SIGUSR1: a checkpoint was saved)."""
    output_dir = Path(recipe.output_dir)
    # accelerate keeps mixed precision process-wide; a second run in one process (tests, notebooks) may
    # ask for another, so start from a clean state (the distributed PartialState is kept)
    AcceleratorState._reset_state()
    # the launchers (torchrun, accelerate launch) set RANK; the distributed state is not made this early, as
    # make_accelerator must choose its backend first
    is_main = int(os.environ.get("RANK", "0")) == 0
    with rundir.RunLock(output_dir, enabled=is_main), InterruptFlag() as interrupted:
        if is_main:
            rundir.recover_swap(output_dir)
        plan = rundir.plan_run(output_dir, recipe, overwrite, resume)
        try:
            final = _train(recipe, plan, interrupted)
        except BaseException as err:
            removed = False  # a fresh run that failed before its first checkpoint leaves nothing behind
            if is_main:
                rundir.discard(plan)
                removed = isinstance(err, (AdaptError, OSError)) and rundir.remove_failed_attempt(plan)
            failure = rundir.write_error(err, (output_dir, plan.work_dir),
                                         resumable=plan.mode != "overwrite" and not removed)
            if failure is not None:
                raise failure from None
            if (is_main and isinstance(err, AdaptError) and not isinstance(err, TrainingDiverged)
                    and plan.touched and not removed and plan.mode in ("new", "restart")):
                raise AdaptError(f"{err}; the run's checkpoints in {plan.work_dir / CHECKPOINTS} are kept: once that "
                                 "is fixed, run the same command with --resume") from None
            raise
    end_process_group()
    return final


def end_process_group() -> None:
    """End the distributed process group of a finished multi-process run, after `_train` has returned and its
    DistributedDataParallel wrapper is freed. The other order deadlocks at random: the DDP reducer would then
    hold the group's last reference and join gloo's worker threads from its destructor with the GIL held, while
    a worker still frees the tensors of the last collective, for which it needs the GIL. Ended here, the group is
    freed through torch's binding, which releases the GIL first. (A failed run leaves the group to the
    interpreter's exit, after the traceback, and with it the model, is gone.)"""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()  # a wrapper caught in a reference cycle is freed now, not after the group
        torch.distributed.destroy_process_group()


def _train(recipe: Recipe, plan: rundir.RunPlan, interrupted: InterruptFlag) -> dict[str, Any]:
    """The run itself, top to bottom; `finetune` holds the lock, has planned the output directory and
    catches interrupting signals."""
    output_dir, work_dir = plan.output_dir, plan.work_dir  # work_dir: beside output_dir for --overwrite
    t_start = time.perf_counter()
    cfg = recipe.train
    accelerator = make_accelerator(recipe, work_dir)
    is_main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(cfg.seed)
    set_pad_multiple(8 if accelerator.device.type == "cuda" else 1)

    def note(text: str) -> None:
        """A note to the user: on stderr (stdout carries results), from the main process only."""
        if is_main:
            print(text, file=sys.stderr)

    for notice in plan.notices:
        note(notice)

    task, model_path, raw, features = load_task_data(recipe, accelerator)  # data, settings and model limits checked
    t_data = time.perf_counter() - t_start
    model = build_training_model(task, model_path, recipe)
    run = run_description(recipe, raw, world, fsdp.description(accelerator))
    sharded = fsdp.enabled(accelerator)
    if plan.mode == "resume":
        check_resumable(plan.checkpoint, run, note)
    if recipe.data_note and is_main:  # every check passed: say which data the run scores (the command line set it)
        print(recipe.data_note, file=sys.stderr)

    # Only now, with data, settings and model known good, is the output directory touched.
    log_path = work_dir / "train_log.jsonl"
    if is_main:
        rundir.prepare(plan)
        outputs.atomic_write_text(work_dir / "recipe.yaml", recipe_to_yaml(recipe))
    log = outputs.JsonlLog(log_path, enabled=is_main, append=plan.mode == "resume")
    accelerator.wait_for_everyone()
    speed.setup_done()
    if cfg.compile:
        model = torch.compile(model, dynamic=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())

    micro_batch_size = cfg.batch_size * world  # examples in one micro-batch across all processes
    micro_per_epoch = batching.steps_per_epoch(len(features["train"]), micro_batch_size)
    total_steps, total_micro = batching.optimizer_steps(len(features["train"]), cfg, world)

    precision = speed.mixed_precision_mode(cfg)
    model, optimization, scheduler = prepare_optimization(model, task, recipe, features, accelerator, total_steps)
    weights, optimizer = optimization.weights, optimization.optimizer
    unwrapped = accelerator.unwrap_model(model)

    state = LoopState()
    checkpoint_dir = work_dir / CHECKPOINTS
    last_checkpoint = plan.checkpoint  # the newest checkpoint, all of it finite: named if training diverges
    if plan.mode == "resume":
        folder = plan.checkpoint
        if sharded:  # every process restores its shards (or its part of the broadcast full state)
            fsdp.load_checkpoint(folder, weights, optimizer)
            state = LoopState(**checkpoint.load_loop_state(folder, scheduler))
        else:
            state = LoopState(**checkpoint.load_state(folder, weights, optimizer, scheduler))
        checkpoint.load_process_rng(folder, rank)
        if is_main:  # drop log lines written after the checkpoint, which the resumed run will redo
            kept = [r for r in outputs.read_log(log.path) if r.get("step", 0) <= state.step]
            outputs.atomic_write_text(log.path, outputs.jsonl_text(kept))
        note(f"resuming from {folder} at step {state.step}/{total_steps}")
    from adapt import tracking

    tracking.start(accelerator, recipe)  # params: the resolved recipe

    metric_name = cfg.metric_for_best or task.default_metric
    greater = task.greater_is_better if cfg.greater_is_better is None else cfg.greater_is_better

    checked_step = state.step  # the loss and weights were last found finite after this step

    def check_finite(loss_sum: float | None = None) -> None:
        """Before a log line and before any save: stop with TrainingDiverged if the summed loss since the
        last check, or any trainable weight, is NaN/inf; nothing non-finite is ever saved."""
        nonlocal checked_step
        bad_weight = first_nonfinite(weights.named_parameters())
        if bad_weight is None and (loss_sum is None or math.isfinite(loss_sum)):
            checked_step = state.step
            return
        what = f"the training loss is {loss_sum}" if bad_weight is None else f"weight {bad_weight} is NaN/inf"
        steps = f"step {state.step}" if checked_step >= state.step - 1 else f"steps {checked_step + 1}-{state.step}"
        if plan.mode == "overwrite":  # the attempt is discarded
            kept, again = f"{output_dir} still holds the previous run", "start again with --overwrite"
        elif last_checkpoint is None:  # a fresh run without a checkpoint: finetune removes what it wrote
            kept, again = f"Nothing was kept in {output_dir}", "run the command again"
        else:
            kept, again = f"Last good checkpoint: {last_checkpoint}", "start again with --overwrite"
        raise TrainingDiverged(f"training diverged at {steps}: {what}; no model was saved. {kept}. Lower train.lr "
                               f"(now {cfg.lr}) and {again}")

    def new_window(saved: dict | None = None) -> dict:
        """The sums behind the next log line, from zero or from a checkpoint's open window."""
        saved = saved or {}
        return {"loss": saved.get("loss", 0.0), "targets": saved.get("targets", 0.0), "samples": saved.get("samples", 0),
                "tokens": saved.get("tokens", 0), "t0": time.perf_counter() - saved.get("seconds", 0.0)}

    def reduce_window() -> list[float]:
        """(loss, targets, samples, tokens) of the open log window, summed over processes."""
        totals = torch.tensor([float(window["loss"]), window["targets"], window["samples"], window["tokens"]],
                              dtype=torch.float64, device=device)
        if world > 1:
            totals = accelerator.reduce(totals, reduction="sum")
        return totals.tolist()

    def save_checkpoint() -> Path:
        """Write `checkpoints/step-N` (all processes take part); the open log window goes into it, summed on
        the main process, so that a resumed run logs and counts exactly what this one will."""
        nonlocal window, last_checkpoint
        loss, targets, samples, tokens = reduce_window()
        check_finite(loss)
        sums = {"loss": loss, "targets": targets, "samples": int(samples), "tokens": int(tokens),
                "seconds": time.perf_counter() - window["t0"]}
        state.window = sums
        window = new_window(sums if is_main else {"seconds": sums["seconds"]})  # as a resumed run will have it
        target = checkpoint_dir / f"step-{state.step}"
        tmp = checkpoint_dir / f".tmp-step-{state.step}"
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        checkpoint.save_process_rng(tmp, rank)
        if sharded:  # every process writes its shards, or takes part in gathering the full state
            fsdp.save_checkpoint(tmp, weights, optimizer)
        accelerator.wait_for_everyone()
        if is_main:
            try:
                if sharded:
                    checkpoint.save_loop_state(tmp, scheduler, state.__dict__)
                else:
                    # checkpoint_state changes nothing in the run, and saves what an exact resume needs
                    checkpoint.save_main_state(tmp, weights.checkpoint_state(tmp), optimizer, scheduler, state.__dict__)
                checkpoint.commit(tmp, target, run)
            except BaseException:  # e.g. a full disk: free what the half-written checkpoint holds
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            checkpoint.rotate(checkpoint_dir, cfg.save_total_limit)
        state.window = {}
        last_checkpoint = target
        accelerator.wait_for_everyone()
        return target

    # (metrics, predictions) of the best evaluation this process ran, if it scored the model as it is saved
    best_validation = None

    def use_saved_weights() -> None:
        """Make the model compute what the saved run will: the trained weights in the precision they are saved
        in, and for an adapter whose frozen base was trained in lower precision, that base reloaded in full
        precision (as adapt predict/eval reloads it from the checkpoint). Training cannot continue afterwards;
        weights.load(...) may still replace the trained values."""
        # (FSDP keeps fp32 shards, which are what it saves; its unsharded compute copies may be bf16)
        rounded_base = recipe.peft and not sharded and any(p.dtype != torch.float32 for p in unwrapped.parameters()
                                                           if not p.requires_grad)
        weights.finalize(unwrapped)
        if rounded_base:
            from adapt.lora import restore_frozen_weights

            restore_frozen_weights(unwrapped, task.build_model(model_path))

    def evaluate_and_log(final: bool = False) -> tuple[dict, list[dict]]:
        """Score the validation split and record it at the current step (log file, history, trackers).
        `final` (the last step): score the weights as they will be saved, in their precision, without
        autocast, so that this one evaluation is also the run's final score when it is the best."""
        weights.sync()
        if final:
            use_saved_weights()
        metrics, predictions = evaluate(task, model, features["validation"], raw["validation"], accelerator,
                                        cfg.eval_batch_size, autocast=not final)
        record = {"kind": "eval", "step": state.step, **outputs.scalar_metrics(metrics)}
        log.write(record)
        state.history.append(record)
        accelerator.log({f"eval/{k}": v for k, v in record.items() if k not in ("kind", "step")}, step=state.step)
        return metrics, predictions

    def run_eval(final: bool = False) -> bool:
        """Evaluate (`final`: see evaluate_and_log), log, keep the best weights; True when early stopping says stop."""
        nonlocal best_validation
        metrics, predictions = evaluate_and_log(final)
        value = metrics.get(metric_name)
        if value is None:
            raise AdaptError(f"train.metric_for_best '{metric_name}' is not a metric of task '{task.name}' "
                             f"(metrics: {', '.join(outputs.scalar_metrics(metrics))})")
        improved = state.best_metric is None or (value > state.best_metric if greater else value < state.best_metric)
        if improved:
            state.best_metric, state.best_step, state.evals_without_improvement = float(value), state.step, 0
            # scored as saved: an fp32 run, or the final evaluation; else the final section scores the best again
            best_validation = (metrics, predictions) if final or precision == "no" else None
            check_finite()
            best = weights.state() if is_main or sharded else None  # FSDP gathers it from every process
            if is_main:
                with outputs.AtomicDir(checkpoint_dir / BEST) as tmp:
                    from safetensors.torch import save_file

                    save_file(best, str(tmp / "model.safetensors"))
        else:
            state.evals_without_improvement += 1
        accelerator.wait_for_everyone()
        patience = cfg.early_stopping_patience
        return bool(patience and state.evals_without_improvement >= patience)

    # -- train --
    model.train()
    device = accelerator.device
    window = new_window(state.window if is_main else None)  # one process carries a resumed window's sums
    state.window = {}
    stopped_early = False
    progress = training_progress(enabled=is_main)

    def micro_batches():
        """The data stream from the current position, across epoch boundaries."""
        m = state.micro_step
        lengths = batching.example_lengths(features["train"])
        while m < total_micro:
            epoch, offset = divmod(m, micro_per_epoch)
            order = batching.global_batches(lengths, micro_batch_size, cfg.seed, epoch, cfg.group_by_length)
            mine = [batching.shard_batch(b, rank, world) for b in order[offset:]]
            for batch in batching.iterate(features["train"], mine, task.collate, cfg.num_workers):
                yield batch
                m += 1
                if m >= total_micro:
                    return

    stream = micro_batches()
    if cfg.eval_on_start and state.step == 0:  # the untrained baseline: logged, never the best
        evaluate_and_log()
    with progress:
        bar = progress.add_task("training", total=total_steps, completed=state.step, status="")
        while state.step < total_steps:
            t_step = time.perf_counter()
            window_batches = [b for _, b in zip(range(cfg.grad_accum), stream)]
            if not window_batches:
                break
            loss_total, targets, samples, tokens, agreed = accumulate_gradients(task, model, window_batches, accelerator,
                                                                               interrupted.signal)
            window["loss"] += loss_total
            window["samples"] += samples
            window["tokens"] += tokens
            # every process holds the global target count; count it once in the cross-process sum
            window["targets"] += targets / world
            optimization.update(model, accelerator)
            scheduler.step()
            state.step += 1
            state.micro_step += len(window_batches)
            state.train_seconds += time.perf_counter() - t_step
            if world == 1 and device.type == "cpu" and not math.isfinite(float(loss_total)):  # free on CPU
                check_finite(float(loss_total))

            if state.step % cfg.log_steps == 0 or state.step == total_steps:
                elapsed = time.perf_counter() - window["t0"]
                loss_v, targets_v, samples_v, tokens_v = reduce_window()
                check_finite(loss_v)
                state.samples += int(samples_v)
                state.tokens += int(tokens_v)
                record = {"kind": "train", "step": state.step, "epoch": round(state.micro_step / micro_per_epoch, 4),
                          "loss": loss_v / max(1.0, targets_v), "lr": scheduler.get_last_lr()[0],
                          "samples_per_s": samples_v / elapsed, "tokens_per_s": tokens_v / elapsed}
                log.write(record)
                state.history.append(record)
                accelerator.log({f"train/{k}": v for k, v in record.items() if k not in ("kind", "step")}, step=state.step)
                progress.update(bar, status=f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                                            f"{record['samples_per_s']:.1f} samples/s")
                window = new_window()
            progress.update(bar, completed=state.step)

            last = state.step == total_steps
            if (cfg.eval_steps and state.step % cfg.eval_steps == 0) or last:
                stopped_early = run_eval(final=last)
            if (cfg.save_steps and state.step % cfg.save_steps == 0) or (cfg.save_steps and last):
                save_checkpoint()
            # one process reads its flag now; several stop on the signal they agreed on in this step's gradient reduce
            signalled = interrupted.signal if world == 1 else agreed
            if signalled is not None and not last:
                why = f"interrupted ({signal.Signals(signalled).name}) at step {state.step}/{total_steps}"
                if plan.mode == "overwrite":  # the old run stays until a new one has finished
                    raise Interrupted(f"{why}; {output_dir} still holds the previous run, which --overwrite replaces "
                                      "only once the new run finishes; run the command again to start over")
                just_saved = last_checkpoint == checkpoint_dir / f"step-{state.step}"
                folder = last_checkpoint if just_saved else save_checkpoint()
                raise Interrupted(f"{why}; checkpoint saved to {folder}. Resume with the same command plus --resume")
            if stopped_early:
                note(f"early stopping at step {state.step}: no {metric_name} improvement in "
                     f"{cfg.early_stopping_patience} evaluations")
                break
    # the optimizer moments and gradient buffers (4x the trainable weights in fp32) are no longer needed:
    # the test evaluation and the save that follow run in their memory
    optimizer.state.clear()
    weights.release_gradients()

    # -- final artefacts: best weights, test scores, model card --
    best_file = checkpoint_dir / BEST / "model.safetensors"
    if best_file.exists() and state.best_step != state.step:  # else the model already holds them
        accelerator.wait_for_everyone()
        weights.load(best_file)
    # score what is saved: the run's metrics and predictions_validation.jsonl are what reloading it gives
    use_saved_weights()
    final = {"best_step": state.best_step, f"best_{metric_name}": state.best_metric}
    if best_validation:  # the best weights were scored as saved in this process: the same model, the same numbers
        validation_metrics, val_predictions = best_validation
    else:  # scored in bf16/fp16 during training, or best weights from before a resume
        validation_metrics, val_predictions = evaluate(task, model, features["validation"], raw["validation"],
                                                       accelerator, cfg.eval_batch_size, autocast=False)
    final["validation"] = validation_metrics
    task.finalize_validation(unwrapped, validation_metrics)  # e.g. a threshold tuned on validation, before test
    initial = [r for r in state.history if r["kind"] == "eval" and r["step"] == 0]
    if initial:  # eval_on_start: the untrained model's scores, the baseline the run should beat
        final["initial_validation"] = {k: v for k, v in initial[0].items() if k not in ("kind", "step")}
    if "test" in features:
        final["test"], _ = evaluate(task, model, features["test"], raw["test"], accelerator, cfg.eval_batch_size,
                                    autocast=False)
    final.update({
        "train_steps": state.step, "train_samples": state.samples, "train_seconds": round(state.train_seconds, 2),
        "train_samples_per_s": state.samples / max(state.train_seconds, 1e-9),
        "train_tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
        "data_seconds": round(t_data, 2), "stopped_early": stopped_early,
        "trainable_params": trainable, "total_params": total_params, "processes": world,
        "mixed_precision": precision, "device": str(device),
    })
    if device.type == "cuda":  # this process's peak, weights + optimizer + activations (GB = 2**30 bytes)
        final["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    check_finite(reduce_window()[0])
    gathered = fsdp.full_state(model) if sharded else None  # FSDP: the full model, from every process
    if is_main:
        write_final_artefacts(task, unwrapped, work_dir, recipe, final, raw, val_predictions, model_path, gathered)
        tracking.finish(accelerator, recipe, final, work_dir / "README.md", state.step)  # final scores, card
        final["wall_seconds"] = round(time.perf_counter() - t_start, 2)
        outputs.atomic_write_json(work_dir / "metrics.json", final)
    if is_main:
        rundir.commit(plan)  # --overwrite: the finished run replaces the old one only now
        console.print(summary_table(recipe, final, output_dir, metric_name))
    return final


def write_final_artefacts(task: Task, model, output_dir: Path, recipe: Recipe, final: dict, raw: dict,
                          val_predictions: list[dict], base_model: str, state_dict: dict | None = None) -> None:
    """A standard Hugging Face folder (weights, config, tokenizer, card) plus adapt's run records; `state_dict`:
    the full weights when the model's own are sharded (FSDP)."""
    with outputs.AtomicDir(output_dir / ".final") as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if recipe.peft:  # the adapter folder alone rebuilds the model: base config (labels, head), generation config
            from adapt.lora import save_adapter_extras

            save_adapter_extras(model, tmp)
        task.tokenizer.save_pretrained(tmp)
        n_examples = {k: len(v) for k, v in raw.items()}
        extra = {"mixed precision": final["mixed_precision"], "processes": final["processes"],
                 "trainable parameters": f"{final['trainable_params']:,} of {final['total_params']:,}",
                 **task.card_details()}
        card_metrics = {f"validation {k}": v for k, v in final["validation"].items()}
        card_metrics.update({f"test {k}": v for k, v in final.get("test", {}).items()})
        (tmp / "README.md").write_text(outputs.model_card(recipe, card_metrics, n_examples, task.pipeline_tag,
                                                          recipe.model, extra))
        rows = task.example_predictions(val_predictions, raw["validation"])
        (tmp / "predictions_validation.jsonl").write_text(outputs.jsonl_text(rows))
    outputs.move_files_into(output_dir / ".final", output_dir)
    shutil.rmtree(output_dir / ".final", ignore_errors=True)
    history = outputs.read_log(output_dir / "train_log.jsonl")
    from adapt.plots import loss_curve_png, write_run_plots

    loss_curve_png(history, output_dir / "loss_curve.png", recipe.train.metric_for_best or task.default_metric,
                   f"{recipe.name}: {recipe.model}")
    write_run_plots(output_dir)
