"""Text-generation metrics: corpus BLEU and chrF (sacrebleu, from summable statistics) and ROUGE."""

from __future__ import annotations

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

from adapt.errors import AdaptError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _check_streams(hypotheses: list[str], references: list[list[str]]) -> None:
    if not hypotheses:
        raise AdaptError("no hypotheses to score")
    if not references:
        raise AdaptError("no reference stream given")
    for i, stream in enumerate(references):
        if len(stream) != len(hypotheses):
            raise AdaptError(f"reference stream {i + 1} has {len(stream)} lines but there are {len(hypotheses)} hypotheses")


def _metric(name: str) -> BLEU | CHRF:
    return BLEU() if name == "bleu" else CHRF()


def sentence_stats(name: str, hypotheses: list[str], references: list[list[str]]) -> np.ndarray:
    """Per-sentence sufficient statistics of "bleu" or "chrf" (rows sum to sacrebleu's corpus statistics)."""
    _check_streams(hypotheses, references)
    return np.asarray(_metric(name)._extract_corpus_statistics(hypotheses, references), dtype=np.int64)


def score_from_stats(name: str, stats: np.ndarray, num_refs: int) -> dict:
    """Corpus BLEU or chrF from summed statistics; equals sacrebleu's `corpus_score` on the same sentences."""
    metric = _metric(name)
    metric.num_refs = num_refs  # shown in the signature, as corpus_score sets it
    score = metric._compute_score_from_stats([int(x) for x in stats])
    signature = str(metric.get_signature())
    if name == "chrf":
        return {"chrf": float(score.score), "signature": signature}
    return {
        "bleu": float(score.score),
        "signature": signature,
        "precisions": [float(p) for p in score.precisions],
        "bp": float(score.bp),
        "sys_len": int(score.sys_len),
        "ref_len": int(score.ref_len),
    }


def _corpus(name: str, hypotheses: list[str], references: list[list[str]]) -> dict:
    return score_from_stats(name, sentence_stats(name, hypotheses, references).sum(axis=0), len(references))


def bleu_score(hypotheses: list[str], references: list[list[str]]) -> dict:
    """sacrebleu corpus BLEU (13a tokenisation, exp smoothing); `references` is a list of reference streams."""
    return _corpus("bleu", hypotheses, references)


def chrf_score(hypotheses: list[str], references: list[list[str]]) -> dict:
    """sacrebleu corpus chrF (character 6-grams, beta 2); `references` is a list of reference streams."""
    return _corpus("chrf", hypotheses, references)


def rouge_example_scores(predictions: list[str], references: list[str], use_stemmer: bool = True) -> np.ndarray:
    """Per-example ROUGE F-measures, one row per example, columns in ROUGE_TYPES order."""
    if len(predictions) != len(references):
        raise AdaptError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise AdaptError("no predictions to score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    rows = []
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        rows.append([scores[t].fmeasure for t in ROUGE_TYPES])
    return np.asarray(rows, dtype=np.float64)


def rouge_scores(predictions: list[str], references: list[str], use_stemmer: bool = True) -> dict:
    """Mean over examples of rouge_score's F-measure (0..1) for rouge1, rouge2, rougeL and rougeLsum.

    This equals HF evaluate's rouge with use_aggregator=False followed by a plain mean (evaluate's
    default aggregator instead reports a bootstrap median). rougeLsum splits summaries on newlines:
    the caller puts one sentence per line (as the HF summarization examples do with nltk); without
    newlines rougeLsum equals rougeL.
    """
    means = rouge_example_scores(predictions, references, use_stemmer).mean(axis=0)
    return {name: float(value) for name, value in zip(ROUGE_TYPES, means)}
