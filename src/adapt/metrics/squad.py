"""Extractive QA metrics: exact match and token F1 exactly as the official SQuAD v1.1 and v2.0 scripts."""

from __future__ import annotations

import collections
import re
import string

from adapt.errors import AdaptError

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (official scripts)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _exact(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # v2.0 rule; in v1.1 every gold answer is non-empty
        return float(pred_tokens == gold_tokens)
    same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _check_ids(predictions: dict, references: dict) -> None:
    if not references:
        raise AdaptError("no reference questions to score")
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        raise AdaptError(f"no prediction for question id '{missing[0]}' ({len(missing)} missing in all)")


def squad_example_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, tuple[int, float]]:
    """Per question id: (exact match 0/1, F1 0..1), each the max over the gold answers (SQuAD v1.1)."""
    _check_ids(predictions, references)
    out = {}
    for qid, golds in references.items():
        if not golds:
            raise AdaptError(f"question id '{qid}' has no gold answer; use squad_v2 for unanswerable questions")
        pred = predictions[qid]
        out[qid] = (max(_exact(pred, g) for g in golds), max(_f1(pred, g) for g in golds))
    return out


def squad_aggregate(rows) -> dict:
    """`exact_match` and `f1` (0..100) from per-question (exact, f1) rows."""
    rows = list(rows)
    return {
        "exact_match": 100.0 * sum(e for e, _ in rows) / len(rows),
        "f1": 100.0 * sum(f for _, f in rows) / len(rows),
    }


def squad_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict:
    """SQuAD v1.1 `exact_match` and `f1` on a 0..100 scale; every reference id counted once."""
    return squad_aggregate(squad_example_scores(predictions, references).values())


def squad_v2_example_scores(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    no_answer_probs: dict[str, float] | None = None,
    threshold: float = 1.0,
) -> dict[str, tuple[bool, int, float]]:
    """Per question id: (has an answer, exact 0/1, F1 0..1) after the no-answer threshold (SQuAD v2.0)."""
    _check_ids(predictions, references)
    out = {}
    for qid, golds in references.items():
        golds = [g for g in golds if normalize_answer(g)] or [""]
        has_answer = golds != [""]
        if no_answer_probs is not None and no_answer_probs.get(qid, 0.0) > threshold:
            out[qid] = (has_answer, int(not has_answer), float(not has_answer))
        else:
            pred = predictions[qid]
            out[qid] = (has_answer, max(_exact(pred, g) for g in golds), max(_f1(pred, g) for g in golds))
    return out


def squad_v2_scores(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    no_answer_probs: dict[str, float] | None = None,
    threshold: float = 1.0,
) -> dict:
    """Official SQuAD v2.0 `exact`/`f1`/`total` with HasAns_* and NoAns_* breakdowns (0..100 scale).

    An empty gold list means unanswerable; an empty prediction means "no answer". A question whose
    no-answer probability exceeds `threshold` is treated as answered "no answer". As in the official
    script, the HasAns_* (NoAns_*) keys are present only when such questions exist.
    """
    return squad_v2_aggregate(squad_v2_example_scores(predictions, references, no_answer_probs, threshold).values())


def squad_v2_aggregate(rows) -> dict:
    """Overall, HasAns_* and NoAns_* exact/f1 (0..100) and totals from (has_answer, exact, f1) rows."""
    rows, out = list(rows), {}
    for prefix, keep in (("", lambda h: True), ("HasAns_", lambda h: h), ("NoAns_", lambda h: not h)):
        group = [(e, f) for h, e, f in rows if keep(h)]
        if group:
            out[f"{prefix}exact"] = 100.0 * sum(e for e, _ in group) / len(group)
            out[f"{prefix}f1"] = 100.0 * sum(f for _, f in group) / len(group)
            out[f"{prefix}total"] = len(group)
    return out
