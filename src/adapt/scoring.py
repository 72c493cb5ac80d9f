"""`adapt eval` on files: read prediction/reference files, score them, add bootstrap CIs and paired tests,
render the result as a table or JSON, and write per-example output."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from adapt.errors import AdaptError
from adapt.metrics.classification import classification_scores
from adapt.metrics.generation import ROUGE_TYPES, rouge_example_scores, score_from_stats, sentence_stats
from adapt.metrics.resampling import bootstrap_ci, paired_bootstrap
from adapt.metrics.sequence import seqeval_scores
from adapt.metrics.squad import squad_aggregate, squad_example_scores, squad_v2_aggregate, squad_v2_example_scores

# metric name -> (kind of input files, keys it reports (None: all), key compared by --compare)
METRICS: dict[str, tuple[str, tuple[str, ...] | None, str]] = {
    "accuracy": ("classification", ("accuracy",), "accuracy"),
    "f1": ("classification", ("f1_macro", "f1_micro", "f1_weighted", "f1_per_class"), "f1_macro"),
    "precision": ("classification", ("precision_macro",), "precision_macro"),
    "recall": ("classification", ("recall_macro",), "recall_macro"),
    "matthews": ("classification", ("matthews",), "matthews"),
    "seqeval": ("seqeval", None, "f1"),
    "squad": ("squad", None, "f1"),
    "squad_v2": ("squad_v2", None, "f1"),
    "bleu": ("text", None, "bleu"),
    "chrf": ("text", None, "chrf"),
    "rouge": ("text", None, "rougeL"),
}
_JSON_FIELD = {"classification": "label", "seqeval": "tags", "text": "text"}


@dataclass
class Examples:
    """Aligned predictions and references; `references[i]` is the list of references of example i."""

    ids: list[str]
    predictions: list
    references: list[list]
    no_answer: dict[str, float] | None = None


def _records(path: str) -> list[tuple[int, str]]:
    """(line number, line) of a text file (gzip when it ends in .gz), without trailing newlines."""
    file = Path(path)
    if not file.is_file():
        raise AdaptError(f"{path}: no such file")
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rt", encoding="utf-8") as handle:
        lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(handle, start=1)]
    if not lines or (path.endswith(".jsonl") and not any(line.strip() for _, line in lines)):
        raise AdaptError(f"{path} is empty")
    return lines


def _jsonl(path: str) -> list[tuple[int, dict]]:
    out = []
    for n, line in _records(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise AdaptError(f"{path} line {n}: malformed JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise AdaptError(f"{path} line {n}: expected a JSON object, got {type(record).__name__}")
        out.append((n, record))
    return out


def _field(path: str, n: int, record: dict, key: str):
    if key not in record:
        raise AdaptError(f"{path} line {n}: missing the field '{key}'")
    return record[key]


def _values(path: str, kind: str) -> list:
    """One value per example: a JSONL field (label, tags, text) or a plain line (tags split on spaces)."""
    if path.endswith(".jsonl"):
        values = [_field(path, n, r, _JSON_FIELD[kind]) for n, r in _jsonl(path)]
    else:
        values = [line.split() if kind == "seqeval" else line for _, line in _records(path)]
    return [str(v) for v in values] if kind == "classification" else values


def _squad_file(path: str, is_prediction: bool) -> tuple[dict, dict]:
    """id -> prediction text (and id -> no-answer probability), or id -> gold answer texts."""
    if not path.endswith(".jsonl"):
        lines = _records(path)
        return {str(n): line for n, line in lines}, {}
    texts, no_answer = {}, {}
    for n, record in _jsonl(path):
        qid = str(_field(path, n, record, "id"))
        if qid in texts:
            raise AdaptError(f"{path} line {n}: duplicate id '{qid}'")
        if is_prediction:
            texts[qid] = _field(path, n, record, "prediction_text")
            if "no_answer_probability" in record:
                no_answer[qid] = float(record["no_answer_probability"])
        else:
            answers = _field(path, n, record, "answers")
            if not isinstance(answers, dict) or "text" not in answers:
                raise AdaptError(f"{path} line {n}: 'answers' must be an object with a 'text' list")
            texts[qid] = list(answers["text"])
    return texts, no_answer


def _read_squad(predictions: str, references: list[str]) -> Examples:
    preds, no_answer = _squad_file(predictions, is_prediction=True)
    if len(references) == 1 and references[0].endswith(".jsonl"):
        golds = _squad_file(references[0], is_prediction=False)[0]
    else:  # plain lines: line i of every reference file is one gold answer of question i
        streams = [_squad_file(path, is_prediction=False)[0] for path in references]
        _check_lengths(predictions, len(preds), references, [len(s) for s in streams])
        golds = {qid: [s[qid] for s in streams if s[qid].strip()] for qid in streams[0]}
    missing = [qid for qid in golds if qid not in preds]
    if missing:
        raise AdaptError(f"{predictions}: no prediction for question id '{missing[0]}' ({len(missing)} missing in all)")
    ids = list(golds)
    return Examples(ids, [preds[i] for i in ids], [golds[i] for i in ids], no_answer or None)


def _check_lengths(predictions: str, n_preds: int, references: list[str], n_refs: list[int]) -> None:
    for path, n in zip(references, n_refs):
        if n != n_preds:
            raise AdaptError(f"{predictions} has {n_preds} examples but {path} has {n}; they must align line by line")


def read_examples(kind: str, predictions: str, references: list[str]) -> Examples:
    """Read and align a prediction file with its reference file(s) for one kind of metric."""
    if not references:
        raise AdaptError("give the reference file(s) with --references")
    if kind in ("squad", "squad_v2"):
        return _read_squad(predictions, references)
    if kind != "text" and len(references) > 1:
        raise AdaptError(f"{kind} metrics take one --references file, got {len(references)}")
    preds = _values(predictions, kind)
    streams = [_values(path, kind) for path in references]
    _check_lengths(predictions, len(preds), references, [len(s) for s in streams])
    if kind == "classification" and not set(preds) & set(streams[0]):
        raise AdaptError(
            f"{predictions} line 1: label '{preds[0]}' never occurs in {references[0]}, nor does any other "
            f"(predicted labels {sorted(set(preds))} vs reference labels {sorted(set(streams[0]))})"
        )
    if kind == "seqeval":
        for i, (p, r) in enumerate(zip(preds, streams[0]), start=1):
            if len(p) != len(r):
                raise AdaptError(f"{predictions} line {i}: {len(p)} tags but {references[0]} line {i} has {len(r)}")
    return Examples([str(i) for i in range(1, len(preds) + 1)], preds, [list(refs) for refs in zip(*streams)])


@dataclass
class Scorer:
    """Per-example statistics and the function that turns a (resampled) set of them into corpus scores."""

    stats: object
    score: Callable[[object], dict]


def scorer(metric: str, examples: Examples, strict: bool = True) -> Scorer:
    """The Scorer of `metric` on `examples`; `strict` picks seqeval's strict IOB2 mode."""
    kind = METRICS[metric][0]
    pairs = list(zip(examples.predictions, examples.references))
    if kind == "classification":
        return Scorer(pairs, lambda s: classification_scores([p for p, _ in s], [r[0] for _, r in s]))
    if kind == "seqeval":
        return Scorer(pairs, lambda s: seqeval_scores([p for p, _ in s], [r[0] for _, r in s], strict=strict))
    golds = dict(zip(examples.ids, examples.references))
    preds = dict(zip(examples.ids, examples.predictions))
    if kind == "squad":
        rows = squad_example_scores(preds, golds)
        return Scorer([rows[i] for i in examples.ids], squad_aggregate)
    if kind == "squad_v2":
        rows = squad_v2_example_scores(preds, golds, examples.no_answer)
        return Scorer([rows[i] for i in examples.ids], squad_v2_aggregate)
    if metric == "rouge":
        if any(len(r) != 1 for r in examples.references):
            raise AdaptError("rouge takes exactly one --references file")
        rows = rouge_example_scores(examples.predictions, [r[0] for r in examples.references])
        return Scorer(rows, lambda s: {name: float(v) for name, v in zip(ROUGE_TYPES, s.mean(axis=0))})
    streams = [list(stream) for stream in zip(*examples.references)]
    stats = sentence_stats(metric, examples.predictions, streams)
    return Scorer(stats, lambda s: score_from_stats(metric, s.sum(axis=0), len(streams)))


def _select(metric: str, scores: dict) -> dict:
    keys = METRICS[metric][1]
    return scores if keys is None else {k: scores[k] for k in keys}


def score_files(
    metrics: list[str],
    predictions: str,
    references: list[str],
    ci: float | None = None,
    compare: str | None = None,
    samples: int = 1000,
    seed: int = 0,
    strict: bool = True,
) -> dict:
    """Score a prediction file against reference file(s) with each metric, optionally with bootstrap CIs
    at level `ci` and a paired bootstrap test against the prediction file `compare`. Returns a report:
    {"scores": {metric: {...}}, "ci": {metric: {key: [low, high]}}, "compare": {metric: {...}},
    "examples": [{"id", "prediction", "references"}]}."""
    if not metrics:
        raise AdaptError(f"give at least one --metric: {', '.join(METRICS)}, perplexity")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise AdaptError(f"unknown metric '{unknown[0]}'; known metrics: {', '.join(METRICS)}, perplexity")
    if ci is not None and not 0 < ci < 1:
        raise AdaptError(f"--ci must be between 0 and 1 (e.g. 0.95), got {ci}")
    report: dict = {"scores": {}}
    examples = None
    for metric in metrics:
        examples = read_examples(METRICS[metric][0], predictions, references)
        main = scorer(metric, examples, strict)
        report["scores"][metric] = _select(metric, main.score(main.stats))
        if ci is not None:
            intervals = bootstrap_ci(main.stats, main.score, ci, samples, seed)
            report.setdefault("ci", {})[metric] = {k: list(v) for k, v in intervals.items() if k in report["scores"][metric]}
        if compare is not None:
            other = scorer(metric, read_examples(METRICS[metric][0], compare, references), strict)
            key = METRICS[metric][2]
            result = paired_bootstrap(main.stats, other.stats, lambda s: main.score(s)[key], samples, seed)
            report.setdefault("compare", {})[metric] = {"key": key, "other_file": compare, **result}
    report["examples"] = [
        {"id": i, "prediction": p, "references": r}
        for i, p, r in zip(examples.ids, examples.predictions, examples.references)
    ]
    return report


def score_perplexity(model_dir: str, text_file: str, max_length: int, stride: int, batch_size: int) -> dict:
    """Sliding-window perplexity of the causal LM saved in `model_dir` on the whole of `text_file`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapt.metrics.perplexity import model_perplexity

    text = "\n".join(line for _, line in _records(text_file))
    if not text.strip():
        raise AdaptError(f"{text_file} is empty")
    if not Path(model_dir, "config.json").is_file():
        raise AdaptError(f"{model_dir} is not a saved model directory (no config.json)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=False).to(device)
    scores = model_perplexity(model, tokenizer, text, max_length, stride, batch_size, device)
    return {"scores": {"perplexity": scores}, "examples": []}


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def to_json(report: dict) -> str:
    """The report without per-example rows, as indented JSON (what `--json` prints)."""
    return json.dumps(_jsonable({k: v for k, v in report.items() if k != "examples"}), indent=2)


def write_output(report: dict, path: str) -> None:
    """Write scores, intervals, comparisons and the per-example predictions to `path` as JSON."""
    try:
        Path(path).write_text(json.dumps(_jsonable(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as err:
        raise AdaptError(f"cannot write {path}: {err.strerror}") from None


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render(report: dict, console: Console | None = None) -> None:
    """Print the scores (with CIs) and any paired comparison as rich tables."""
    console = console or Console()
    table = Table(title="adapt eval")
    for column in ("metric", "score", "value", "CI"):
        table.add_column(column)
    for metric, scores in report["scores"].items():
        intervals = report.get("ci", {}).get(metric, {})
        for key, value in scores.items():
            rows = {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}
            for name, shown in rows.items():
                low_high = intervals.get(name)
                table.add_row(metric, name, _fmt(shown), f"[{low_high[0]:.4f}, {low_high[1]:.4f}]" if low_high else "")
    console.print(table)
    if "compare" in report:
        versus = Table(title="paired bootstrap (Koehn 2004)")
        for column in ("metric", "score", "this", "other", "delta", "p-value"):
            versus.add_column(column)
        for metric, c in report["compare"].items():
            versus.add_row(metric, c["key"], _fmt(c["score"]), _fmt(c["other"]), _fmt(c["delta"]), f"{c['p_value']:.4f}")
        console.print(versus)
