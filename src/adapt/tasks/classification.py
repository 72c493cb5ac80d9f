"""Sequence classification (single sentences and sentence pairs): sentiment, topic, NLI, paraphrase."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset

from adapt import assets, data
from adapt.errors import AdaptError
from adapt.metrics import classification_scores
from adapt.tasks.base import Task, model_inputs


class SequenceClassification(Task):
    name = "classification"
    default_metric = "accuracy"
    pipeline_tag = "text-classification"
    auto_class = "AutoModelForSequenceClassification"
    first_token_only = True

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
        cols = self.recipe.data.columns
        wanted = {cols.text: "text", cols.label: "label"}
        if cols.text_pair:
            wanted[cols.text_pair] = "text_pair"
        data.require_columns(ds, list(wanted), source)
        ds = ds.select_columns(list(wanted))
        renames = {src: dst for src, dst in wanted.items() if src != dst}
        ds = ds.rename_columns(renames) if renames else ds
        names = self.recipe.data.label_names
        feature = ds.features["label"]
        if names is None and hasattr(feature, "names"):  # Hub ClassLabel columns carry their names
            names = self.recipe.data.label_names = list(feature.names)

        def to_name(value) -> str:
            text = str(value).strip()
            if names is not None and text.lstrip("-").isdigit():
                if not 0 <= int(text) < len(names):
                    raise AdaptError(f"{source}: label {text} is outside data.label_names (0..{len(names) - 1})")
                return names[int(text)]
            return text

        return ds.map(lambda b: {"label": [to_name(v) for v in b["label"]]}, batched=True)

    def setup(self, splits: dict[str, Dataset]) -> None:
        seen = sorted(set(splits["train"]["label"]))
        configured = self.recipe.data.label_names
        self.label_names = list(configured) if configured else seen
        known = set(self.label_names)
        for split_name, ds in splits.items():
            source = getattr(self.recipe.data, split_name, None) or self.recipe.data.train
            for label in sorted(set(ds["label"]) - known):
                raise AdaptError(
                    f"{source}: label '{label}' in the {split_name} split never appears in train "
                    f"(train labels: {', '.join(self.label_names)}); fix the data or set data.label_names"
                )

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        return Dataset.from_dict({"text": texts})

    # ---- model ------------------------------------------------------------------------------------
    def build_model(self, path: str):
        import transformers

        return getattr(transformers, self.auto_class).from_pretrained(
            path,
            num_labels=len(self.label_names),
            id2label=dict(enumerate(self.label_names)),
            label2id={n: i for i, n in enumerate(self.label_names)},
            use_safetensors=True,
            trust_remote_code=self.recipe.trust_remote_code,
        )

    def restore_from_model(self, model) -> None:
        id2label = model.config.id2label
        self.label_names = [id2label[i] for i in range(len(id2label))]

    # ---- features -------------------------------------------------------------------------------
    def featurize(self, raw: Dataset, role: str) -> Dataset:
        label2id = {n: i for i, n in enumerate(self.label_names)}
        has_pair = "text_pair" in raw.column_names
        has_label = "label" in raw.column_names
        max_length = self.recipe.train.max_length

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
        return classification_scores([p["label"] for p in predictions], raw["label"], self.label_names)

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        rows = raw.to_list()
        return [{**row, "prediction": p["label"], "score": p["score"]} for row, p in zip(rows, predictions)]
