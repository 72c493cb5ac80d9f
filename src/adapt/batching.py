"""Deterministic, resumable batch plans: length-grouped global batches split across processes, and a
loader that fetches a whole batch from Arrow at once and pads it dynamically."""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from datasets import Dataset

# Length grouping sorts inside windows of this many global batches. Wider windows pad less but make
# each batch a narrow length band, which cost SST-2 accuracy here (1 epoch, 8k examples, 2 seeds:
# window 64 -> 0.826/0.844, 16 -> 0.851/0.861, no grouping -> 0.854 at 0.45x the speed).
MEGABATCH_FACTOR = 16


def example_lengths(features: Dataset) -> list[int]:
    """The features' token counts as a plain list: the batch planners index it per example, and per-item
    access to an Arrow column costs ~35 us (0.45 s per evaluation of 1.7k examples)."""
    return features["length"][:]


def global_batches(lengths: list[int], global_batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """The epoch's batches as lists of example indices; a pure function of (seed, epoch) so that a
    resumed run replays exactly the same order."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if not group_by_length:
        return [order[i:i + global_batch_size] for i in range(0, len(order), global_batch_size)]
    window = global_batch_size * MEGABATCH_FACTOR
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i:i + global_batch_size] for i in range(0, len(chunk), global_batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def shard_batch(batch: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global batch. A short last batch wraps around so that every process
    runs the same number of steps (the loss is normalised by the true global target count)."""
    if world == 1:
        return batch
    if len(batch) % world:
        batch = batch + batch[: world - len(batch) % world]
    return batch[rank::world]


def eval_order(lengths: list[int], rank: int, world: int) -> list[int]:
    """Indices this process evaluates: a disjoint strided shard, longest first so batches are tight."""
    mine = list(range(rank, len(lengths), world))
    return sorted(mine, key=lambda i: -lengths[i])


def eval_batches(indices: list[int], lengths: list[int], max_batch: int, max_tokens: int | None = None) -> list[list[int]]:
    """Consecutive slices of a length-sorted index list, capped by examples and by padded tokens."""
    batches, current = [], []
    for i in indices:
        width = max([lengths[j] for j in current[:1]] + [lengths[i]])
        if current and (len(current) >= max_batch or (max_tokens and width * (len(current) + 1) > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class BatchLoader(torch.utils.data.Dataset):
    """Item i is batch i, collated. Used with DataLoader(batch_size=None) so workers (if any) collate
    whole batches in parallel; Arrow serves each batch in one read rather than row by row."""

    def __init__(self, features: Dataset, batches: list[list[int]], collate: Callable[[dict], dict]):
        self.features, self.batches, self.collate = features, batches, collate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        rows = self.features[self.batches[i]]
        batch = self.collate(rows)
        batch["index"] = torch.tensor(self.batches[i])
        return batch


def iterate(features: Dataset, batches: list[list[int]], collate: Callable, num_workers: int = 0) -> Iterator[dict]:
    loader = BatchLoader(features, batches, collate)
    if num_workers == 0:
        return (loader[i] for i in range(len(loader)))
    return iter(torch.utils.data.DataLoader(loader, batch_size=None, num_workers=num_workers, persistent_workers=False))


def steps_per_epoch(n_examples: int, global_batch_size: int) -> int:
    return math.ceil(n_examples / global_batch_size)


def optimizer_steps(n_train: int, cfg, world: int = 1) -> tuple[int, int]:
    """(optimizer steps, micro-batches) of a run with TrainConfig `cfg`: max_steps wins over epochs."""
    if cfg.max_steps:
        return cfg.max_steps, cfg.max_steps * cfg.grad_accum
    total_micro = math.ceil(cfg.epochs * steps_per_epoch(n_train, cfg.batch_size * world))
    return math.ceil(total_micro / cfg.grad_accum), total_micro


def micro_batch_plan(lengths: list[int], cfg, total_micro: int, world: int = 1) -> list[list[int]]:
    """The global micro-batches of a whole run, epoch after epoch, as the loop draws them."""
    plan, epoch = [], 0
    while len(plan) < total_micro:
        plan += global_batches(lengths, cfg.batch_size * world, cfg.seed, epoch, cfg.group_by_length)
        epoch += 1
    return plan[:total_micro]
