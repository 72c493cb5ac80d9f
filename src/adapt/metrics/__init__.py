"""Offline, exact evaluation metrics: pure functions on predictions/references and an accumulating Metric."""

from adapt.metrics.accumulate import Metric, load
from adapt.metrics.classification import classification_scores
from adapt.metrics.generation import bleu_score, chrf_score, rouge_scores
from adapt.metrics.perplexity import model_perplexity, perplexity_from_nll
from adapt.metrics.sequence import seqeval_scores
from adapt.metrics.squad import squad_scores, squad_v2_scores

__all__ = [
    "Metric",
    "bleu_score",
    "chrf_score",
    "classification_scores",
    "load",
    "model_perplexity",
    "perplexity_from_nll",
    "rouge_scores",
    "seqeval_scores",
    "squad_scores",
    "squad_v2_scores",
]
