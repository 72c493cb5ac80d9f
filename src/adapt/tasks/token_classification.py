"""Token classification (named-entity recognition and other IOB2 word tagging) from CoNLL or JSON data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from adapt import data
from adapt.errors import AdaptError
from adapt.metrics import seqeval_scores
from adapt.tasks.base import Task, model_inputs, pad_batch
from adapt.tasks.classification import SequenceClassification

OUTSIDE = "O"
DOCSTART = "-DOCSTART-"


def read_conll(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """(sentences of words, sentences of tags) from a CoNLL column file: one `WORD ... TAG` line per word,
    blank lines between sentences, `-DOCSTART-` lines dropped; the tag is the last column."""
    sentences, tags = [], []
    words, labels = [], []
    for number, line in enumerate(data.read_text(path).splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if words:
                sentences.append(words)
                tags.append(labels)
                words, labels = [], []
            continue
        if len(fields) < 2:
            raise AdaptError(f"{path}: line {number} has no tag column ('{line.strip()[:60]}'); "
                             "CoNLL lines need `WORD ... TAG` separated by whitespace")
        words.append(fields[0])
        labels.append(fields[-1])
    if words:
        sentences.append(words)
        tags.append(labels)
    return sentences, tags


def is_iob2(tag: str) -> bool:
    return tag == OUTSIDE or (tag[:2] in ("B-", "I-") and len(tag) > 2)


def entities(words: list[str], tags: list[str]) -> list[dict[str, Any]]:
    """Word spans of the IOB2 entities in one tagged sentence (an I- without a B- starts a new entity)."""
    spans = []
    for i, tag in enumerate(tags):
        kind = tag[2:]
        continues = tag.startswith("I-") and spans and spans[-1]["end"] == i and spans[-1]["type"] == kind
        if continues:
            spans[-1]["end"] = i + 1
        elif tag != OUTSIDE:
            spans.append({"type": kind, "start": i, "end": i + 1})
    return [{**s, "text": " ".join(words[s["start"]:s["end"]])} for s in spans]


class TokenClassification(Task):
    name = "ner"
    default_metric = "f1"
    pipeline_tag = "token-classification"
    auto_class = "AutoModelForTokenClassification"

    label_names: list[str]

    # ---- data -----------------------------------------------------------------------------------
    def read_file(self, path: Path) -> Dataset:
        kind, _ = data.split_suffix(path)
        if kind in data.TABLE_SUFFIXES:  # JSON/JSONL/Parquet with token and tag lists
            return data.read_table(path)
        sentences, tags = read_conll(path)
        cols = self.recipe.data.columns
        return Dataset.from_dict({cols.text: sentences, cols.label: tags})

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        """Canonical `tokens`/`tags` columns of word and IOB2 tag-name lists."""
        cols = self.recipe.data.columns
        data.require_columns(ds, [cols.text, cols.label], source)
        names = self.recipe.data.label_names
        inner = getattr(ds.features[cols.label], "feature", None)
        if names is None and hasattr(inner, "names"):  # Hub datasets store tags as ClassLabel ids
            names = self.recipe.data.label_names = list(inner.names)
        all_tokens, all_tags = [], []
        for number, (tokens, tags) in enumerate(zip(ds[cols.text], ds[cols.label]), 1):
            where = f"{source}: example {number}"
            if isinstance(tokens, str):
                tokens = tokens.split()
            if isinstance(tags, str):
                tags = tags.split()
            if not isinstance(tokens, list) or not isinstance(tags, list):
                raise AdaptError(f"{where}: '{cols.text}' and '{cols.label}' must be lists of words and tags")
            if len(tokens) != len(tags):
                raise AdaptError(f"{where} has {len(tokens)} words but {len(tags)} tags; give one tag per word")
            all_tokens.append([str(t) for t in tokens])
            all_tags.append([self._tag_name(t, names, where) for t in tags])
        return Dataset.from_dict({"tokens": all_tokens, "tags": all_tags})

    @staticmethod
    def _tag_name(tag, names: list[str] | None, where: str) -> str:
        if isinstance(tag, int) or str(tag).isdigit():
            if names is None:
                raise AdaptError(f"{where}: tag {tag} is a number; set data.label_names to the tag names")
            if not 0 <= int(tag) < len(names):
                raise AdaptError(f"{where}: tag {tag} is outside data.label_names (0..{len(names) - 1})")
            tag = names[int(tag)]
        tag = str(tag)
        if not is_iob2(tag):
            raise AdaptError(f"{where}: tag '{tag}' is not IOB2; use O, B-TYPE or I-TYPE")
        return tag

    def setup(self, splits: dict[str, Dataset]) -> None:
        configured = self.recipe.data.label_names
        seen = {tag for tags in splits["train"]["tags"] for tag in tags} | {OUTSIDE}
        self.label_names = list(configured) if configured else [OUTSIDE, *sorted(seen - {OUTSIDE})]
        known = set(self.label_names)
        for split_name, ds in splits.items():
            source = getattr(self.recipe.data, split_name, None) or self.recipe.data.train
            unknown = sorted({tag for tags in ds["tags"] for tag in tags} - known)
            if unknown:
                raise AdaptError(
                    f"{source}: tag '{unknown[0]}' in the {split_name} split never appears in train "
                    f"(train tags: {', '.join(self.label_names)}); fix the data or set data.label_names"
                )

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        return Dataset.from_dict({"tokens": [text.split() for text in texts]})

    # ---- model: the same label-carrying config (id2label/label2id) as sequence classification ----------
    build_model = SequenceClassification.build_model
    restore_from_model = SequenceClassification.restore_from_model

    # ---- features -------------------------------------------------------------------------------
    def featurize(self, raw: Dataset, role: str) -> Dataset:
        """Sub-word features; each word's label sits on its first sub-token (the rest are -100, ignored by
        the loss), and `word_starts` keeps that position per word (-1 for words cut by truncation)."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise AdaptError("token classification needs a fast tokenizer (word_ids); use a model with tokenizer.json")
        label2id = {n: i for i, n in enumerate(self.label_names)}
        has_tags = "tags" in raw.column_names

        def encode(batch):
            enc = self.tokenizer(batch["tokens"], is_split_into_words=True, truncation=True,
                                 max_length=self.recipe.train.max_length)
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            enc["word_starts"], labels = [], []
            for i, words in enumerate(batch["tokens"]):
                starts = [-1] * len(words)
                for position, word in enumerate(enc.word_ids(i)):
                    if word is not None and starts[word] == -1:
                        starts[word] = position
                enc["word_starts"].append(starts)
                if has_tags:
                    row = [-100] * len(enc["input_ids"][i])
                    for word, position in enumerate(starts):
                        if position >= 0:
                            row[position] = label2id[batch["tags"][i][word]]
                    labels.append(row)
            if has_tags:
                enc["labels"] = labels
            return enc

        return raw.map(encode, batched=True, remove_columns=raw.column_names, desc=f"tokenizing {role}")

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        return pad_batch(rows, self.tokenizer.pad_token_id or 0, skip=("length", "word_starts"))

    # ---- evaluation -----------------------------------------------------------------------------
    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(**model_inputs(batch)).logits
        pred = logits.argmax(-1)  # on device: only [B, T] ids reach the host, never [B, T, C] logits
        if "attention_mask" in batch:
            pred = pred.masked_fill(batch["attention_mask"] == 0, -100)
        return {"pred": pred}

    def postprocess(self, outputs: list[dict[str, Any]], features: Dataset, raw: Dataset) -> list[dict[str, Any]]:
        """Word-level tags from each word's first sub-token; words with no sub-token (cut by truncation, or
        that tokenize to nothing) are tagged O and counted in `truncated_words`."""
        predictions = []
        for output, starts, words in zip(outputs, features["word_starts"], raw["tokens"]):
            tags = [self.label_names[int(output["pred"][p])] if p >= 0 else OUTSIDE for p in starts]
            predictions.append({"tags": tags, "entities": entities(words, tags),
                                "truncated_words": sum(p < 0 for p in starts)})
        return predictions

    def score(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        scores = seqeval_scores([p["tags"] for p in predictions], raw["tags"], strict=True)
        scores["truncated_words"] = sum(p["truncated_words"] for p in predictions)
        return scores

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        return [{"tokens": row["tokens"], "tags": row["tags"], "prediction": p["tags"], "entities": p["entities"]}
                for row, p in zip(raw.to_list(), predictions)]
