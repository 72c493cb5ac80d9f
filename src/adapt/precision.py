"""The weights the optimizer updates. Usually the model's own trainable parameters; in `bf16-master` mode
the model computes forward and backward in bf16 while the optimizer updates fp32 master copies, which
avoids autocast's per-op casts (and its fp32 weight gradients) without losing the small updates fp32
accumulation keeps."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from adapt.errors import AdaptError


class TrainableWeights:
    def __init__(self, model: torch.nn.Module, master: bool):
        self.master = master
        self._grad_buffers: dict[str, torch.Tensor] | None = None
        if master:
            fp32 = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
            model.to(torch.bfloat16)
            self.params = {n: torch.nn.Parameter(t) for n, t in fp32.items()}
        self.model_params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not master:
            self.params = self.model_params

    def named_parameters(self):
        return self.params.items()

    def grads_to_master(self) -> None:
        """After backward: move the bf16 gradients onto the fp32 masters, in one fused copy into buffers
        allocated once (a per-parameter `.float()` costs ~5% of a small model's step)."""
        if not self.master:
            return
        if self._grad_buffers is None:
            self._grad_buffers = {n: torch.empty_like(p) for n, p in self.params.items()}
        names = [n for n, p in self.model_params.items() if p.grad is not None]
        torch._foreach_copy_([self._grad_buffers[n] for n in names], [self.model_params[n].grad for n in names])
        for name in names:
            self.params[name].grad = self._grad_buffers[name]
            self.model_params[name].grad = None

    def release_gradients(self) -> None:
        """After the last update: drop the gradients and their fp32 buffers."""
        for param in self.params.values():
            param.grad = None
        self._grad_buffers = None

    def master_to_model(self) -> None:
        """After an optimizer step (or loading weights): refresh the bf16 model weights."""
        if self.master:
            with torch.no_grad():
                torch._foreach_copy_(list(self.model_params.values()), list(self.params.values()))

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().contiguous().cpu() for n, p in self.params.items()}

    def load(self, path: Path) -> None:
        state = load_file(str(path))
        missing = [n for n in self.params if n not in state]
        unknown = [n for n in state if n not in self.params]
        if missing or unknown:
            raise AdaptError(f"{path}: does not match the model ({len(missing)} missing, {len(unknown)} unknown "
                             "weights); was the recipe changed since the checkpoint was written?")
        with torch.no_grad():
            for name, value in state.items():
                self.params[name].copy_(value)
        self.master_to_model()

    def finalize(self, model: torch.nn.Module) -> None:
        """Put the fp32 master values back into an fp32 model, for saving."""
        if self.master:
            model.to(torch.float32)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self.params:
                        param.copy_(self.params[name])
