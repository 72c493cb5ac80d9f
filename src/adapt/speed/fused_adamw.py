"""AdamW on CPU in one pass over memory, by the C kernel in native/adamw_bf16.c, for bf16-master training (fp32
masters of a bf16 model) and for fp32 training (the model's own fp32 weights, stepped in place) (see
`adapt.speed.native`; without it training takes the unfused PyTorch path, same results to rounding).

The unfused update makes five passes over every trainable weight: bf16 gradient to an fp32 copy, global norm,
clipping, AdamW, fp32 master back to the bf16 model. On a CPU that update is memory bound and was ~15% of a
MiniLM step; here the kernel reads the bf16 gradient once for the norm and once for the update, which clips it,
steps the master and both moments, and writes the rounded bf16 weight straight into the model."""

from __future__ import annotations

import ctypes
import math
from typing import Callable

import torch

from adapt.speed import native
from adapt.speed.native import array

# master weight -> (its gradient as backward left it, the bf16 model weight to refresh or None)
Sources = dict[torch.Tensor, tuple[torch.Tensor, "torch.Tensor | None"]]


def available(device: torch.device) -> bool:
    return device.type == "cpu" and native.library() is not None


class FusedMasterAdamW(torch.optim.AdamW):
    """torch.optim.AdamW (same hyperparameters, state and state_dict, so checkpoints move between the two)
    whose step takes each fp32 master's gradient from `sources()` instead of `.grad`, clips all of them by
    their global norm (`max_grad_norm`), and refreshes the bf16 model weights in the same pass."""

    def __init__(self, params, lr: float, sources: Callable[[], Sources], max_grad_norm: float | None):
        super().__init__(params, lr=lr)
        self.sources = sources
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("FusedMasterAdamW.step takes no closure")
        lib, threads = native.library(), torch.get_num_threads()
        sources = self.sources()
        for master, (grad, weight) in sources.items():
            if grad.dtype not in (torch.bfloat16, torch.float32) or not grad.is_contiguous() or grad.shape != master.shape:
                raise ValueError(f"fused AdamW needs contiguous bf16/fp32 gradients shaped like the master {tuple(master.shape)}")
            if weight is not None and (weight.dtype != torch.bfloat16 or not weight.is_contiguous()):
                raise ValueError("fused AdamW writes contiguous bf16 model weights only")
        grads = list(sources.values())
        coef = 1.0
        if self.max_grad_norm:
            norm = math.sqrt(lib.adamw_sum_squares(len(grads), array(ctypes.c_int64, [g.numel() for g, _ in grads]),
                                                   array(ctypes.c_void_p, [g.data_ptr() for g, _ in grads]),
                                                   array(ctypes.c_int32, [g.dtype == torch.bfloat16 for g, _ in grads]),
                                                   threads))
            coef = min(1.0, self.max_grad_norm / (norm + 1e-6))  # as torch.nn.utils.clip_grad_norm_
        for group in self.param_groups:
            params = [p for p in group["params"] if p in sources]
            if params:
                self._step_group(lib, threads, group, params, sources, coef)

    def _step_group(self, lib, threads: int, group: dict, params: list[torch.Tensor], sources: Sources, coef: float) -> None:
        if group["amsgrad"] or group["maximize"]:
            raise ValueError("fused AdamW implements neither amsgrad nor maximize")
        by_step: dict[float, list[torch.Tensor]] = {}  # bias corrections differ for a weight that missed steps
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            by_step.setdefault(float(state["step"]), []).append(p)
        beta1, beta2 = group["betas"]
        lr, weight_decay = float(group["lr"]), group["weight_decay"]
        for step, same_step in by_step.items():
            states = [self.state[p] for p in same_step]
            lib.adamw_step(
                len(same_step), array(ctypes.c_int64, [p.numel() for p in same_step]),
                array(ctypes.c_void_p, [p.data_ptr() for p in same_step]),
                array(ctypes.c_void_p, [s["exp_avg"].data_ptr() for s in states]),
                array(ctypes.c_void_p, [s["exp_avg_sq"].data_ptr() for s in states]),
                array(ctypes.c_void_p, [sources[p][0].data_ptr() for p in same_step]),
                array(ctypes.c_int32, [sources[p][0].dtype == torch.bfloat16 for p in same_step]),
                array(ctypes.c_void_p, [None if sources[p][1] is None else sources[p][1].data_ptr() for p in same_step]),
                1.0 - lr * weight_decay, coef, beta1, beta2, group["eps"], lr / (1 - beta1 ** step),
                math.sqrt(1 - beta2 ** step), threads)
