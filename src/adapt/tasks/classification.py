"""Sequence classification (single sentences and sentence pairs): sentiment, topic, NLI, paraphrase."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import torch
from datasets import Dataset

from adapt import assets, data
from adapt.errors import AdaptError
from adapt.metrics import classification_scores
from adapt.tasks.base import Task, ensure_pad_token, json_input, model_inputs, predict_input


class SequenceClassification(Task):
    name = "classification"
    default_metric = "accuracy"
    metric_names = ("accuracy", "f1_macro", "f1_micro", "f1_weighted", "precision_macro", "recall_macro", "matthews")
    pipeline_tag = "text-classification"
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"

    label_names: list[str]

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
        labels = class_labels(ds["label"][:], source, names, cols.label)
        order = ds.column_names
        # the new column's fingerprint from its text: datasets would otherwise pickle the whole list to hash it
        fingerprint = hashlib.sha256("\n".join([ds._fingerprint, *labels]).encode()).hexdigest()[:32]
        return ds.remove_columns("label").add_column("label", labels, new_fingerprint=fingerprint).select_columns(order)

    def setup(self, splits: dict[str, Dataset]) -> None:
        cfg = self.recipe.data
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
        model = self.pretrained_model(
            path,
            num_labels=len(self.label_names),
            id2label=dict(enumerate(self.label_names)),
            label2id={n: i for i, n in enumerate(self.label_names)},
        )
        # decoder classifiers (GPT-2, Llama, Qwen2, Mistral) read the last non-pad token of each row: without
        # a pad id they refuse batches of more than one row
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def restore_from_model(self, model) -> None:
        id2label = model.config.id2label
        self.label_names = [id2label[i] for i in range(len(id2label))]

    # ---- features -------------------------------------------------------------------------------
    def featurize(self, raw: Dataset, role: str) -> Dataset:
        label2id = {n: i for i, n in enumerate(self.label_names)}
        has_pair = "text_pair" in raw.column_names
        has_label = "label" in raw.column_names
        max_length = self.recipe.train.max_length
        unknown = sorted(set(raw["label"][:]) - set(label2id)) if has_label else []
        if unknown:  # e.g. `adapt eval` of a model on a file with other labels than it was trained on
            raise AdaptError(f"the {role} data has label '{unknown[0]}', which is not a class of this model "
                             f"({', '.join(self.label_names)}); give data with the model's labels, or set "
                             "data.label_names to map integer ids to them")

        def encode(batch):
            enc = self.tokenizer(batch["text"], batch["text_pair"] if has_pair else None,
                                 truncation=True, max_length=max_length)
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            if has_label:
                enc["labels"] = [label2id[label] for label in batch["label"]]
            return enc

        return raw.map(encode, batched=True, remove_columns=raw.column_names, desc=f"tokenizing {role}")

    # ---- evaluation -----------------------------------------------------------------------------
    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(**model_inputs(batch)).logits.float()
        probs = logits.softmax(-1)
        score, pred = probs.max(-1)  # argmax on device: never ship [N, C] logits to the host
        return {"pred": pred, "score": score}

    def postprocess(self, outputs: list[dict[str, Any]], features: Dataset, raw: Dataset) -> list[dict[str, Any]]:
        return [{"label": self.label_names[int(o["pred"])], "score": float(o["score"])} for o in outputs]

    def score(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        return classification_scores([p["label"] for p in predictions], raw["label"][:], self.label_names)

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        rows = raw.to_list()
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


def class_labels(values: list, source: str, names: list[str] | None, column: str = "label") -> list[str]:
    """Class names (strings) for a raw label column, decided by its content.

    Integer-valued numbers are class ids: `1`, `1.0` and `"1.0"` are all class 1, which becomes `names[1]` when
    label names are set (data.label_names or a Hub ClassLabel) and `"1"` otherwise. Other values are class names,
    whitespace-trimmed; with `names` set they must be among them.

    Raises:
        AdaptError: naming `source` and the row's line (`data.row_location`) for an empty, null or NaN label, a
            list/object label, a column of continuous numbers (a regression target, not classes), an id outside
            `names`, or a name not in `names` (saying how to set data.label_names)."""
    def where(index: int) -> str:
        return f"{source}: {data.row_location(source, index)}"

    numbers: list[float | None] = []
    single = {str(v).strip() for v in values if not (isinstance(v, str) and _LABEL_LIST.search(v))}
    for index, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value)) or (
                isinstance(value, str) and value.strip() in _NULL_TEXTS):
            raise AdaptError(f"{where(index)}: the label ('{column}') is empty; give every example a label or "
                             "remove that row")
        if isinstance(value, dict):
            raise AdaptError(f"{where(index)}: the label ('{column}') is a mapping; a classification example has "
                             "exactly one label (check data.columns.label)")
        if isinstance(value, list) or (isinstance(value, str) and _is_label_list(value, single)):
            shown = f"is a list {json.dumps(value)[:60]}" if isinstance(value, list) else f"'{value.strip()}' lists several labels"
            raise AdaptError(f"{where(index)}: the label ('{column}') {shown}, and multi-label "
                             "classification is not supported yet (planned: issue 17); give each example exactly one "
                             "label (or check data.columns.label)")
        numbers.append(_as_number(value))
    if numbers and all(n is not None for n in numbers):
        index = next((i for i, n in enumerate(numbers) if not n.is_integer()), None)
        if index is not None:
            distinct = sorted(set(numbers))
            raise AdaptError(
                f"{where(index)}: the label column '{column}' holds continuous numbers ({values[index]} here; "
                f"{len(distinct)} distinct values from {distinct[0]:g} to {distinct[-1]:g}): that is a regression "
                "target, and adapt has no regression task yet; for classification give class names or integer "
                "class ids (e.g. bin the scores into classes)")
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
