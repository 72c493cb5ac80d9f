"""Bootstrap confidence intervals and paired bootstrap significance (Koehn 2004) for corpus metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _take(stats, idx: np.ndarray):
    return stats[idx] if isinstance(stats, np.ndarray) else [stats[i] for i in idx]


def _samples(n: int, samples: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n, size=n) for _ in range(samples))


def scalar_keys(scores: dict) -> list[str]:
    """The keys of `scores` that hold a real-valued score (floats; not counts, strings or nested dicts)."""
    return [k for k, v in scores.items() if isinstance(v, float)]


def bootstrap_ci(
    stats: Sequence, score: Callable[[Sequence], dict], level: float = 0.95, samples: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile interval at `level` for every real-valued score: resample the examples (rows of
    per-example `stats`) with replacement, `samples` times with a seeded generator, recompute `score`."""
    values: dict[str, list[float]] = {}
    for idx in _samples(len(stats), samples, seed):
        result = score(_take(stats, idx))
        for key in scalar_keys(result):
            values.setdefault(key, []).append(result[key])
    tail = 100 * (1 - level) / 2
    return {k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for k, v in values.items()}


def paired_bootstrap(
    stats_a: Sequence, stats_b: Sequence, score: Callable[[Sequence], float], samples: int = 1000, seed: int = 0
) -> dict:
    """Paired bootstrap resampling (Koehn 2004) of two systems scored on the same examples.

    Both systems are rescored on the same resampled example sets. The p-value is the share of resamples
    in which the system that is better on the full set is not better, (count + 1) / (samples + 1)
    (Monte-Carlo add-one, so never 0); identical scores on the full set give p = 1.
    """
    a, b = score(stats_a), score(stats_b)
    sign = np.sign(a - b)
    if sign == 0:
        return {"score": a, "other": b, "delta": 0.0, "p_value": 1.0, "samples": samples}
    losses = sum(
        np.sign(score(_take(stats_a, idx)) - score(_take(stats_b, idx))) != sign
        for idx in _samples(len(stats_a), samples, seed)
    )
    return {"score": a, "other": b, "delta": a - b, "p_value": float((losses + 1) / (samples + 1)), "samples": samples}
