"""The fp32 CPU training path of the speed layer (`train.mixed_precision=no`): the input-embedding rows the data
never uses left out of AdamW as in bf16-master mode, clipping that skips its no-op rescale in one CPU process,
and the one-pass native dropout on fp32 tensors."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from adapt.recipe import resolve_recipe
from adapt.speed import Optimization, cpu_kernels, fused_adamw, native, optimization
from adapt.speed.precision import TrainableWeights
from adapt.train import linear_schedule
from test_precision import USED, VOCAB, WORD, batches, tiny_bert

RECIPE = [("train.lr", "1e-3"), ("train.weight_decay", "0.1")]


def train_fp32(used: torch.Tensor | None, max_grad_norm: float, steps: int = 6, fused: bool = False):
    """`steps` fp32 updates through `Optimization.update` (the loop's), with weight decay 0.1; `fused`: stepped by
    the native AdamW kernel."""
    model = tiny_bert()
    recipe = resolve_recipe("sentiment", [*RECIPE, ("train.max_grad_norm", str(max_grad_norm))])
    opt = Optimization(TrainableWeights(model, master=False, used_token_ids=used, fused=fused), recipe)
    scheduler = linear_schedule(opt.optimizer, 2, steps)
    for batch in batches(steps):
        model(**batch).loss.backward()
        opt.update(model, Accelerator(cpu=True))
        scheduler.step()
    return model, opt


def reference_fp32(max_grad_norm: float, steps: int = 6) -> dict[str, torch.Tensor]:
    """The same training by plain torch: AdamW over every parameter, dense gradients, clip_grad_norm_."""
    model = tiny_bert()
    recipe = resolve_recipe("sentiment", RECIPE)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=recipe.train.lr)
    scheduler = linear_schedule(optimizer, 2, steps)
    for batch in batches(steps):
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


needs_kernel = pytest.mark.skipif(native.library() is None, reason="the native kernels are not built (make install)")


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=needs_kernel)])
@pytest.mark.parametrize("max_grad_norm", [1e-2, 100.0])  # clipping every step / never
def test_fp32_used_rows_train_as_adamw_over_the_whole_table(max_grad_norm, fused):
    model, opt = train_fp32(USED, max_grad_norm, fused=fused)
    weights = opt.weights
    assert isinstance(opt.optimizer, fused_adamw.FusedMasterAdamW) == fused
    assert all(p.grad is None for p in model.parameters())
    assert weights.rows is not None and weights.rows.embedding.sparse
    stepped = {tuple(p.shape) for g in opt.optimizer.param_groups for p in g["params"]}
    assert (len(USED), 32) in stepped and (VOCAB, 32) not in stepped
    # the used rows are current in the model after every step; the others lag by their decay until sync
    table = model.get_input_embeddings().weight
    assert torch.equal(table[USED], dict(weights.named_parameters())[WORD])
    reference = reference_fp32(max_grad_norm)
    unused = torch.ones(VOCAB, dtype=torch.bool)
    unused[USED] = False
    assert not torch.allclose(table[unused], reference[WORD][unused], rtol=1e-6, atol=0)
    state = weights.state()  # syncs
    assert state.keys() == reference.keys()
    torch.testing.assert_close(state[WORD][unused], reference[WORD][unused], rtol=1e-6, atol=0)
    torch.testing.assert_close(table, state[WORD], rtol=0, atol=0)  # the model's table is the synced one
    # sums of repeated tokens' gradients in another order, and the kernel's AdamW arithmetic: fp32 rounding only
    atol = 1e-5 if fused else 2e-6
    for name in reference:
        torch.testing.assert_close(state[name], reference[name], rtol=0, atol=atol, msg=name)
        assert not torch.equal(state[name], tiny_bert().state_dict()[name])  # every weight moved


def test_fp32_rows_checkpoint_round_trip(tmp_path):
    model, opt = train_fp32(USED, 1.0)
    state = opt.weights.state()
    save_file(state, str(tmp_path / "w.safetensors"))
    fresh_model = tiny_bert()
    fresh = TrainableWeights(fresh_model, master=False, used_token_ids=USED)
    fresh.load(tmp_path / "w.safetensors")
    assert all(torch.equal(fresh.state()[n], state[n]) for n in state)
    assert torch.equal(fresh_model.get_input_embeddings().weight, state[WORD])
    assert torch.equal(dict(fresh.named_parameters())[WORD], state[WORD][USED])
    fresh.finalize(fresh_model)  # the saved module asks for dense gradients again
    assert not fresh_model.get_input_embeddings().sparse


def test_optimization_leaves_unused_rows_out_only_for_fp32_on_cpu_with_the_speed_layer():
    from datasets import Dataset

    features = Dataset.from_dict({"input_ids": [[int(t) for t in USED[:30]], [int(t) for t in USED[30:]]]})

    def rows(precision: str, *overrides) -> bool:
        recipe = resolve_recipe("sentiment", list(overrides))
        return optimization(tiny_bert(), recipe, precision, features, [0]).weights.rows is not None

    assert rows("no")
    assert not rows("no", ("train.speed_layer", "false"))
    assert not rows("bf16")  # autocast: clipped by Accelerate, which may unscale, so the model's own gradients
    fused = optimization(tiny_bert(), resolve_recipe("sentiment", []), "no", features, [0]).weights.fused
    assert fused == (native.library() is not None)


def test_fp32_clipping_skips_the_rescale_only_when_under_the_limit(monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", lambda *a, **k: calls.append(1) or real(*a, **k))
    train_fp32(None, 100.0, steps=2)
    assert calls == []
    train_fp32(None, 1e-2, steps=2)
    assert calls == [1, 1]


@needs_kernel
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_native_fp32_dropout_matches_the_bf16_kernels_mask_and_torch_arithmetic(p):
    torch.manual_seed(3)
    x = torch.randn(3, 70001)  # spans several threads' shares and a ragged tail
    grad = torch.randn_like(x)
    torch.manual_seed(7)
    y = cpu_kernels.NativeDropout.apply(x.requires_grad_(), p)
    (y * grad).sum().backward()
    torch.manual_seed(7)
    y16 = cpu_kernels.NativeDropout.apply(x.detach().to(torch.bfloat16), p)
    keep = y16 != 0
    assert torch.equal(keep, y != 0)  # the same seed draws the same mask as the bf16 kernel
    scale = 1.0 / (1.0 - p)
    assert torch.equal(y, torch.where(keep, x.detach(), 0) * scale)
    assert torch.equal(x.grad, torch.where(keep, grad, 0) * scale)
    assert abs(1 - keep.float().mean().item() - cpu_kernels.keep_threshold(p) / 2**16) < 0.01
    torch.manual_seed(7)
    assert torch.equal(cpu_kernels.dropout(x.detach(), p, True), y.detach())  # fp32 dropout takes the kernel
