"""`adapt eval` on files: read prediction/reference files, score them, add bootstrap CIs and paired tests,
render the result as a table or JSON, and write per-example output."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from adapt.data import text_lines
from adapt.errors import AdaptError
from adapt.metrics import evaluate_module
from adapt.metrics.classification import classification_scores
from adapt.metrics.generation import ROUGE_TYPES, bleu_tokenizer, rouge_example_scores, score_from_stats, sentence_stats
from adapt.metrics.resampling import bootstrap_ci, paired_bootstrap
from adapt.metrics.sequence import seqeval_scores, tag_problem, tag_scheme
from adapt.metrics.squad import squad_aggregate, squad_example_scores, squad_v2_aggregate, squad_v2_example_scores
from adapt.outputs import _jsonable

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
# JSONL fields read per kind of metric ("evaluate": an evaluate module's), first present wins. A run's
# predictions_validation.jsonl row holds the gold ('label', 'tags', 'references') beside the model's 'prediction':
# --predictions reads the prediction side, --references the gold side, so one such file can be both. `adapt
# predict` writes 'label'/'tags'/'generated_text'.
_PREDICTION_FIELDS = {"classification": ("prediction", "label"), "seqeval": ("prediction", "tags"),
                      "text": ("prediction", "generated_text", "text"), "evaluate": evaluate_module.PREDICTION_FIELDS}
_REFERENCE_FIELDS = {"classification": ("label",), "seqeval": ("tags",), "text": ("references", "target", "text"),
                     "evaluate": evaluate_module.REFERENCE_FIELDS}
# fields that mark a row as gold data or as per-example perplexity (a clm run's text, nll, perplexity rows), so
# that its 'text' is the input, never a prediction; fields named as the model's output are read all the same
_NOT_PREDICTION_FIELDS = {kind: ("references", "target", "nll", "perplexity") for kind in ("text", "evaluate")}
_OUTPUT_FIELDS = ("prediction", "prediction_text", "generated_text")
_FORMAT = {  # what each kind of file holds, told when a file does not fit
    "classification": "one label per line, or .jsonl with a 'prediction' or 'label' field (references: 'label')",
    "seqeval": "one sentence of space-separated IOB tags per line, or .jsonl with a 'prediction' or 'tags' list "
               "(references: 'tags')",
    "text": "one text per line, or .jsonl with a 'prediction', 'generated_text' or 'text' field (references: "
            "'references' list, 'target' or 'text')",
    "squad": "SQuAD .jsonl: predictions with 'id' and 'prediction_text', references with 'id' and "
             "'answers': {'text': [...]}",
    "evaluate": "one value per line, or .jsonl with a model-output field (" + ", ".join(
        evaluate_module.PREDICTION_FIELDS) + "; references: " + ", ".join(evaluate_module.REFERENCE_FIELDS) + ")",
}


@dataclass
class Examples:
    """Aligned predictions and references; `references[i]` is the list of references of example i."""

    ids: list[str]
    predictions: list
    references: list[list]
    no_answer: dict[str, float] | None = None


def _records(path: str) -> list[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file (decompressed when it ends in .gz/.bz2/.xz), without line endings,
    read by `adapt.data.text_lines` (errors name the file and line)."""
    file = Path(path)
    if not file.is_file():
        raise AdaptError(f"{path}: {'is a directory' if file.is_dir() else 'no such file'}; give a file with one "
                         "example per line (or .jsonl)")
    lines = list(text_lines(file))
    if not any(line.strip() for _, line in lines):
        raise AdaptError(f"{path} is empty; give a file with one example per line")
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


def _field(path: str, n: int, record: dict, key: str, kind: str):
    if key not in record:
        raise AdaptError(f"{path} line {n}: missing the field '{key}'; {kind} metrics read {_FORMAT[kind]}")
    return record[key]


def _side_value(path: str, n: int, record: dict, kind: str, is_prediction: bool):
    """The value on the prediction side (`is_prediction`: --predictions) or the gold side (--references) of
    JSONL row `n`: the first field of `_PREDICTION_FIELDS` / `_REFERENCE_FIELDS` it has.

    Raises:
        AdaptError: naming the file, the line and the row's fields when it has none of them, or when a
            prediction is asked of a row that holds only gold data or per-example perplexity."""
    keys = (_PREDICTION_FIELDS if is_prediction else _REFERENCE_FIELDS)[kind]
    key = next((k for k in keys if k in record), None)
    blocked = [k for k in _NOT_PREDICTION_FIELDS.get(kind, ()) if k in record] if is_prediction else []
    if key is None or (blocked and key not in _OUTPUT_FIELDS):
        if blocked:
            held = "per-example perplexity" if {"nll", "perplexity"} & set(blocked) else "gold data"
            reason = f"the row holds {held} ({', '.join(blocked)}), not a prediction"
        else:
            reason = f"no {'prediction' if is_prediction else 'reference'} field ({', '.join(keys)})"
        raise AdaptError(f"{path} line {n}: {reason}; the row has: {', '.join(map(str, record)) or 'no fields'}; "
                         f"{kind} metrics read {_FORMAT[kind]}")
    return record[key]


def _checked(path: str, n: int, value, kind: str):
    """`value` of line `n` if the metric kind can score it; AdaptError naming the file and line if not. A text
    reference may be a list of texts (several references of one example)."""
    if kind == "classification":
        if value is None or isinstance(value, (dict, list)) or (isinstance(value, float) and not math.isfinite(value)):
            raise AdaptError(f"{path} line {n}: label {value!r} is not a class; give every example a label")
        if not str(value).strip():
            raise AdaptError(f"{path} line {n}: empty label; give every example a label")
        return value  # normalised with the whole column by `class_labels`, as `adapt finetune` reads labels
    if kind == "text":
        texts = value if isinstance(value, list) and value else [value]
        if not all(isinstance(text, str) for text in texts):
            raise AdaptError(f"{path} line {n}: text {value!r} is not a string (or a list of strings); "
                             f"{_FORMAT[kind]}")
        return value
    if not isinstance(value, list):
        raise AdaptError(f"{path} line {n}: tags must be a list of strings, got {type(value).__name__}")
    for tag in value:
        problem = tag_problem(tag)
        if problem:
            raise AdaptError(f"{path} line {n}: {problem}")
    return value


def _values(path: str, kind: str, is_prediction: bool) -> list[tuple[int, object]]:
    """(line number, value) per example: a JSONL row's prediction or gold field (`_side_value`) or a plain line
    (tags split on spaces), checked as `_checked` does. Class labels are read as `adapt finetune` reads them
    (`class_labels`: whitespace-trimmed; 1, 1.0 and "1.0" are one class)."""
    if path.endswith(".jsonl"):
        rows = [(n, _side_value(path, n, r, kind, is_prediction)) for n, r in _jsonl(path)]
    else:
        rows = [(n, line.split() if kind == "seqeval" else line) for n, line in _records(path)]
    checked = [(n, _checked(path, n, value, kind)) for n, value in rows]
    if kind == "classification":
        from adapt.tasks.classification import class_labels  # the one reading of labels, shared with finetune

        labels = class_labels([value for _, value in checked], path, None)
        checked = [(n, label) for (n, _), label in zip(checked, labels)]
    return checked


def _squad_file(path: str, is_prediction: bool) -> tuple[dict, dict]:
    """id -> prediction text (and id -> no-answer probability), or id -> gold answer texts."""
    if not path.endswith(".jsonl"):
        lines = _records(path)
        return {str(n): line for n, line in lines}, {}
    texts, no_answer = {}, {}
    for n, record in _jsonl(path):
        qid = str(_field(path, n, record, "id", "squad"))
        if qid in texts:
            raise AdaptError(f"{path} line {n}: duplicate id '{qid}'")
        if is_prediction:
            texts[qid] = _field(path, n, record, "prediction_text", "squad")
            if not isinstance(texts[qid], str):
                raise AdaptError(f"{path} line {n}: 'prediction_text' must be a string (\"\" for no answer)")
            if "no_answer_probability" in record:
                probability = record["no_answer_probability"]
                if not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
                    raise AdaptError(f"{path} line {n}: 'no_answer_probability' must be a number from 0 to 1, "
                                     f"got {probability!r}")
                no_answer[qid] = float(probability)
        else:
            answers = _field(path, n, record, "answers", "squad")
            if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) or not all(
                isinstance(text, str) for text in answers["text"]
            ):
                raise AdaptError(f"{path} line {n}: 'answers' must be an object with a 'text' list of strings")
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


def _reference_streams(path: str, numbered: list[tuple[int, object]]) -> list[list]:
    """The reference streams of one --references file: one stream, or, when its JSONL rows hold a list of
    texts ('references' of a seq2seq run's predictions_validation.jsonl), one stream per list position.

    Raises:
        AdaptError: naming the file and line when the lists differ in length (streams must align)."""
    if not any(isinstance(value, list) for _, value in numbered):
        return [[value for _, value in numbered]]
    width = len(numbered[0][1]) if isinstance(numbered[0][1], list) else 1
    for n, value in numbered:
        if not isinstance(value, list) or len(value) != width:
            count = len(value) if isinstance(value, list) else 1
            raise AdaptError(f"{path} line {n}: {count} references but line {numbered[0][0]} has {width}; give "
                             "every example the same number of references (or one reference file per stream)")
    return [[value[i] for _, value in numbered] for i in range(width)]


def read_examples(kind: str, predictions: str, references: list[str]) -> Examples:
    """Read and align a prediction file with its reference file(s) for one kind of metric."""
    if not references:
        raise AdaptError("give the reference file(s) with --references")
    if kind in ("squad", "squad_v2"):
        return _read_squad(predictions, references)
    if kind != "text" and len(references) > 1:
        raise AdaptError(f"{kind} metrics take one --references file, got {len(references)}")
    numbered = _values(predictions, kind, is_prediction=True)
    numbered_streams = [_values(path, kind, is_prediction=False) for path in references]
    _check_lengths(predictions, len(numbered), references, [len(s) for s in numbered_streams])
    preds = [value for _, value in numbered]
    streams = [stream for path, numbered_refs in zip(references, numbered_streams)
               for stream in (_reference_streams(path, numbered_refs) if kind == "text"
                              else [[value for _, value in numbered_refs]])]
    if kind == "text" and any(not isinstance(p, str) for p in preds):
        n = next(n for n, p in numbered if not isinstance(p, str))
        raise AdaptError(f"{predictions} line {n}: a prediction must be one text, not a list")
    if kind == "classification" and not set(preds) & set(streams[0]):
        raise AdaptError(
            f"{predictions} line 1: label '{preds[0]}' never occurs in {references[0]}, nor does any other "
            f"(predicted labels {sorted(set(preds))} vs reference labels {sorted(set(streams[0]))})"
        )
    if kind == "seqeval":
        for (n, p), (m, r) in zip(numbered, numbered_streams[0]):
            if len(p) != len(r):
                raise AdaptError(f"{predictions} line {n}: {len(p)} tags but {references[0]} line {m} has "
                                 f"{len(r)}; each prediction needs one tag per reference token")
    return Examples([str(i) for i in range(1, len(preds) + 1)], preds, [list(refs) for refs in zip(*streams)])


@dataclass
class Scorer:
    """Per-example statistics and the function that turns a (resampled) set of them into corpus scores."""

    stats: object
    score: Callable[[object], dict]


def scorer(metric: str, examples: Examples, tokenize: str | None = None) -> Scorer:
    """The Scorer of `metric` on `examples`; `tokenize` is BLEU's sacreBLEU tokenizer (None: 13a)."""
    kind = METRICS[metric][0]
    pairs = list(zip(examples.predictions, examples.references))
    if kind == "classification":
        return Scorer(pairs, lambda s: classification_scores([p for p, _ in s], [r[0] for _, r in s]))
    if kind == "seqeval":
        return Scorer(pairs, lambda s: seqeval_scores([p for p, _ in s], [r[0] for _, r in s]))
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
    stats = sentence_stats(metric, examples.predictions, streams, tokenize)
    return Scorer(stats, lambda s: score_from_stats(metric, s.sum(axis=0), len(streams), tokenize))


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
    tokenize: str | None = None,
    target_lang: str | None = None,
) -> dict:
    """Score a prediction file against reference file(s) with each metric, optionally with bootstrap CIs
    at level `ci` and a paired bootstrap test against the prediction file `compare`. BLEU's tokenizer is
    `bleu_tokenizer(tokenize, target_lang, references)`. Returns a report:
    {"scores": {metric: {...}}, "ci": {metric: {key: [low, high]}}, "compare": {metric: {...}},
    "notes": [str], "examples": [{"id", "prediction", "references"}]}.

    Raises AdaptError for unknown metrics, unreadable or misaligned files, values a metric cannot score,
    and --tokenize/--target-lang without BLEU."""
    if not metrics:
        raise AdaptError(f"give at least one --metric: {', '.join(METRICS)}, perplexity")
    modules = [m for m in metrics if m not in METRICS]  # evaluate modules: local scripts, or Hub ids
    if modules and (ci is not None or compare is not None):
        raise AdaptError(f"--ci and --compare apply to built-in metrics only; drop them for '{modules[0]}'")
    if ci is not None and not 0 < ci < 1:
        raise AdaptError(f"--ci must be between 0 and 1 (e.g. 0.95), got {ci}")
    if (tokenize is not None or target_lang) and "bleu" not in metrics:
        raise AdaptError("--tokenize and --target-lang choose BLEU's tokenizer; add --metric bleu or drop them")
    evaluate_module.check_display_names(modules, {m: f"the scores of the built-in --metric {m}"
                                                  for m in metrics if m in METRICS})
    report: dict = {"scores": {}, "notes": []}
    examples = None
    for metric in metrics:
        if metric in modules:
            name, scores, examples = score_module_files(metric, predictions, references)
            report["scores"][name] = scores
            continue
        examples = read_examples(METRICS[metric][0], predictions, references)
        bleu_tokens = None
        if metric == "bleu":
            bleu_tokens, reason = bleu_tokenizer(tokenize, target_lang, [list(s) for s in zip(*examples.references)])
            report["notes"].append(f"BLEU tokenize={bleu_tokens} ({reason})")
        if metric == "seqeval":
            schemes = (tag_scheme(examples.predictions), tag_scheme([r[0] for r in examples.references]))
            if (schemes[0] == "IOBES") != (schemes[1] == "IOBES"):
                report["notes"].append(f"seqeval: predictions are {schemes[0]} and references {schemes[1]}; both "
                                       "were scored as IOB2 (S- read as B-, E- as I-: the same entities)")
        main = scorer(metric, examples, bleu_tokens)
        report["scores"][metric] = _select(metric, main.score(main.stats))
        if "signature" in report["scores"][metric]:
            report["notes"].append(f"sacreBLEU {metric} signature: {report['scores'][metric]['signature']}")
        if ci is not None:
            intervals = bootstrap_ci(main.stats, main.score, ci, samples, seed)
            report.setdefault("ci", {})[metric] = {k: list(v) for k, v in intervals.items() if k in report["scores"][metric]}
        if compare is not None:
            other = scorer(metric, read_examples(METRICS[metric][0], compare, references), bleu_tokens)
            key = METRICS[metric][2]
            result = paired_bootstrap(main.stats, other.stats, lambda s: main.score(s)[key], samples, seed)
            report.setdefault("compare", {})[metric] = {"key": key, "other_file": compare, **result}
    report["examples"] = [
        {"id": i, "prediction": p, "references": r}
        for i, p, r in zip(examples.ids, examples.predictions, examples.references)
    ]
    return report


def _module_values(path: str, is_prediction: bool) -> list[tuple[int, object]]:
    """(line number, value) per example of a file for an evaluate module: a plain line, or a JSONL row's
    prediction or gold field (`_side_value` of the "evaluate" kind)."""
    if not path.endswith(".jsonl"):
        return _records(path)
    return [(n, _side_value(path, n, record, "evaluate", is_prediction)) for n, record in _jsonl(path)]


def score_module_files(ref: str, predictions: str, references: list[str]) -> tuple[str, dict, Examples]:
    """(name, scores, examples) of the `evaluate` module `ref` (adapt.metrics.evaluate_module: a local script or
    folder, or a Hub id) on a prediction file and its reference file(s): lines or JSONL fields (the prediction side
    of a run's predictions file, `adapt predict` output; the gold side for references), cast to the module's
    features; several reference files give each example a list of references.

    Raises:
        AdaptError: an unloadable module, unreadable or misaligned files, values the module's features do not
            take, or the module's own error."""
    module = load_metric_module(ref)
    if not references:
        raise AdaptError("give the reference file(s) with --references")
    preds = _module_values(predictions, is_prediction=True)
    streams = [_module_values(path, is_prediction=False) for path in references]
    _check_lengths(predictions, len(preds), references, [len(s) for s in streams])
    lists = len(references) > 1 or any(isinstance(v, (list, dict)) for _, v in streams[0])
    predict_feature, reference_feature = evaluate_module.input_features(module, lists)
    tokens = evaluate_module.is_sequence(predict_feature)  # token-level (tag) metrics: a plain line is its tags
    casted = [evaluate_module.cast(value, predict_feature, f"{predictions} line {n}", split_text=tokens)
              for n, value in preds]
    golds = []
    for i in range(len(preds)):
        row = [(path, stream[i]) for path, stream in zip(references, streams)]
        value = [v for _, (_, v) in row] if len(row) > 1 else row[0][1][1]
        golds.append(evaluate_module.cast(value, reference_feature, f"{row[0][0]} line {row[0][1][0]}",
                                          split_text=tokens))
    scores = evaluate_module.compute(module, ref, casted, golds)
    examples = Examples([str(i) for i in range(1, len(preds) + 1)], casted,
                        [g if isinstance(g, list) and not tokens else [g] for g in golds])
    return evaluate_module.display_name(ref), scores, examples


def load_metric_module(ref: str):
    """The `evaluate` module `ref` names (adapt.metrics.evaluate_module.load_module), for a name that is not one
    of adapt's built-in metrics.

    Raises:
        AdaptError: see `load_module` (bad script, unreachable Hub)."""
    return evaluate_module.load_module(ref, (*METRICS, "perplexity"))


def score_module_rows(module, ref: str, rows: list[dict], where: str, label_names: list[str] | None = None
                      ) -> tuple[str, dict]:
    """(name, scores) of the loaded `evaluate` module `module` (named `ref` on the command line) on a model's
    per-example rows (`adapt eval --model`): the mapping per task is adapt.metrics.evaluate_module's
    (`examples_from_rows`); `label_names` (the model's id2label order) turn label names into ids for modules whose
    features take integers.

    Raises:
        AdaptError: rows without predictions (plain-text clm evaluation), values the module's features do not
            take, or the module's own error."""
    predictions, references = evaluate_module.examples_from_rows(rows, module, where, label_names)
    return evaluate_module.display_name(ref), evaluate_module.compute(module, ref, predictions, references)


def perplexity_model(model_dir: str, max_length: int, trust_remote_code: bool = False):
    """(tokenizer, model) of the causal LM in `model_dir` for `score_perplexity`, loaded as `adapt predict`
    loads models: an `adapt finetune` run by its recipe.yaml (a LoRA run folder as its base model plus the
    adapter), a plain checkpoint as the `clm` task; safetensors weights only; code shipped in the folder only
    with `trust_remote_code` (the command's --trust-remote-code). `max_length` is checked against the model's
    positions before the weights load.

    Raises:
        AdaptError: one line naming the folder and the fix: no such folder, not a causal LM, pickle-only
            weights, a model type that needs remote code, an encoder-decoder, or `max_length` past the model's
            positions.
    """
    from transformers import AutoConfig

    from adapt.runner import trained_task
    from adapt.tasks.base import Task, model_load_error

    folder = Path(model_dir)
    if not folder.is_dir():
        raise AdaptError(f"--model {model_dir}: {'not a folder' if folder.exists() else 'no such folder'}; give a "
                         "causal LM folder (an `adapt finetune` run or a Hugging Face checkpoint)")
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise AdaptError(f"{model_dir} is not a saved model directory (no config.json); give a causal LM folder "
                         "(an `adapt finetune` run or a Hugging Face checkpoint)")
    task = trained_task(model_dir, None if (folder / "recipe.yaml").is_file() else "clm",
                        trust_remote_code=trust_remote_code)
    if task.auto_class != "AutoModelForCausalLM":
        raise AdaptError(f"{model_dir} holds a {task.name} model (its recipe.yaml), not a causal LM; perplexity "
                         "scores causal LMs only (give a clm run or checkpoint)")

    def check_config(config) -> None:
        if getattr(config, "is_encoder_decoder", False):
            raise AdaptError(f"{model_dir} is an encoder-decoder (seq2seq) model (model type {config.model_type}), "
                             "not a causal LM; perplexity scores causal LMs only (give a clm run or checkpoint)")
        positions = getattr(config, "max_position_embeddings", None)
        if isinstance(positions, int) and max_length > positions:
            raise AdaptError(f"--max-length {max_length} is past the {positions} positions of {model_dir} "
                             f"(config max_position_embeddings); use --max-length {positions} or less")

    checked = (folder / "config.json").is_file()
    if checked:  # an adapter folder carries its base model's config: the limit is known before any weights load
        try:
            check_config(AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code))
        except (OSError, ValueError) as err:
            raise model_load_error(model_dir, err) from None
    tokenizer = Task.load_tokenizer(task, model_dir)  # the generic loader: perplexity needs no EOS or pad token
    model = task.load_trained(model_dir)
    if not checked:
        check_config(model.config)
    return tokenizer, model


def check_causal(model, ids: list[int], device, model_dir: str) -> None:
    """Refuse a model whose prediction at a position reads later tokens (an encoder such as BERT loaded as a
    causal LM, without `is_decoder`): its "perplexity" would be a number with no meaning. `ids` (at least 2
    token ids) is run twice, differing only in the last token; the logits before it must not change.

    Raises:
        AdaptError: naming the folder, its model type and the fix.
    """
    import torch

    if len(ids) < 2:
        return  # too short to test; model_perplexity refuses texts of fewer than 2 tokens
    vocab = model.get_input_embeddings().num_embeddings
    model.eval()
    with torch.no_grad():  # one row per call: nothing but the last token differs between the two forwards
        first, second = (model(input_ids=torch.tensor([row], device=device)).logits[0, :-1].float()
                         for row in (ids, ids[:-1] + [(ids[-1] + 1) % vocab]))
    # a causal model computes the earlier positions from identical inputs: equal up to rounding noise
    if (first - second).abs().max() > 1e-5 * (1 + first.abs().max()):
        kind = getattr(model.config, "model_type", "?")
        raise AdaptError(f"{model_dir}: its predictions read later tokens (model type {kind} is a bidirectional "
                         "encoder, not a causal LM), so perplexity is undefined for it; give a causal LM "
                         "(GPT-2, Llama, ... or a clm run)")


def score_perplexity(model_dir: str, text_file: str, max_length: int, stride: int, batch_size: int,
                     trust_remote_code: bool = False) -> dict:
    """Sliding-window perplexity of the causal LM saved in `model_dir` on the whole of `text_file`, per token
    of the model's own tokenizer. Every token but the first is scored (`tokens`), so none is dropped.

    Raises:
        AdaptError: an unreadable text file, a model `perplexity_model` cannot load, --stride past
            --max-length, a text of fewer than 2 tokens, or a non-finite result.
    """
    import torch

    from adapt.metrics.perplexity import model_perplexity

    text = "\n".join(line for _, line in _records(text_file))
    if stride > max_length:
        raise AdaptError(f"--stride {stride} is larger than --max-length {max_length}; use a stride of at most "
                         f"{max_length} (half of it is usual)")
    tokenizer, model = perplexity_model(model_dir, max_length, trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    check_causal(model, tokenizer(text[:2000])["input_ids"][:max_length], device, model_dir)
    try:
        scores = model_perplexity(model, tokenizer, text, max_length, stride, batch_size, device)
    except AdaptError as err:
        raise AdaptError(f"{text_file}: {err}") from None
    if not math.isfinite(scores["perplexity"]):
        raise AdaptError(f"{model_dir}: perplexity on {text_file} is not finite (mean NLL {scores['nll']}); "
                         "the model's weights or outputs hold NaN/inf")
    note = (f"perplexity is per model token: exp of the mean NLL over {scores['tokens']:,} tokens of {model_dir}'s "
            "own tokenizer (every token after the first; none dropped); it is not comparable across tokenizers, "
            "nor to per-word or per-character perplexity")
    return {"scores": {"perplexity": {**scores, "tokens_dropped": 0, "unit": "per model token"}}, "notes": [note],
            "examples": []}


def to_json(report: dict) -> str:
    """The report without per-example rows, as indented JSON (what `--json` prints)."""
    return json.dumps({k: v for k, v in report.items() if k != "examples"}, indent=2, default=_jsonable)


def write_output(report: dict, path: str) -> None:
    """Write scores, intervals, comparisons and the per-example predictions to `path` as JSON."""
    try:
        Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False, default=_jsonable) + "\n",
                              encoding="utf-8")
    except OSError as err:
        raise AdaptError(f"cannot write {path}: {err.strerror}") from None


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _row(table: Table, *cells: str) -> None:
    """Add cells as literal text: label names and file content are never read as rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


def render(report: dict, console: Console | None = None) -> None:
    """Print the scores (with CIs), any paired comparison and the report's notes (tokenizer choice,
    sacreBLEU signature, perplexity unit) as rich tables and lines; every value is shown literally."""
    if console is None:
        from adapt.ui import console
    table = Table(title="adapt eval")
    for column in ("metric", "score", "value", "CI"):
        table.add_column(column, overflow="fold")
    for metric, scores in report["scores"].items():
        intervals = report.get("ci", {}).get(metric, {})
        for key, value in scores.items():
            rows = {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}
            for name, shown in rows.items():
                low_high = intervals.get(name)
                _row(table, metric, name, _fmt(shown), f"[{low_high[0]:.4f}, {low_high[1]:.4f}]" if low_high else "")
    console.print(table)
    if "compare" in report:
        versus = Table(title="paired bootstrap (Koehn 2004)")
        for column in ("metric", "score", "this", "other", "delta", "p-value"):
            versus.add_column(column)
        for metric, c in report["compare"].items():
            _row(versus, metric, c["key"], _fmt(c["score"]), _fmt(c["other"]), _fmt(c["delta"]), f"{c['p_value']:.4f}")
        console.print(versus)
    for note in report.get("notes", []):
        console.print(Text(note), soft_wrap=True)
