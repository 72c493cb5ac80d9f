"""Model FLOPs utilisation: the training FLOPs a BERT-style classifier needs for given sequence lengths, and
this machine's measured bf16 matmul throughput to divide them by.

Training FLOPs of one example with T real (non-pad) tokens, counting a multiply-add as 2 FLOPs and the
backward pass as twice the forward (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, appendix B):
    6 * N_layers * T            dense matmuls of the transformer layers (N_layers = their parameter count)
  + 12 * L * d * T**2           attention scores Q.K^T and the weighted sum over V (L layers, width d)
  + 6 * N_head                  pooler and classifier, applied to the [CLS] token only
Embedding lookups are not matmuls and count as zero. Padding is never counted: these are the FLOPs the
model needs, so a system that computes on pad tokens gets no credit for them (MFU, not hardware FLOPs)."""

from __future__ import annotations

import time

import torch


def classifier_flop_counts(model) -> dict[str, int]:
    """Parameter counts of a *ForSequenceClassification encoder split by how often they are applied."""
    per_token = per_example = 0
    for name, param in model.named_parameters():
        if ".embeddings." in f".{name}":
            continue
        if ".encoder." in f".{name}":
            per_token += param.numel()
        else:  # pooler and classifier
            per_example += param.numel()
    config = model.config
    return {"layer_params": per_token, "head_params": per_example,
            "num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size}


def training_flops(lengths: list[int], counts: dict[str, int]) -> float:
    """Training FLOPs of one pass over examples with these real token counts (formula in the module doc)."""
    attention = 12 * counts["num_layers"] * counts["hidden_size"]
    return float(sum(6 * counts["layer_params"] * t + attention * t * t + 6 * counts["head_params"] for t in lengths))


def bf16_matmul_flops_per_s(size: int, repeats: int = 5) -> float:
    """Best-of-`repeats` throughput of a square bf16 matmul on the device the benchmark trains on."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)

    def timed(calls: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / calls

    # the first call pays for kernel selection and thread start-up; then time batches of calls long
    # enough (~0.2 s) that launch overhead and timer resolution do not matter on a GPU
    calls = max(1, int(0.2 / max(timed(1), timed(1), 1e-6)))
    return 2 * size**3 / min(timed(calls) for _ in range(repeats))
