"""adapt's native CPU kernels as PyTorch operations (see `adapt.speed.native`): dropout that draws 16 random
bits per element from one 64-bit draw per four, the one-pass bf16 and fp32 dropout kernels, and attention with dropout
on packed rows of several sequences. Each falls back to PyTorch where the library is not built."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adapt.speed import native


def keep_threshold(p: float) -> int:
    """Dropout keeps an element when its 16 random bits are at least this: rate round(p * 2^16) / 2^16."""
    return round(p * 2**16)


def kernel_seed() -> int:
    """A seed for the native kernels' counter-based bits: one draw from torch's generator, so
    `torch.manual_seed` and a checkpoint's RNG state decide them."""
    return int(torch.empty((), dtype=torch.int64).random_())


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout` that drops with probability round(p * 2^16) / 2^16 (within 8e-6 of p). CPU Bernoulli
    sampling costs ~8 ns per element; here one 64-bit draw gives four elements 16 random bits each."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if x.dtype in NativeDropout.KERNELS and native.library() is not None:
        return NativeDropout.apply(x, p)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, 2**63 - 1).view(torch.int16)[:n]
    keep = bits >= keep_threshold(p) - 2**15
    return torch.where(keep.view(x.shape), x, 0) * (1.0 / (1.0 - p))


class NativeDropout(torch.autograd.Function):
    """`dropout` of a bf16 or fp32 CPU tensor by native/dropout.c: the same keep rate and
    arithmetic in one pass (random bits, mask, scale) instead of four, with a one-pass backward. Its random
    bits come from a counter-based generator seeded by one draw from torch's, so `torch.manual_seed` and the
    RNG state a checkpoint restores decide every mask, as they do on the PyTorch path; both kernels draw the
    same bits, so a seed gives the same mask in either precision."""

    KERNELS = {torch.bfloat16: "bf16", torch.float32: "f32"}  # dtype -> suffix of the kernels' names

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        x = x.contiguous()
        y, keep = torch.empty_like(x), torch.empty(x.shape, dtype=torch.uint8)
        ctx.scale = 1.0 / (1.0 - p)
        ctx.dtype = x.dtype
        forward = getattr(native.library(), f"dropout_{NativeDropout.KERNELS[x.dtype]}_forward")
        forward(x.numel(), x.data_ptr(), y.data_ptr(), keep.data_ptr(), kernel_seed(), keep_threshold(p), ctx.scale,
                torch.get_num_threads())
        ctx.save_for_backward(keep)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        if grad.dtype != ctx.dtype:
            return torch.where(keep.bool(), grad, 0) * ctx.scale, None
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        backward = getattr(native.library(), f"dropout_{NativeDropout.KERNELS[grad.dtype]}_backward")
        backward(grad.numel(), grad.data_ptr(), keep.data_ptr(), out.data_ptr(), ctx.scale, torch.get_num_threads())
        return out, None


class NativeAttention(torch.autograd.Function):
    """Attention with dropout on packed [tokens, heads * head_size] queries, keys and values of CPU tensors, by
    native/attention.c: sequence s's queries are rows q_starts[s]:q_starts[s + 1] and attend to key rows
    k_starts[s]:k_starts[s + 1]. Returns the packed context. The dropout seed is one draw from torch's
    generator; the backward redraws the same mask from it."""

    @staticmethod
    def forward(ctx, queries, keys, values, q_starts, k_starts, heads: int, scale: float, p: float):
        queries, keys, values = queries.contiguous(), keys.contiguous(), values.contiguous()
        context = torch.empty_like(queries)
        softmax_stats = torch.empty(queries.shape[0], heads, 2, dtype=torch.float32)
        ctx.geometry = (len(q_starts) - 1, heads, queries.shape[1] // heads, q_starts.data_ptr(), k_starts.data_ptr(),
                        queries.data_ptr(), keys.data_ptr(), values.data_ptr(), queries.dtype == torch.bfloat16, scale,
                        keep_threshold(p), 1.0 / (1.0 - p), kernel_seed() if p else 0)
        native.library().attention_forward(*ctx.geometry, context.data_ptr(), softmax_stats.data_ptr(),
                                           torch.get_num_threads())
        ctx.save_for_backward(queries, keys, values, q_starts, k_starts, softmax_stats)
        return context

    @staticmethod
    def backward(ctx, grad_context):
        queries, keys, values, _, _, softmax_stats = ctx.saved_tensors  # the starts stay alive for the pointers
        grad_context = grad_context.to(queries.dtype).contiguous()
        grads = [torch.empty_like(queries), torch.empty_like(keys), torch.empty_like(values)]
        native.library().attention_backward(*ctx.geometry, grad_context.data_ptr(), softmax_stats.data_ptr(),
                                            *[g.data_ptr() for g in grads], torch.get_num_threads())
        return *grads, None, None, None, None, None
