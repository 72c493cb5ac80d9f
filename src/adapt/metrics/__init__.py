"""Offline, exact evaluation metrics: pure functions on predictions/references and an accumulating Metric.

Names resolve on first use, so a run imports only the metric libraries its task needs."""

from importlib import import_module

_HOMES = {
    "Metric": "accumulate",
    "load": "accumulate",
    "classification_scores": "classification",
    "multi_label_scores": "classification",
    "tune_threshold": "classification",
    "regression_scores": "regression",
    "bleu_score": "generation",
    "chrf_score": "generation",
    "rouge_scores": "generation",
    "model_perplexity": "perplexity",
    "perplexity_from_nll": "perplexity",
    "seqeval_scores": "sequence",
    "squad_scores": "squad",
    "squad_v2_scores": "squad",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'adapt.metrics' has no attribute '{name}'")
    return getattr(import_module(f"adapt.metrics.{_HOMES[name]}"), name)
