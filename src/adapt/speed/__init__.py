"""adapt's speed layer: what makes a run faster without changing what it computes, behind one small
interface the training loop calls. Switched off by `train.speed_layer: false` (the loop then trains with
plain PyTorch AdamW and transformers' own forward, autocast for mixed precision).

What lives here, applied per model family the way LLaMA-Factory applies its patchers:
- `precision`: bf16 weights with fp32 master weights (`train.mixed_precision: bf16-master`), and the
  input-embedding rows the data never uses left out of the optimizer;
- `fused_adamw`: one pass of a C kernel for the clipped AdamW update of bf16-master weights on CPU;
- `padding_free`: training batches flattened into one row of real tokens (transformers' `position_ids` /
  `cu_seq_lens` packed format) and attention through a function registered in transformers' attention
  registry, for every architecture whose attention goes through that registry;
- `cpu_kernels`, `native`: the C kernels (dropout, packed attention, AdamW) and their PyTorch wrappers;
- `runtime`: process-wide settings of a command-line run (oneDNN caches, garbage collection).

The loop's view (adapt/train.py):

    precision = speed.mixed_precision_mode(recipe.train)      # before the Accelerator is made
    model = speed.prepare_model(model, task, recipe.train)     # before peft wraps it
    optimization = speed.optimization(model, recipe, precision, train_features, special_token_ids)
    ... backward ...
    optimization.update(model, accelerator)                   # one optimizer update
    optimization.weights.state() / .load(path) / .sync() / .finalize(model)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from adapt.speed import runtime

if TYPE_CHECKING:
    import torch

    from adapt.speed.precision import TrainableWeights

__all__ = [
    "Optimization", "TrainableWeights", "autocast_mode", "build_optimizer", "mixed_precision_mode", "optimization",
    "prepare_model", "setup_done",
]
SUBMODULES = ("cpu_kernels", "fused_adamw", "native", "padding_free", "precision")


def __getattr__(name: str):
    """torch, transformers and the kernels load on first use, not on `import adapt.speed`: the command line
    imports `runtime` before anything else, so that its settings (garbage collection deferred during start-up)
    apply to those imports."""
    if name in SUBMODULES:
        return importlib.import_module(f"adapt.speed.{name}")
    if name == "TrainableWeights":
        return importlib.import_module("adapt.speed.precision").TrainableWeights
    raise AttributeError(f"module 'adapt.speed' has no attribute '{name}'")


def mixed_precision_mode(train) -> str:
    """`train.mixed_precision` resolved for this machine (`train`: the recipe's TrainConfig). `auto` with the
    speed layer on: bf16 weights with fp32 masters, which beat bf16 autocast, whose per-op casts cost more than
    they save on CPUs and on launch-bound small GPU models; sharded set-ups (DeepSpeed, FSDP) keep their own
    master weights, so they get plain autocast. With it off, `auto` is autocast where the hardware has bf16."""
    import torch

    requested = train.mixed_precision
    if requested != "auto":
        return requested
    master = train.speed_layer and not _sharded()
    if torch.cuda.is_available():
        if not torch.cuda.is_bf16_supported():
            return "fp16"
        return "bf16-master" if master else "bf16"
    # bf16 only pays off on CPUs with native bf16 matmul (AVX512-BF16 / AMX)
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "no"
    return "bf16-master" if master else "bf16"


def _sharded() -> bool:
    """Whether Accelerate is launched with DeepSpeed or FSDP, which shard the weights and keep their own masters."""
    from accelerate.utils import parse_flag_from_env

    return any(parse_flag_from_env(f"ACCELERATE_USE_{k}") for k in ("DEEPSPEED", "FSDP"))  # as Accelerate reads them


def setup_done() -> None:
    """The run's model is loaded: long-lived objects are frozen out of garbage collection (see runtime)."""
    runtime.setup_done()


def autocast_mode(precision: str) -> str:
    """What Accelerate's `mixed_precision` (its autocast) gets for a resolved `precision`: bf16 master-weight
    runs compute in the model's own bf16 weights and need no autocast."""
    return "no" if precision == "bf16-master" else precision


def prepare_model(model: torch.nn.Module, task, train) -> torch.nn.Module:
    """The model with the speed layer's patches for its family installed (padding-free batches where its
    attention goes through transformers' registry and `train.padding_free` is on); unchanged when
    `train.speed_layer` is off. Call before peft wraps the model. Changes no weight and nothing saved."""
    if train.speed_layer and train.padding_free:
        from adapt.speed import padding_free

        padding_free.install(model)
    return model


def optimization(model: torch.nn.Module, recipe, precision: str, train_features=None,
                 special_token_ids: list[int] = ()) -> Optimization:
    """The speed layer's set-up of `model`'s training for `precision`: in `bf16-master` mode fp32 masters of a
    bf16 model, stepped by the fused CPU AdamW kernel where it is built, with the input-embedding rows that no
    token of `train_features` (the tokenized training split, a datasets.Dataset with `input_ids`) or of
    `special_token_ids` uses left out of the optimizer; otherwise the model's own parameters, and for fp32
    (`precision` "no") on CPU the same rows left out and the same kernel stepping them in place."""
    from adapt.speed import fused_adamw
    from adapt.speed.precision import TrainableWeights

    master = precision == "bf16-master"
    device = next(model.parameters()).device
    fp32_cpu = recipe.train.speed_layer and precision == "no" and device.type == "cpu" and not _sharded()
    used = None
    if (master or fp32_cpu) and train_features is not None:
        from adapt.data import token_ids

        used = token_ids(train_features, extra=list(special_token_ids))
    fused = (master or fp32_cpu) and fused_adamw.available(device)
    return Optimization(TrainableWeights(model, master=master, used_token_ids=used, fused=fused), recipe)


def build_optimizer(weights: TrainableWeights, recipe) -> torch.optim.Optimizer:
    """AdamW over `weights` with the recipe's learning rate and weight decay; biases and normalisation weights
    (1-d tensors) are not decayed (standard BERT/GPT practice). Weights the native kernel steps (`weights.fused`:
    bf16-master or fp32 on CPU) get FusedMasterAdamW, which also clips to `train.max_grad_norm`; the others
    PyTorch's fused AdamW (one kernel for all parameters)."""
    import torch

    from adapt.speed import fused_adamw

    decay, no_decay = [], []
    for _, param in weights.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": recipe.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if weights.fused:
        return fused_adamw.FusedMasterAdamW(groups, lr=recipe.train.lr, sources=weights.fused_sources,
                                            max_grad_norm=recipe.train.max_grad_norm)
    return torch.optim.AdamW(groups, lr=recipe.train.lr, fused=True)


class Optimization:
    """The weights the optimizer steps and the optimizer (made by `optimization`), and one update.

    Attributes:
        weights: TrainableWeights (state(), load(path), sync(), finalize(model), release_gradients()).
        optimizer: the torch.optim.Optimizer the scheduler and checkpoints see (the loop may replace it by
            accelerate's wrapper of it).
    """

    def __init__(self, weights: TrainableWeights, recipe):
        self.weights = weights
        self.optimizer = build_optimizer(weights, recipe)
        self.max_grad_norm = recipe.train.max_grad_norm
        self.speed_layer = recipe.train.speed_layer

    def update(self, model: torch.nn.Module, accelerator) -> None:
        """One optimizer update from the accumulated gradients: onto the masters, clipped to the recipe's
        `max_grad_norm`, stepped, the model's weights refreshed, the gradients dropped. The fused optimizer
        takes the bf16 gradients and clips them itself. Model weights trained as they are (fp32, autocast) are
        clipped by Accelerate (which unscales fp16 gradients and knows DDP, FSDP and DeepSpeed) unless they
        train in one CPU process with the speed layer on."""
        import torch

        weights, max_grad_norm = self.weights, self.max_grad_norm
        if not weights.fused:
            own_clipping = weights.master or (self.speed_layer and accelerator.device.type == "cpu"
                                              and accelerator.num_processes == 1)
            if max_grad_norm and not own_clipping:  # on the model's dense gradients, before the rows are compacted
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            weights.grads_to_master()
            if max_grad_norm and own_clipping:  # the masters' (or the compact rows') gradients
                params = [p for _, p in weights.named_parameters() if p.grad is not None]
                norm = torch.nn.utils.get_total_norm([p.grad for p in params])
                # clip_grad_norm_ always rescales (by 1.0 when under the limit) to avoid a device sync; a CPU
                # has no queue to stall, so read the norm and skip the no-op pass over every gradient
                if accelerator.device.type != "cpu" or max_grad_norm / (float(norm) + 1e-6) < 1.0:
                    torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, norm)
        self.optimizer.step()
        weights.after_step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
