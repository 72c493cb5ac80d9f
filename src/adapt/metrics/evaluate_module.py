"""Metrics of the Hugging Face `evaluate` library in `adapt eval --metric`: a local metric script (`my_metric.py`,
or a folder `my_metric/` holding `my_metric.py` or one .py file), loaded by `evaluate.load` with no network, or a
Hub id (tried only when the name is neither built in nor a local path; offline, that fails in one line). adapt's
built-in metric names keep their own offline implementations and never reach this module.

What the module receives (`module.compute(predictions=..., references=...)`), per kind of value, cast to the
module's declared `features`:
- classification: label names as strings; for integer features the label ids (`--model`: the model's id2label
  order; files: labels written as integers);
- NER: per sentence, the list of IOB2 tags (a plain-text line is split at spaces);
- QA: the answer text, references the list of gold answer texts (SQuAD-style dict features get
  {id, prediction_text} and {id, answers});
- generation (clm, seq2seq): the generated text, references the reference text(s) (a list when the references
  feature is a sequence).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapt.errors import AdaptError
from adapt.outputs import _jsonable

# fields of a per-example row (a run's predictions_*.jsonl, `adapt predict` output, `adapt eval --model` rows),
# first present wins: the model's side, then the gold side
PREDICTION_FIELDS = ("prediction", "prediction_text", "generated_text", "label", "tags", "text")
REFERENCE_FIELDS = ("label", "tags", "answers", "references", "completion", "target", "text")
_SHAPE = ("a metric script defines one subclass of evaluate.Metric with _info() (its features) and _compute() "
          "(see the evaluate docs, 'Creating and sharing a new evaluation')")


def is_local(ref: str) -> bool:
    """Whether `ref` names a local file or folder rather than a Hub id: it exists, ends in .py, or is written as a
    path (./x, ../x, /x, ~/x)."""
    return Path(ref).expanduser().exists() or ref.endswith(".py") or ref.startswith((".", "/", "~"))


def script_path(ref: str) -> Path:
    """The metric script a local `ref` names: the file itself, or in a folder NAME/, NAME/NAME.py or its only
    .py file.

    Raises:
        AdaptError: no such file or folder, not a .py file, or a folder without one script.
    """
    path = Path(ref).expanduser()
    if not path.exists():
        raise AdaptError(f"--metric {ref}: no such file or folder; give an evaluate metric script (.py), a folder "
                         "holding one, or a built-in metric name")
    if path.is_dir():
        named = path / f"{path.resolve().name}.py"
        scripts = [named] if named.is_file() else sorted(path.glob("*.py"))
        if len(scripts) != 1:
            raise AdaptError(f"--metric {ref}: the folder holds {len(scripts)} .py files and none named "
                             f"{path.resolve().name}.py; name the metric script (--metric {path}/SCRIPT.py)")
        return scripts[0].resolve()
    if path.suffix != ".py":
        raise AdaptError(f"--metric {ref}: not a Python file; give an evaluate metric script (.py) or its folder")
    return path.resolve()


def hub_reachable() -> bool:
    """Whether the Hugging Face Hub can be asked for a module: not when HF_HUB_OFFLINE / HF_EVALUATE_OFFLINE is
    set, nor when the endpoint does not answer within `adapt.hub.REACH_TIMEOUT_S` (`adapt.hub.unreachable_reason`;
    evaluate's own attempt waits for its HTTP retries, half a minute, before failing offline)."""
    import evaluate
    from huggingface_hub import constants

    from adapt.hub import unreachable_reason

    if constants.HF_HUB_OFFLINE or evaluate.config.HF_EVALUATE_OFFLINE:
        return False
    return unreachable_reason() is None


def display_name(ref: str) -> str:
    """The name a module's scores are reported under: the script's file name without .py (a folder: its
    script's), or the Hub id."""
    return script_path(ref).stem if is_local(ref) else ref


def check_display_names(refs: list[str], taken: dict[str, str]) -> None:
    """Refuse two metrics whose scores would be reported under one name (and so overwrite each other): evaluate
    modules `refs` with the same `display_name` (scripts `a/acc.py` and `b/acc.py`), or one named like an entry of
    `taken` (report name -> what it holds: a built-in --metric's scores, the model's own scores). The
    same ref given twice is one module.

    Raises:
        AdaptError: naming both --metric values and the fix (rename a script)."""
    seen = dict(taken)
    for ref in dict.fromkeys(refs):
        name = display_name(ref)
        if name in seen:
            raise AdaptError(f"--metric {ref}: its scores would be reported under '{name}', which already holds "
                             f"{seen[name]}; rename the metric script (its file name names its scores)")
        seen[name] = f"the scores of --metric {ref}"


def load_module(ref: str, builtin: tuple[str, ...] = ()):
    """The `evaluate.EvaluationModule` for `ref` (a local script/folder, or a Hub id; `builtin`: adapt's own metric
    names, told in the error when `ref` is neither), computing in memory
    (keep_in_memory: no cache files of predictions are written). evaluate copies a local script into its modules
    cache (HF_MODULES_CACHE) to import it, as `evaluate.load` always does.

    Raises:
        AdaptError: one line: the script's syntax error (file and line), a script without an evaluate.Metric
            subclass or without _compute(), or a Hub id that cannot be fetched (offline).
    """
    import evaluate

    local = is_local(ref)
    target = str(script_path(ref)) if local else ref
    if not local and not hub_reachable():
        raise AdaptError(f"unknown metric '{ref}': not a built-in metric ({', '.join(builtin)}) nor a local file, and "
                         "the Hugging Face Hub is not reachable (offline) to load it as an evaluate module; give a "
                         "local evaluate metric script (--metric ./my_metric.py)")
    try:
        module = evaluate.load(target, keep_in_memory=True)
    except SyntaxError as err:
        where = target if local else err.filename  # evaluate imports a copy of the script; name the user's file
        raise AdaptError(f"--metric {ref}: {where} line {err.lineno}: syntax error ({err.msg}); "
                         "fix the metric script") from None
    except Exception as err:  # evaluate raises many kinds (ImportError, TypeError, FileNotFoundError, HTTP errors)
        detail = f"{type(err).__name__}: {_first_line(err)}"
        if local:
            raise AdaptError(f"--metric {ref}: evaluate could not load it ({detail}); {_SHAPE}") from None
        raise AdaptError(f"unknown metric '{ref}': not a built-in metric ({', '.join(builtin)}) nor a local file, and "
                         f"the Hugging Face Hub could not provide it ({detail}); give a local evaluate metric script "
                         "(--metric ./my_metric.py)") from None
    if type(module)._compute is evaluate.EvaluationModule._compute:
        raise AdaptError(f"--metric {ref}: {type(module).__name__} defines no _compute(); {_SHAPE}")
    return module


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else "no message"


def input_features(module, references_are_lists: bool) -> tuple[Any, Any]:
    """(predictions feature, references feature) the module declares; of several formats (e.g. BLEU's one or
    several references) the one whose references are lists exactly when `references_are_lists`."""
    formats = module.features if isinstance(module.features, list) else [module.features]
    for features in formats:
        if is_sequence(features["references"]) == references_are_lists:
            return features["predictions"], features["references"]
    return formats[0]["predictions"], formats[0]["references"]


def is_sequence(feature) -> bool:
    from datasets import LargeList, List, Sequence

    return isinstance(feature, (list, List, LargeList, Sequence))


def _inner(feature):
    return feature[0] if isinstance(feature, list) else feature.feature


_BOOLS = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}


def cast(value, feature, where: str, label_names: list[str] | None = None, split_text: bool = False):
    """`value` as the module's `feature` takes it: integer features get label ids (a label name by its index in
    `label_names`, or an integer written as text), bool features True/False (from a bool, 1/0 or true/false
    written as text), float features numbers, string features text; a sequence
    feature gets a list (a text is split at spaces when `split_text`, as a line of IOB tags, else wrapped as one
    reference); dict (SQuAD-style) features get the value as it is.

    Raises:
        AdaptError: naming `where` (file and line, or the example) when a value does not fit.
    """
    from datasets import Value

    if is_sequence(feature):
        if isinstance(value, dict) and isinstance(value.get("text"), list):  # SQuAD answers -> their texts
            value = value["text"]
        items = value if isinstance(value, list) else (str(value).split() if split_text else [value])
        return [cast(item, _inner(feature), where, label_names) for item in items]
    if isinstance(feature, Value):
        dtype = feature.dtype
        if dtype == "bool":
            number = value if isinstance(value, bool) else _BOOLS.get(str(value).strip().lower())
            if number is None:
                raise AdaptError(f"{where}: {value!r} is not a truth value; the metric's features take bool: give "
                                 "true/false or 1/0")
            return number
        if dtype.startswith(("int", "uint")):
            if isinstance(value, (bool, int)):
                return int(value)
            text = str(value).strip()
            if label_names and text in label_names:
                return label_names.index(text)
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is None or not number.is_integer():
                names = f" (labels: {', '.join(label_names)})" if label_names else ""
                raise AdaptError(f"{where}: {value!r} is not a label id; the metric's features take integers "
                                 f"({dtype}){names}: give integer labels")
            return int(number)
        if dtype.startswith("float"):
            try:
                return float(value)
            except (TypeError, ValueError):
                raise AdaptError(f"{where}: {value!r} is not a number; the metric's features take {dtype}") from None
        if dtype in ("string", "large_string"):
            if isinstance(value, dict) and isinstance(value.get("text"), list):
                value = value["text"][0] if value["text"] else ""
            if isinstance(value, list):
                return " ".join(map(str, value))
            return str(value)
    return value


def examples_from_rows(rows: list[dict], module, where: str, label_names: list[str] | None = None
                       ) -> tuple[list, list]:
    """(predictions, references) for `module` from per-example rows (`adapt eval --model`, a run's
    predictions_*.jsonl): the first of PREDICTION_FIELDS / REFERENCE_FIELDS each row holds, cast to the
    module's features; SQuAD-style dict features get {id, prediction_text} / {id, answers}.

    Raises:
        AdaptError: a row without a prediction or reference field, or a value the features do not take.
    """
    if not rows:
        raise AdaptError(f"{where}: no examples to score")
    keys = set(rows[0])
    prediction_key = next((k for k in PREDICTION_FIELDS if k in keys), None)
    reference_key = next((k for k in REFERENCE_FIELDS if k in keys and k != prediction_key), None)
    if prediction_key is None or reference_key is None:
        raise AdaptError(f"{where}: the examples hold no {'prediction' if prediction_key is None else 'reference'} "
                         f"field (they have: {', '.join(sorted(map(str, keys)))}); this task's outputs cannot feed "
                         "an evaluate metric (generation tasks need generated text)")
    references_are_lists = isinstance(rows[0][reference_key], (list, dict))
    predict_feature, reference_feature = input_features(module, references_are_lists)
    if isinstance(predict_feature, dict):  # SQuAD-style: {id, prediction_text} and {id, answers}
        predictions = [{"id": str(r.get("id", n)), "prediction_text": r[prediction_key]} for n, r in enumerate(rows)]
        references = [{"id": str(r.get("id", n)), "answers": r[reference_key]} for n, r in enumerate(rows)]
        return predictions, references
    tokens = is_sequence(predict_feature)
    predictions = [cast(r[prediction_key], predict_feature, f"{where} example {n}", label_names, split_text=tokens)
                   for n, r in enumerate(rows, 1)]
    references = [cast(r[reference_key], reference_feature, f"{where} example {n}", label_names, split_text=tokens)
                  for n, r in enumerate(rows, 1)]
    return predictions, references


def compute(module, ref: str, predictions: list, references: list) -> dict[str, Any]:
    """`module.compute(predictions=..., references=...)` as a flat dict of plain Python values (numpy scalars
    and arrays converted).

    Raises:
        AdaptError: the metric's own error (e.g. values its features reject), or a result that is not a dict.
    """
    try:
        result = module.compute(predictions=predictions, references=references)
    except AdaptError:
        raise
    except Exception as err:
        raise AdaptError(f"--metric {ref}: computing it failed ({type(err).__name__}: {_first_line(err)}); check "
                         f"that the metric takes what adapt passes (first prediction {predictions[0]!r}, first "
                         f"reference {references[0]!r})") from None
    if not isinstance(result, dict):
        raise AdaptError(f"--metric {ref}: _compute() returned {type(result).__name__}, not a dict of scores; {_SHAPE}")
    return json.loads(json.dumps({str(key): value for key, value in result.items()}, default=_jsonable))
