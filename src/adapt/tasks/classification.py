"""Sequence classification (single sentences and sentence pairs): sentiment, topic, NLI, paraphrase; and, on the
same model head, multi-label classification (several labels per example) and regression (one score per example),
chosen by `task_options.problem_type` with transformers' own `config.problem_type` values."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from pydantic import Field

from adapt import assets, data
from adapt.errors import AdaptError
from adapt.metrics import classification_scores
from adapt.metrics.classification import MULTI_LABEL_METRICS, SINGLE_LABEL_METRICS
from adapt.metrics.regression import REGRESSION_METRICS
from adapt.tasks.base import (Task, TaskOptions, config_label_names, ensure_pad_token, json_input, label_head_model,
                               model_inputs, pad_batch, predict_input)

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
# metrics and their best-checkpoint default per problem type (the metrics modules' names)
METRICS = {
    SINGLE_LABEL: (SINGLE_LABEL_METRICS, "accuracy"),
    MULTI_LABEL: (MULTI_LABEL_METRICS, "f1_micro"),
    REGRESSION: (REGRESSION_METRICS, "pearson"),
}
LOWER_IS_BETTER = ("mse", "rmse")


class ClassificationOptions(TaskOptions):
    """task_options of `task: classification`.

    problem_type: transformers' `config.problem_type`; `auto` decides from the train label column (a list
        cell or a delimiter-joined cell such as `6,9,27` or `joy;anger` -> multi-label; numbers with a
        non-integer value -> regression; else single-label).
    threshold: multi-label decision threshold on each label's sigmoid probability (saved in config.json).
    tune_threshold: multi-label: choose one global threshold on the validation split (the value of 0.05..0.95
        with the best micro F1) at every evaluation; the best checkpoint's value is saved and used by
        eval/predict.
    """

    problem_type: Literal["auto", "single_label_classification", "multi_label_classification", "regression"] = "auto"
    threshold: float = Field(0.5, gt=0, lt=1)
    tune_threshold: bool = False


class SequenceClassification(Task):
    name = "classification"
    Options = ClassificationOptions
    default_metric = "accuracy"
    # before the problem type is known (auto, before the data is read) every problem type's metric is accepted;
    # `set_problem_type` narrows these to the chosen type's
    metric_names = tuple(dict.fromkeys(name for names, _ in METRICS.values() for name in names))
    pipeline_tag = "text-classification"
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"

    label_names: list[str]

    def __init__(self, recipe):
        super().__init__(recipe)
        self.problem_type: str | None = None  # decided by the options, the train data (auto) or a saved model
        self.threshold = self.options.threshold
        # multi-label with tune_threshold: validation scoring picks the threshold from `setup` (training) until
        # `finalize_validation` fixes the best checkpoint's; the test split and a saved model only apply it
        self.tuning_threshold = False
        if self.options.problem_type != "auto":
            self.set_problem_type(self.options.problem_type)

    def set_problem_type(self, problem_type: str, how: str = "task_options.problem_type") -> None:
        """Fix the problem type (and with it the metrics, the default metric for the best checkpoint and its
        direction: lower is better for mse/rmse).

        Raises:
            AdaptError: train.metric_for_best is not a metric of this problem type, or threshold settings are
                given for a problem type other than multi-label."""
        self.problem_type = problem_type
        self.decided_by = how
        self.metric_names, self.default_metric = METRICS[problem_type]
        best = self.recipe.train.metric_for_best
        self.greater_is_better = (best or self.default_metric) not in LOWER_IS_BETTER
        if best is not None and best not in (*self.metric_names, "examples"):
            raise AdaptError(f"train.metric_for_best '{best}' is not a metric of {problem_type} ({how}); use one of "
                             f"{', '.join(self.metric_names)} (default {self.default_metric})")
        options = self.options
        if problem_type != MULTI_LABEL and (options.tune_threshold or options.threshold != 0.5):
            raise AdaptError(f"task_options.{'tune_threshold' if options.tune_threshold else 'threshold'} applies to "
                             f"multi-label classification only, and this run is {problem_type} ({how}); remove it")

    # ---- data -----------------------------------------------------------------------------------
    def load_embedded(self, ref: str) -> Dataset:
        if assets.embedded_name(ref) != "rotten_tomatoes":
            return super().load_embedded(ref)
        import pandas as pd

        frame = pd.read_csv(assets.embedded_dataset_path(ref))
        frame = frame[frame["category"].isin(["fresh", "rotten"])]
        labels = frame["category"].map({"fresh": "positive", "rotten": "negative"})
        cols = self.recipe.data.columns
        return Dataset.from_dict({cols.text: frame["text"].astype(str).tolist(), cols.label: labels.tolist()})

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        """Canonical columns text[, text_pair], label (class names as strings); the shared validation of
        `adapt finetune`, `adapt eval` and `adapt data inspect`.

        Raises:
            AdaptError: a missing column, an empty text or label, a label that is not a class (see
                `class_labels`), naming the file and the row's line."""
        cols = self.recipe.data.columns
        wanted = {cols.text: "text", cols.label: "label"}
        if cols.text_pair:
            wanted[cols.text_pair] = "text_pair"
        data.require_columns(ds, list(wanted), source)
        ds = ds.select_columns(list(wanted))
        renames = {src: dst for src, dst in wanted.items() if src != dst}
        ds = ds.rename_columns(renames) if renames else ds
        data.check_texts(ds, [c for c in ("text", "text_pair") if c in ds.column_names], source,
                         {dst: src for src, dst in wanted.items()})
        names = self.recipe.data.label_names
        feature = ds.features["label"]
        if names is None and hasattr(feature, "names"):  # Hub ClassLabel columns carry their names
            names = self.recipe.data.label_names = list(feature.names)
        values = ds["label"][:]
        if self.problem_type is None:  # auto: the first split read is train (load_splits), which decides
            self.set_problem_type(detect_problem_type(values), f"task_options.problem_type=auto, from {source}")
        if self.problem_type == REGRESSION:
            labels = regression_targets(values, source, cols.label)
        elif self.problem_type == MULTI_LABEL:
            labels = label_sets(values, source, names, cols.label)
        else:
            labels = class_labels(values, source, names, cols.label)
        order = ds.column_names
        # the new column's fingerprint from its text: datasets would otherwise pickle the whole list to hash it
        text = [json.dumps(label) for label in labels] if self.problem_type != SINGLE_LABEL else labels
        fingerprint = hashlib.sha256("\n".join([ds._fingerprint, *text]).encode()).hexdigest()[:32]
        return ds.remove_columns("label").add_column("label", labels, new_fingerprint=fingerprint).select_columns(order)

    def setup(self, splits: dict[str, Dataset]) -> None:
        """Single-label and multi-label: the label names (data.label_names, else the sorted labels of train),
        checking that no other split has a label train lacks. Regression: one output named after the label
        column. Prints the problem type and how it was decided.

        Raises:
            AdaptError: one label only in train (single-label), or a validation/test label never in train."""
        cfg = self.recipe.data
        self.tuning_threshold = self.problem_type == MULTI_LABEL and self.options.tune_threshold
        print(f"problem type: {self.problem_type} ({self.decided_by})", file=sys.stderr)
        if self.problem_type == REGRESSION:
            self.label_names = [cfg.columns.label]
            return
        if self.problem_type == MULTI_LABEL:
            train_cells = splits["train"]["label"][:]
            train_labels = {label for labels in train_cells for label in labels}
            self.label_names = list(cfg.label_names) if cfg.label_names else sorted(train_labels)
            index = {n: i for i, n in enumerate(self.label_names)}
            self.label_prior = np.array([multi_hot(labels, index) for labels in train_cells]).mean(axis=0)
            if cfg.label_names:
                return
            for split_name, ds in splits.items():
                cells = ds["label"][:]
                index = next((i for i, labels in enumerate(cells) if not set(labels) <= train_labels), None)
                if index is None:
                    continue
                unseen = sorted(set(cells[index]) - train_labels)[0]
                explicit = getattr(cfg, split_name, None)
                where = (f"{explicit}: {data.row_location(explicit, index)}" if explicit
                         else f"{cfg.train} (the {split_name} examples carved from it)")
                raise AdaptError(f"{where}: label '{unseen}' in the {split_name} split never appears in train "
                                 f"({len(train_labels)} train labels); fix the data or set data.label_names to all "
                                 "the labels")
            return
        train_labels = set(splits["train"]["label"][:])
        if len(train_labels) == 1 and len(splits["train"]) > 1:
            raise AdaptError(f"{cfg.train}: every training example has label '{train_labels.pop()}'; a classifier "
                             "needs at least two labels (check data.columns.label)")
        configured = cfg.label_names
        self.label_names = list(configured) if configured else sorted(train_labels)
        if configured:  # every split's labels were checked against data.label_names row by row when read
            return
        known = set(self.label_names)
        for split_name, ds in splits.items():
            labels = ds["label"][:]
            index = next((i for i, label in enumerate(labels) if label not in known), None)
            if index is None:
                continue
            explicit = getattr(cfg, split_name, None)
            where = (f"{explicit}: {data.row_location(explicit, index)}" if explicit
                     else f"{cfg.train} (the {split_name} examples carved from it)")
            raise AdaptError(
                f"{where}: label '{labels[index]}' in the {split_name} split never appears in train "
                f"(train labels: {', '.join(self.label_names)}); fix the data or set data.label_names"
            )

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        """Inputs for `adapt predict`: a plain line is the text; a JSON object line (a `--file` in JSON Lines, as
        the task's data files) gives its text column (data.columns.text) and, for a pair model, its text_pair
        column (data.columns.text_pair). A pair model needs JSON lines: a plain line has no second text.

        Raises:
            AdaptError: a JSON line without a wanted key or with an empty/non-text value, or a plain line for a
                pair model, naming the input's number and the key."""
        cols = self.recipe.data.columns
        wanted = {"text": cols.text, **({"text_pair": cols.text_pair} if cols.text_pair else {})}
        out: dict[str, list[str]] = {role: [] for role in wanted}
        for number, line in enumerate(texts, 1):
            item = json_input(line)
            if item is None and cols.text_pair:
                raise AdaptError(f"input {number}: a sentence-pair model needs both texts; give a JSON Lines file "
                                 f'with lines like {{"{cols.text}": ..., "{cols.text_pair}": ...}}')
            for role, key in wanted.items():
                value = line if item is None else predict_input(
                    line, [key], number, f"name the {role} column with --set data.columns.{role}=KEY")
                if not isinstance(value, str) or not value.strip():
                    shown = "empty" if isinstance(value, str) else data._json_kind(value)
                    raise AdaptError(f"input {number}: the '{key}' value is {shown}, not text; give each "
                                     "example its text as a non-empty string")
                out[role].append(value)
        return Dataset.from_dict(out)

    # ---- model ------------------------------------------------------------------------------------
    def load_tokenizer(self, path: str):
        tokenizer = super().load_tokenizer(path)
        ensure_pad_token(tokenizer)  # decoder tokenizers (GPT-2, Llama, Qwen2) have none; batches need one
        return tokenizer

    def build_model(self, path: str):
        """The pretrained model with a fresh head of len(label_names) outputs (1 for regression), its
        `config.problem_type` set (so `pipeline()` applies softmax / sigmoid / identity) and, for multi-label,
        `config.threshold`."""
        model = label_head_model(self, path, problem_type=self.problem_type)
        if self.problem_type == MULTI_LABEL:
            model.config.threshold = self.threshold  # saved in config.json (an extra attribute transformers keeps)
            if getattr(self, "label_prior", None) is not None:
                init_prior_bias(model, self.label_prior)
        return model

    def restore_from_model(self, model) -> None:
        """Labels, problem type (a config without one is single-label) and the multi-label threshold of a
        saved model."""
        config = model.config
        self.label_names = config_label_names(config)
        problem_type = config.problem_type or SINGLE_LABEL
        if problem_type != self.problem_type:
            self.set_problem_type(problem_type, "the model's config.problem_type")
        self.threshold = float(getattr(config, "threshold", None) or self.options.threshold)
        self.tuning_threshold = False

    def finalize_validation(self, model, metrics: dict[str, Any]) -> None:
        """Multi-label with tune_threshold: keep (and save in the model's config) the threshold that the
        best checkpoint's validation scoring chose, for the test scoring and for eval/predict of the saved
        model."""
        if self.problem_type == MULTI_LABEL and "threshold" in metrics:
            self.threshold = float(metrics["threshold"])
            self.tuning_threshold = False
            base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper's base
            base.config.threshold = self.threshold

    # ---- features -------------------------------------------------------------------------------
    def featurize(self, raw: Dataset, role: str) -> Dataset:
        label2id = {n: i for i, n in enumerate(self.label_names)}
        has_pair = "text_pair" in raw.column_names
        has_label = "label" in raw.column_names
        max_length = self.recipe.train.max_length
        problem_type = self.problem_type
        if has_label and problem_type == REGRESSION:
            unknown = []
        elif has_label and problem_type == MULTI_LABEL:
            unknown = sorted({label for labels in raw["label"][:] for label in labels} - set(label2id))
        else:
            unknown = sorted(set(raw["label"][:]) - set(label2id)) if has_label else []
        if unknown:  # e.g. `adapt eval` of a model on a file with other labels than it was trained on
            raise AdaptError(f"the {role} data has label '{unknown[0]}', which is not a class of this model "
                             f"({', '.join(self.label_names)}); give data with the model's labels, or set "
                             "data.label_names to map integer ids to them")

        def encode(batch):
            enc = self.tokenizer(batch["text"], batch["text_pair"] if has_pair else None,
                                 truncation=True, max_length=max_length)
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            if has_label and problem_type == REGRESSION:
                enc["labels"] = [float(label) for label in batch["label"]]
            elif has_label and problem_type == MULTI_LABEL:
                enc["labels"] = [multi_hot(labels, label2id) for labels in batch["label"]]
            elif has_label:
                enc["labels"] = [label2id[label] for label in batch["label"]]
            return enc

        return raw.map(encode, batched=True, remove_columns=raw.column_names, desc=f"tokenizing {role}")

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        """Padded inputs; labels as int64 class ids (single-label), float32 scores [B] (regression) or float32
        multi-hot rows [B, L] (multi-label, never padded)."""
        if self.problem_type != MULTI_LABEL or "labels" not in rows:
            batch = super().collate(rows)
            if self.problem_type == REGRESSION and "labels" in batch:
                batch["labels"] = batch["labels"].float()
            return batch
        batch = pad_batch({k: v for k, v in rows.items() if k != "labels"}, self.tokenizer.pad_token_id or 0)
        batch["labels"] = torch.tensor(rows["labels"], dtype=torch.float32)
        return batch

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, number of targets), the loop dividing the sum by the targets of the global batch.

        Single-label: cross-entropy, one target per example. Regression: squared error of the one output
        against the float32 score, one target per example, so the mean is transformers' `MSELoss()`.
        Multi-label: binary cross-entropy with logits summed over every (example, label) cell, B*L targets, so
        the mean is transformers' `BCEWithLogitsLoss()` (mean over examples and labels)."""
        if self.problem_type == SINGLE_LABEL or self.problem_type is None:
            return super().loss(model, batch)
        logits = model(**model_inputs(batch)).logits.float()
        labels = batch["labels"].float()
        if self.problem_type == REGRESSION:
            return F.mse_loss(logits.reshape(-1), labels.reshape(-1), reduction="sum"), labels.new_tensor(labels.numel())
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"), labels.new_tensor(labels.numel())

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        if self.problem_type in (REGRESSION, MULTI_LABEL):
            return int(batch["labels"].numel())  # every score / every (example, label) cell; none is padding
        return super().count_targets(batch)

    # ---- evaluation -----------------------------------------------------------------------------
    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(**model_inputs(batch)).logits.float()
        if self.problem_type == REGRESSION:
            return {"score": logits[:, 0]}
        if self.problem_type == MULTI_LABEL:
            return {"probs": logits.sigmoid()}  # [N, L]: the threshold may be tuned on them
        probs = logits.softmax(-1)
        score, pred = probs.max(-1)  # argmax on device: never ship [N, C] logits to the host
        return {"pred": pred, "score": score}

    def postprocess(self, outputs: list[dict[str, Any]], features: Dataset, raw: Dataset) -> list[dict[str, Any]]:
        if self.problem_type == REGRESSION:
            return [{"score": float(o["score"])} for o in outputs]
        if self.problem_type == MULTI_LABEL:
            return [{"labels": [n for n, p in zip(self.label_names, o["probs"]) if p >= self.threshold],
                     "probs": [float(p) for p in o["probs"]]} for o in outputs]
        return [{"label": self.label_names[int(o["pred"])], "score": float(o["score"])} for o in outputs]

    def score(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        """Single-label: `classification_scores`. Regression: `regression_scores` (pearson, spearman, mse,
        rmse). Multi-label: `multi_label_scores` at the decision threshold, reported as `threshold`; with
        tune_threshold, each validation scoring of training (from `setup` until `finalize_validation`) first
        picks the threshold (`tune_threshold`) and recomputes the predictions' label sets with it; every later
        scoring (the test split, eval of a saved model) applies the fixed threshold."""
        if self.problem_type == REGRESSION:
            from adapt.metrics import regression_scores

            return regression_scores([p["score"] for p in predictions], raw["label"][:])
        if self.problem_type == MULTI_LABEL:
            from adapt.metrics import multi_label_scores, tune_threshold

            index = {n: i for i, n in enumerate(self.label_names)}
            gold = np.array([multi_hot(labels, index) for labels in raw["label"][:]], dtype=bool)
            probs = np.array([p["probs"] for p in predictions], dtype=np.float64).reshape(len(predictions), -1)
            threshold = self.threshold
            if self.tuning_threshold:
                threshold = tune_threshold(probs, gold)
                for p in predictions:
                    p["labels"] = [n for n, x in zip(self.label_names, p["probs"]) if x >= threshold]
            return {**multi_label_scores(probs >= threshold, gold, self.label_names), "threshold": threshold}
        return classification_scores([p["label"] for p in predictions], raw["label"][:], self.label_names)

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        rows = raw.to_list()
        if self.problem_type == REGRESSION:
            return [{**row, "prediction": p["score"]} for row, p in zip(rows, predictions)]
        if self.problem_type == MULTI_LABEL:
            return [{**row, "prediction": p["labels"],
                     "scores": {n: round(x, 6) for n, x in zip(self.label_names, p["probs"])}}
                    for row, p in zip(rows, predictions)]
        return [{**row, "prediction": p["label"], "score": p["score"]} for row, p in zip(rows, predictions)]


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NULL_TEXTS = {"", "nan", "NaN"}  # what pandas and spreadsheets write for a missing value


_LABEL_LIST = re.compile(r"\s*[,;|]\s*")  # how GoEmotions-style files join several labels in one cell


def _is_label_list(value: str, single: set[str]) -> bool:
    """True when a label cell is a delimiter-separated list of labels (`6,9,27`, `joy;anger`): two or more
    non-empty parts that are all integer ids or all labels seen alone (`single`) elsewhere in the column."""
    parts = _LABEL_LIST.split(value.strip())
    if len(parts) < 2 or not all(parts):
        return False
    return all(re.fullmatch(r"\d+", part) for part in parts) or all(part in single for part in parts)


def _as_number(value: Any) -> float | None:
    """The value as a float when it is a number or a string spelling a decimal number, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return None


def _distinct(values: list) -> tuple[list, list[int], list[int]] | None:
    """(the distinct values in order of first appearance, the row of each one's first appearance, each row's
    index into the distinct values), or None when a value is unhashable (a list or mapping cell). Values are
    told apart by type too (True is not 1). Label columns hold few distinct values: checks that depend on the
    value alone run once per value, and the first failing value is the first failing row."""
    index: dict = {}
    first_rows: list[int] = []
    codes: list[int] = []
    try:
        for row, value in enumerate(values):
            code = index.setdefault((type(value), value), len(index))
            if code == len(first_rows):
                first_rows.append(row)
            codes.append(code)
    except TypeError:
        return None
    return [value for _, value in index], first_rows, codes


def class_labels(values: list, source: str, names: list[str] | None, column: str = "label") -> list[str]:
    """Class names (strings) for a raw label column, decided by its content.

    Integer-valued numbers are class ids: `1`, `1.0` and `"1.0"` are all class 1, which becomes `names[1]` when
    label names are set (data.label_names or a Hub ClassLabel) and `"1"` otherwise. Other values are class names,
    whitespace-trimmed; with `names` set they must be among them.

    Raises:
        AdaptError: naming `source` and the row's line (`data.row_location`) for an empty, null or NaN label, a
            list/object label, a column of continuous numbers (a regression target, not classes), an id outside
            `names`, or a name not in `names` (saying how to set data.label_names)."""
    distinct = _distinct(values)
    if distinct is None:
        return _class_labels(values, range(len(values)), source, names, column)
    unique, first_rows, codes = distinct
    labels = _class_labels(unique, first_rows, source, names, column)
    return [labels[code] for code in codes]


def _class_labels(values: list, rows, source: str, names: list[str] | None, column: str) -> list[str]:
    """`class_labels` of `values`, the values of rows `rows` (the rows errors name)."""
    def where(index: int) -> str:
        return f"{source}: {data.row_location(source, rows[index])}"

    numbers: list[float | None] = []
    single = {str(v).strip() for v in values if not (isinstance(v, str) and _LABEL_LIST.search(v))}
    for index, value in enumerate(values):
        if _is_null(value):
            raise AdaptError(f"{where(index)}: the label ('{column}') is empty; give every example a label or "
                             "remove that row")
        if isinstance(value, dict):
            raise AdaptError(f"{where(index)}: the label ('{column}') is a mapping; a classification example has "
                             "exactly one label (check data.columns.label)")
        if isinstance(value, list) or (isinstance(value, str) and _is_label_list(value, single)):
            shown = f"is a list {json.dumps(value)[:60]}" if isinstance(value, list) else f"'{value.strip()}' lists several labels"
            raise AdaptError(f"{where(index)}: the label ('{column}') {shown}, but task_options.problem_type is "
                             "single_label_classification; set task_options.problem_type=multi_label_classification "
                             "(or auto), or give each example exactly one label (or check data.columns.label)")
        numbers.append(_as_number(value))
    if numbers and all(n is not None for n in numbers):
        index = next((i for i, n in enumerate(numbers) if not n.is_integer()), None)
        if index is not None:
            distinct = sorted(set(numbers))
            raise AdaptError(
                f"{where(index)}: the label column '{column}' holds continuous numbers ({values[index]} here; "
                f"{len(distinct)} distinct values from {distinct[0]:g} to {distinct[-1]:g}): that is a regression "
                "target, not classes; set task_options.problem_type=regression (or auto), or for classification "
                "give class names or integer class ids (e.g. bin the scores into classes)")
    labels: list[str] = []
    for index, (value, number) in enumerate(zip(values, numbers)):
        if number is not None and number.is_integer():
            class_id = int(number)
            if names is not None:
                if not 0 <= class_id < len(names):
                    raise AdaptError(f"{where(index)}: label {class_id} is outside data.label_names "
                                     f"(0..{len(names) - 1}), which names {', '.join(names)}; fix the label or set "
                                     "data.label_names to all the classes in class-id order")
                labels.append(names[class_id])
            else:
                labels.append(str(class_id))
        else:
            labels.append(str(value).strip())
    if names is not None:
        allowed = set(names)
        index = next((i for i, label in enumerate(labels) if label not in allowed), None)
        if index is not None:
            found = sorted(set(labels))
            if allowed.isdisjoint(found):  # the same classes under other names (neg/pos vs negative/positive)
                shown = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "")
                raise AdaptError(
                    f"{where(index)}: none of the file's labels ({shown}) is in data.label_names "
                    f"({', '.join(names)}); if they name the same classes, set data.label_names to the file's "
                    f"labels in class-id order (e.g. data.label_names=[{','.join(found[:10])}]), or rename the "
                    "labels in the file")
            missing = [label for label in found if label not in allowed]
            raise AdaptError(
                f"{where(index)}: label '{labels[index]}' is not one of data.label_names ({', '.join(names)}); fix "
                f"that label, or list every class in data.label_names (e.g. data.label_names="
                f"[{','.join([*names, *missing][:12])}])")
    return labels


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value.strip() in _NULL_TEXTS)


def _json_list(value: Any) -> list | None:
    """The list a label cell holds: a list, or a string spelling a JSON list (`["joy", "anger"]`, `[]`)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None
    return None


def detect_problem_type(values: list) -> str:
    """`task_options.problem_type=auto`: the problem type a train label column implies. Any list cell (a list,
    a JSON list string, or a delimiter-joined cell such as `6,9,27` / `joy;anger`, see `_is_label_list`) ->
    multi_label_classification; else a column whose non-empty values are all numbers with at least one
    non-integer (`3.8`) -> regression; else single_label_classification (class names or integer ids)."""
    distinct = _distinct(values)
    values = values if distinct is None else distinct[0]
    single = {str(v).strip() for v in values if not (isinstance(v, str) and _LABEL_LIST.search(v))}
    if any(_json_list(v) is not None or (isinstance(v, str) and _is_label_list(v, single)) for v in values):
        return MULTI_LABEL
    numbers = [_as_number(v) for v in values if not _is_null(v)]
    if numbers and all(n is not None for n in numbers) and any(not n.is_integer() for n in numbers):
        return REGRESSION
    return SINGLE_LABEL


def regression_targets(values: list, source: str, column: str = "label") -> list[float]:
    """The float target of each row of a regression label column (numbers or strings spelling numbers).

    Raises:
        AdaptError: naming `source` and the row's line, for an empty/null/NaN value, a value that is not a
            number, or an infinite one."""
    targets = []
    for index, value in enumerate(values):
        where = f"{source}: {data.row_location(source, index)}"
        if _is_null(value):
            raise AdaptError(f"{where}: the label ('{column}') is empty; a regression example needs a number as "
                             "its target: give one or remove that row")
        number = _as_number(value)
        if number is None:
            shown = f"'{value}'" if isinstance(value, str) else data._json_kind(value)
            raise AdaptError(f"{where}: the label ('{column}') is {shown}, not a number, and "
                             "task_options.problem_type is regression; give every example a numeric score (or check "
                             "data.columns.label / task_options.problem_type)")
        if not math.isfinite(number):
            raise AdaptError(f"{where}: the label ('{column}') is {value}, not a finite number; fix that row")
        targets.append(number)
    return targets


def label_sets(values: list, source: str, names: list[str] | None, column: str = "label") -> list[list[str]]:
    """The label names of each row of a multi-label column, in order, without repeats. A cell is a list, a
    JSON list string, or labels joined by `,` `;` or `|` (`6,9,27`, `joy;anger`); one label alone is a set of
    one. Integer ids become `names[id]` when `names` (data.label_names) is set, else their decimal string;
    other labels must be among `names` when it is set. An example with none of the labels is written `[]` (an
    empty list is legal, scored as "predict nothing"); an empty cell is a missing value and refused.

    Raises:
        AdaptError: naming `source` and the row's line, for an empty/null cell, a mapping, an empty part
            (`6,,9`), a non-integer number, an id outside data.label_names, or a name not in it."""
    sets = []
    for index, value in enumerate(values):
        def refuse(what: str) -> AdaptError:
            return AdaptError(f"{source}: {data.row_location(source, index)}: the label ('{column}') {what}")

        if _is_null(value):
            raise refuse("is empty; give every example its labels (an example with none of them: [])")
        if isinstance(value, dict):
            raise refuse("is a mapping; give a list of labels (e.g. [joy, anger]) or labels joined by commas")
        listed = _json_list(value)
        if listed is None:
            listed = _LABEL_LIST.split(value.strip()) if isinstance(value, str) else [value]
        labels: list[str] = []
        for part in listed:
            if isinstance(part, str):
                part = part.strip()
            if part == "" or part is None:
                raise refuse(f"'{value}' has an empty label; list labels without empty entries")
            number = _as_number(part)
            if number is not None:
                if not number.is_integer():
                    raise refuse(f"'{value}' holds {part}, which is neither a label name nor an integer label id")
                class_id = int(number)
                if names is not None and not 0 <= class_id < len(names):
                    raise refuse(f"holds label id {class_id}, outside data.label_names (0..{len(names) - 1}); fix "
                                 "the label or set data.label_names to all the labels in id order")
                label = names[class_id] if names is not None else str(class_id)
            else:
                label = str(part)
                if names is not None and label not in names:
                    raise refuse(f"holds '{label}', which is not one of data.label_names; fix that label or add it "
                                 "to data.label_names")
            if label not in labels:
                labels.append(label)
        sets.append(labels)
    return sets


def multi_hot(labels: list[str], label2id: dict[str, int]) -> list[float]:
    """A float 0/1 vector of len(label2id), 1.0 at each of `labels`' ids (the multi-label target row)."""
    row = [0.0] * len(label2id)
    for label in labels:
        row[label2id[label]] = 1.0
    return row


def init_prior_bias(model, prior: np.ndarray) -> bool:
    """Set the bias of a fresh multi-label head (the last Linear of `model` with one output per label) to the
    log-odds of each label's train frequency, b_j = log(p_j / (1 - p_j)), p clipped to [1e-4, 1 - 1e-4]: the
    prior-probability initialisation of Lin et al. 2017 (RetinaNet, "Focal Loss for Dense Object Detection",
    sec. 4.1). With a zero bias every label starts at probability 0.5 for labels seen in ~4% of examples
    (GoEmotions), and AdamW, moving each weight about lr per step, would spend thousands of steps (and the
    encoder's features) learning the rates instead of the text. Returns False when the head has no bias
    (e.g. Llama's `score`), which is then left as it is."""
    import torch.nn as nn

    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == len(prior)]
    if not heads or heads[-1].bias is None:
        return False
    p = np.clip(prior, 1e-4, 1 - 1e-4)
    with torch.no_grad():
        heads[-1].bias.copy_(torch.as_tensor(np.log(p / (1 - p)), dtype=heads[-1].bias.dtype))
    return True
