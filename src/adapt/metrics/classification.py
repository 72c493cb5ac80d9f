"""Classification metrics (accuracy, P/R/F1, Matthews) on label sequences, from one confusion matrix
(numpy only: the figures equal scikit-learn's, which tests check, without its ~1.5 s import)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapt.errors import AdaptError


def _names(labels: Sequence, label_names: Sequence[str] | None) -> list:
    if label_names is None:
        return list(labels)
    try:
        return [label_names[x] if isinstance(x, int) else x for x in labels]
    except IndexError:
        raise AdaptError(f"label index out of range for {len(label_names)} label names: {list(labels)}") from None


def classification_scores(
    predictions: Sequence, references: Sequence, label_names: Sequence[str] | None = None
) -> dict:
    """Accuracy, macro/micro/weighted F1, macro P/R, Matthews and per-class F1.

    Averages run over the labels that occur in predictions or references (scikit-learn's default);
    a class with no predicted or no gold example scores 0 for that quantity (zero_division=0).
    Macro/weighted figures are the plain/support-weighted means of scikit-learn's per-class scores,
    and micro F1 equals accuracy (single-label data), as scikit-learn's own averages give.
    Int labels are indices into `label_names` when it is given.
    """
    if len(predictions) != len(references):
        raise AdaptError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise AdaptError("no examples to score")
    preds, refs = _names(predictions, label_names), _names(references, label_names)
    labels = sorted(set(preds) | set(refs), key=str)
    index = {label: k for k, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)  # rows: gold, columns: predicted
    np.add.at(confusion, ([index[x] for x in refs], [index[x] for x in preds]), 1)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    p, r = _ratio(tp, predicted), _ratio(tp, support)
    f = _ratio(2 * tp, support + predicted)  # = 2PR/(P+R), and 0 where a class is never seen or predicted
    accuracy = float(tp.sum() / len(refs))
    matthews = _matthews(confusion)
    return {
        "accuracy": accuracy,
        "f1_macro": float(f.mean()),
        "f1_micro": accuracy,
        "f1_weighted": float(np.average(f, weights=support)),
        "precision_macro": float(p.mean()),
        "recall_macro": float(r.mean()),
        "matthews": matthews,
        "f1_per_class": {str(label): float(x) for label, x in zip(labels, f)},
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def _matthews(confusion: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K, as scikit-learn computes it); 0 when undefined."""
    n = float(confusion.sum())
    correct = float(np.trace(confusion))
    predicted, gold = confusion.sum(axis=0).astype(np.float64), confusion.sum(axis=1).astype(np.float64)
    covariance = correct * n - predicted @ gold
    denominator = np.sqrt((n * n - predicted @ predicted) * (n * n - gold @ gold))
    return float(covariance / denominator) if denominator > 0 else 0.0
