"""Entity-level sequence-labelling metrics (precision/recall/F1 per type, token accuracy) via seqeval."""

from __future__ import annotations

import warnings

from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import IOB2

from adapt.errors import AdaptError

_SUMMARY_ROWS = ("micro avg", "macro avg", "weighted avg")


def seqeval_scores(predictions: list[list[str]], references: list[list[str]], strict: bool = True) -> dict:
    """Micro entity P/R/F1, token accuracy and per-type scores, equal to seqeval's classification_report.

    strict=True (the default) is `mode="strict", scheme=IOB2`: an entity counts only when its type and
    exact IOB2 span match. strict=False is seqeval's default conlleval-style mode, which also accepts
    an entity that starts with I- and is lenient about ill-formed spans.
    """
    if len(predictions) != len(references):
        raise AdaptError(f"{len(predictions)} predicted sentences but {len(references)} reference sentences")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if len(p) != len(r):
            raise AdaptError(f"sentence {i + 1}: {len(p)} predicted tags but {len(r)} reference tags")
    kwargs = {"mode": "strict", "scheme": IOB2} if strict else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = classification_report(references, predictions, output_dict=True, zero_division=0, **kwargs)
    except (ValueError, KeyError) as err:
        raise AdaptError(f"tags are not valid IOB2 ({err}); pass strict=False for seqeval's lenient mode") from None
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(accuracy_score(references, predictions)),
        "per_type": {
            name: {
                "precision": float(row["precision"]),
                "recall": float(row["recall"]),
                "f1": float(row["f1-score"]),
                "support": int(row["support"]),
            }
            for name, row in report.items()
            if name not in _SUMMARY_ROWS
        },
    }
