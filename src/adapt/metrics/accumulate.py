"""An `evaluate`-style accumulating metric (add_batch/add/compute) that gathers examples across processes."""

from __future__ import annotations

from collections.abc import Callable

from accelerate.utils import gather_object

from adapt.errors import AdaptError
from adapt.metrics.classification import classification_scores
from adapt.metrics.generation import bleu_score, chrf_score, rouge_scores
from adapt.metrics.sequence import seqeval_scores
from adapt.metrics.squad import squad_scores, squad_v2_scores


def _squad_inputs(predictions: list[dict], references: list[dict]) -> tuple[dict, dict, dict]:
    preds = {p["id"]: p["prediction_text"] for p in predictions}
    golds = {r["id"]: list(r["answers"]["text"]) for r in references}
    no_answer = {p["id"]: p["no_answer_probability"] for p in predictions if "no_answer_probability" in p}
    return preds, golds, no_answer


def _squad(predictions, references):
    preds, golds, _ = _squad_inputs(predictions, references)
    return squad_scores(preds, golds)


def _squad_v2(predictions, references, threshold: float = 1.0):
    preds, golds, no_answer = _squad_inputs(predictions, references)
    return squad_v2_scores(preds, golds, no_answer or None, threshold)


def _streams(references: list[list[str]]) -> list[list[str]]:
    """Per-example reference lists (evaluate's format) -> reference streams (sacrebleu's format)."""
    counts = {len(refs) for refs in references}
    if len(counts) != 1:
        raise AdaptError(f"every example needs the same number of references, got counts {sorted(counts)}")
    return [list(stream) for stream in zip(*references)]


def _bleu(predictions, references, tokenize: str | None = None, target_lang: str | None = None):
    return bleu_score(list(predictions), _streams(references), tokenize, target_lang)


def _chrf(predictions, references):
    return chrf_score(list(predictions), _streams(references))


_FUNCTIONS: dict[str, Callable[..., dict]] = {
    **dict.fromkeys(("accuracy", "f1", "precision", "recall", "matthews"), classification_scores),
    "seqeval": seqeval_scores,
    "squad": _squad,
    "squad_v2": _squad_v2,
    "bleu": _bleu,
    "chrf": _chrf,
    "rouge": rouge_scores,
}


class Metric:
    """Accumulates predictions/references batch by batch; `compute` scores them all at once.

    Inputs use the `evaluate` formats: labels; tag lists (seqeval); {"id", "prediction_text"} against
    {"id", "answers": {"text": [...]}} (squad, squad_v2 with optional "no_answer_probability");
    strings against per-example lists of reference strings (bleu, chrf); strings against strings (rouge).
    With an `accelerator`, `compute` gathers every process's examples first, so when each process adds
    its own shard of a partition every example counts exactly once, and all processes get the result.
    The classification names all return the full `classification_scores` dict.
    """

    def __init__(self, name: str, function: Callable[..., dict], accelerator=None):
        self.name, self._function, self._accelerator = name, function, accelerator
        self._predictions: list = []
        self._references: list = []

    def add_batch(self, *, predictions, references) -> None:
        predictions, references = list(predictions), list(references)
        if len(predictions) != len(references):
            raise AdaptError(f"{self.name}: batch has {len(predictions)} predictions but {len(references)} references")
        self._predictions += predictions
        self._references += references

    def add(self, *, prediction, reference) -> None:
        self.add_batch(predictions=[prediction], references=[reference])

    def compute(self, **kwargs) -> dict:
        """Score everything added so far (on all processes when an accelerator is set), then reset."""
        predictions, references = self._predictions, self._references
        if self._accelerator is not None:
            predictions, references = gather_object(predictions), gather_object(references)
        self._predictions, self._references = [], []
        return self._function(predictions, references, **kwargs)


def load(name: str, accelerator=None) -> Metric:
    """The accumulating metric called `name`: one of accuracy, f1, precision, recall, matthews, seqeval,
    squad, squad_v2, bleu, chrf, rouge."""
    if name not in _FUNCTIONS:
        raise AdaptError(f"unknown metric '{name}'; known metrics: {', '.join(_FUNCTIONS)}")
    return Metric(name, _FUNCTIONS[name], accelerator)
