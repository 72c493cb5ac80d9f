"""Classification metrics (accuracy, P/R/F1, Matthews) on label sequences, computed with scikit-learn."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import matthews_corrcoef, precision_recall_fscore_support

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
    p, r, f, support = precision_recall_fscore_support(refs, preds, labels=labels, average=None, zero_division=0)
    with warnings.catch_warnings():  # a single-class resample makes matthews_corrcoef warn; it returns 0
        warnings.simplefilter("ignore")
        matthews = float(matthews_corrcoef(refs, preds))
    accuracy = float(np.mean([a == b for a, b in zip(preds, refs)]))
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
