"""Classification metrics (accuracy, P/R/F1, Matthews) on label sequences, from one confusion matrix
(numpy only: the figures equal scikit-learn's, which tests check, without its ~1.5 s import)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapt.errors import AdaptError


# the scalar figures each scorer reports (f1_per_class besides): the metrics a run can pick its best checkpoint by
SINGLE_LABEL_METRICS = ("accuracy", "f1_macro", "f1_micro", "f1_weighted", "precision_macro", "recall_macro",
                        "matthews")
MULTI_LABEL_METRICS = ("f1_micro", "f1_macro", "precision_micro", "recall_micro", "precision_macro", "recall_macro",
                       "subset_accuracy")


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


def multi_label_scores(predicted: np.ndarray, gold: np.ndarray, label_names: Sequence[str]) -> dict:
    """Multi-label scores of 0/1 indicator matrices `predicted` and `gold`, both [N examples, L labels]
    (column j = label_names[j]).

    Micro P/R/F1 pool the true/false positives of every (example, label) cell; macro P/R/F1 are the plain
    means of the L per-label figures, over all L labels (a label never predicted nor gold scores 0:
    zero_division=0); subset accuracy is the fraction of examples whose predicted label set equals the gold
    set exactly (an empty gold set is matched by predicting nothing). These equal scikit-learn's
    `f1_score(average="micro"/"macro", zero_division=0)` and `accuracy_score` on indicator matrices.

    Raises:
        AdaptError: the matrices differ in shape, have no rows, or their width is not len(label_names).
    """
    predicted, gold = np.asarray(predicted, dtype=bool), np.asarray(gold, dtype=bool)
    if predicted.shape != gold.shape or predicted.ndim != 2 or predicted.shape[1] != len(label_names):
        raise AdaptError(f"predictions {predicted.shape} and references {gold.shape} must both be "
                         f"[examples, {len(label_names)} labels]")
    if not len(gold):
        raise AdaptError("no examples to score")
    tp = (predicted & gold).sum(axis=0).astype(np.float64)
    n_predicted, support = predicted.sum(axis=0).astype(np.float64), gold.sum(axis=0).astype(np.float64)
    p, r = _ratio(tp, n_predicted), _ratio(tp, support)
    f = _ratio(2 * tp, support + n_predicted)
    tp_all, predicted_all, gold_all = tp.sum(), n_predicted.sum(), support.sum()
    return {
        "f1_micro": float(2 * tp_all / (predicted_all + gold_all)) if predicted_all + gold_all else 0.0,
        "f1_macro": float(f.mean()),
        "precision_micro": float(tp_all / predicted_all) if predicted_all else 0.0,
        "recall_micro": float(tp_all / gold_all) if gold_all else 0.0,
        "precision_macro": float(p.mean()),
        "recall_macro": float(r.mean()),
        "subset_accuracy": float((predicted == gold).all(axis=1).mean()),
        "f1_per_class": {str(name): float(x) for name, x in zip(label_names, f)},
    }


# candidate decision thresholds for `tune_threshold`: 0.05, 0.10, ..., 0.95
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


def tune_threshold(probabilities: np.ndarray, gold: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID) -> float:
    """The one global decision threshold t of `grid` whose predictions (probability >= t) give the highest
    micro F1 against `gold` (both [N, L]; probabilities in [0, 1]); ties go to the value nearest 0.5.

    Raises:
        AdaptError: the shapes differ or there are no rows (see `multi_label_scores`).
    """
    probabilities, gold = np.asarray(probabilities, dtype=np.float64), np.asarray(gold, dtype=bool)
    if probabilities.shape != gold.shape or not len(gold):
        raise AdaptError(f"probabilities {probabilities.shape} and references {gold.shape} must be the same "
                         "non-empty [examples, labels] shape")
    gold_all = gold.sum()

    def micro_f1(t: float) -> float:
        predicted = probabilities >= t
        total = predicted.sum() + gold_all
        return float(2 * (predicted & gold).sum() / total) if total else 0.0

    return max(sorted(grid, key=lambda t: abs(t - 0.5)), key=micro_f1)
