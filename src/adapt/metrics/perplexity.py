"""Perplexity: from a summed NLL, or of a causal LM on text by the sliding-window (strided) method."""

from __future__ import annotations

import math

import torch

from adapt.errors import AdaptError


def perplexity_from_nll(total_nll: float, total_tokens: int) -> dict:
    """`perplexity` = exp(total_nll / total_tokens), the mean `nll` per token (nats), and `tokens`."""
    if total_tokens <= 0:
        raise AdaptError("no tokens were scored (a text needs at least 2 model tokens), so perplexity is undefined")
    mean = total_nll / total_tokens
    try:
        perplexity = math.exp(mean)
    except OverflowError:  # mean NLL past ~709 nats: the perplexity is beyond float range
        perplexity = math.inf
    return {"perplexity": perplexity, "nll": mean, "tokens": int(total_tokens)}


def sliding_windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) windows over a sequence of `length` token ids.

    The sliding-window method of the HF guide "Perplexity of fixed-length models": a window starts every
    `stride` tokens; the model reads ids[begin:end-1] (at most `max_length` tokens) and predicts
    ids[begin+1:end], of which only positions first_target..end-1 (those no earlier window scored) count,
    so each such token sees at least `max_length - stride + 1` tokens of context (all earlier tokens when
    there are fewer). Token 0 has no context and is never scored: the targets of all windows partition
    positions 1..length-1, `length - 1` tokens in all, for any stride including stride == max_length.
    """
    if not 0 < stride <= max_length:
        raise AdaptError(f"stride must be in 1..max_length ({max_length}), got {stride}")
    windows, begin, next_target = [], 0, 1
    while next_target < length:
        end = min(begin + max_length + 1, length)
        windows.append((begin, end, next_target))
        begin, next_target = begin + stride, end
    return windows


@torch.no_grad()
def _window_nll(model, rows: list[list[int]], first_targets: list[int], device) -> float:
    """Summed NLL of the target tokens of a batch of windows; rows[i][0] is never a target."""
    width = max(len(r) for r in rows) - 1
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, first) in enumerate(zip(rows, first_targets)):
        row = torch.tensor(row)
        ids[i, : len(row) - 1], mask[i, : len(row) - 1] = row[:-1], 1
        labels[i, first - 1 : len(row) - 1] = row[first:]  # context tokens stay -100
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    return float(torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.to(logits.device).reshape(-1), ignore_index=-100, reduction="sum"
    ))


def model_perplexity(
    model,
    tokenizer,
    texts: str | list[str],
    max_length: int = 1024,
    stride: int = 512,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
) -> dict:
    """Token-weighted perplexity of a causal LM over `texts` (one long text, or documents scored separately).

    Each document is tokenised with the tokenizer's defaults (special tokens included) and cut into
    `sliding_windows`; every token but a document's first is scored exactly once, and the NLL is summed
    over all scored tokens before dividing (not a mean of window or batch means). Windows are right-padded
    into batches of `batch_size`; padding is masked out and never scored.
    """
    documents = [texts] if isinstance(texts, str) else list(texts)
    jobs = []
    for doc in documents:
        ids = list(tokenizer(doc)["input_ids"])
        jobs += [(ids[b:e], t - b) for b, e, t in sliding_windows(len(ids), max_length, stride)]
    model.eval()
    total_nll, tokens = 0.0, sum(len(row) - first for row, first in jobs)
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        total_nll += _window_nll(model, [r for r, _ in batch], [f for _, f in batch], device)
    return {**perplexity_from_nll(total_nll, tokens), "stride": stride, "max_length": max_length}
