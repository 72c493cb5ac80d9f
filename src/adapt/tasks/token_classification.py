"""Token classification (named-entity recognition and other IOB2 word tagging) from CoNLL or JSON data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from adapt import data
from adapt.errors import AdaptError
from adapt.metrics import seqeval_scores
from adapt.metrics.sequence import tag_spans, to_iob2
from adapt.tasks.base import Task, config_label_names, label_head_model, model_inputs, pad_batch, predict_input

OUTSIDE = "O"
DOCSTART = "-DOCSTART-"
LINES_COLUMN = "_lines"  # CoNLL files only: the file line of each word, for error messages


def read_conll(path: Path) -> tuple[list[list[str]], list[list[str]], list[list[int]]]:
    """(sentences of words, sentences of tags, sentences of the file line of each word) from a CoNLL column
    file: one `WORD ... TAG` line per word, blank lines between sentences, `-DOCSTART-` lines dropped.

    The tag is the last column, so every word line must have the same number of columns: a line with one
    column fewer would otherwise silently give its chunk tag (CoNLL-2003's third column) as the entity tag.

    Raises:
        AdaptError: naming the line that has no tag column, or the first line whose column count differs
            from the file's first word line.
    """
    sentences, tags, lines = [], [], []
    words, labels, numbers = [], [], []
    expected = None  # (columns, line number) of the file's first word line
    for number, line in enumerate(data.read_text(path).splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if words:
                sentences.append(words)
                tags.append(labels)
                lines.append(numbers)
                words, labels, numbers = [], [], []
            continue
        if len(fields) < 2:
            raise AdaptError(f"{path}: line {number} has no tag column ('{line.strip()[:60]}'); "
                             "CoNLL lines need `WORD ... TAG` separated by whitespace")
        if expected is None:
            expected = (len(fields), number)
        elif len(fields) != expected[0]:
            raise AdaptError(
                f"{path}: line {number} has {len(fields)} columns but line {expected[1]} has {expected[0]}; the "
                f"entity tag is the last column, so every word line needs the same columns: fix line {number}")
        words.append(fields[0])
        labels.append(fields[-1])
        numbers.append(number)
    if words:
        sentences.append(words)
        tags.append(labels)
        lines.append(numbers)
    return sentences, tags, lines


# ---- tag schemes ----------------------------------------------------------------------------------------
# Prefixes of the schemes read on input: IOB1/IOB2 (B, I), IOE1/IOE2 (I, E), BIOES/IOBES (B, I, E, S) and
# BILOU (B, I, L, U). E/L end an entity, S/U are single-word entities, B starts one, I continues one.
SCHEME_PREFIXES = frozenset("BIESLU")
SCHEME_NOTES = {
    "IOB1": "an entity may start with I-; B- only separates two adjacent entities of one type",
    "IOE": "E- marks an entity's last word",
    "BIOES": "B-/I-/E- for first/inside/last words, S- for single-word entities",
    "BILOU": "B-/I-/L- for first/inside/last words, U- for single-word entities",
}
TAG_FORMS = "O, or PREFIX-TYPE with prefix B/I (IOB1, IOB2), I/E (IOE), B/I/E/S (BIOES) or B/I/L/U (BILOU)"


def split_tag(tag: str) -> tuple[str, str] | None:
    """('B', 'PER') for 'B-PER', ('O', '') for 'O'; None for a tag of no known shape."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, dash, kind = tag.partition("-")
    if dash and prefix in SCHEME_PREFIXES and kind.strip():
        return prefix, kind
    return None


def is_iob2(tag: str) -> bool:
    return tag == OUTSIDE or (tag[:2] in ("B-", "I-") and len(tag) > 2)


def detect_scheme(tag_rows: list[list[str]], locate) -> str:
    """The scheme of well-shaped tag sequences: 'IOB2', 'IOB1' (an entity starts with I-), 'IOE', 'BIOES'
    or 'BILOU'. `locate(row, word)` names a word's place in the file for the error.

    Raises:
        AdaptError: when the tags mix E/S with L/U prefixes (two schemes in one file).
    """
    first: dict[str, tuple[int, int]] = {}
    starts_with_inside = False
    for i, tags in enumerate(tag_rows):
        previous = OUTSIDE
        for j, tag in enumerate(tags):
            prefix, _, kind = tag.partition("-")
            first.setdefault(prefix, (i, j))
            if prefix == "I" and previous not in (f"B-{kind}", f"I-{kind}"):
                starts_with_inside = True
            previous = tag
    prefixes = set(first) - {OUTSIDE}
    ending, bilou = prefixes & {"E", "S"}, prefixes & {"L", "U"}
    if ending and bilou:
        a, b = first[min(ending)], first[min(bilou)]
        raise AdaptError(f"the tags mix two schemes: '{tag_rows[a[0]][a[1]]}' ({locate(*a)}) is BIOES/IOE and "
                         f"'{tag_rows[b[0]][b[1]]}' ({locate(*b)}) is BILOU; use one scheme in a file")
    if bilou:
        return "BILOU"
    if ending:
        return "BIOES" if prefixes & {"B", "S"} else "IOE"
    return "IOB1" if starts_with_inside else "IOB2"


def prefix_space_for_words(tokenizer):
    """Make a byte-level BPE tokenizer (RoBERTa, GPT-2, ModernBERT, Llama-3 style) encode each word of a
    pre-split sentence with its leading space, as in running text ("lives" -> `Ġlives`, not `l`,`ives`).

    With `is_split_into_words=True` every word is encoded on its own, so without `add_prefix_space` each one
    gets its start-of-text form. The flag is set on the backend's ByteLevel pre-tokenizer (also inside a
    Sequence) and in the tokenizer's init kwargs, so a tokenizer saved with the run reloads the same way.
    Other tokenizers (WordPiece, SentencePiece's Metaspace) are returned unchanged. Returns the tokenizer.
    """
    import json

    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer
    spec = json.loads(backend.to_str())

    def set_flag(node) -> bool:
        if not isinstance(node, dict):
            return False
        changed = False
        if node.get("type") == "ByteLevel" and node.get("add_prefix_space") is False:
            node["add_prefix_space"] = changed = True
        for child in node.get("pretokenizers") or ():
            changed = set_flag(child) or changed
        return changed

    if set_flag(spec.get("pre_tokenizer")):
        backend.pre_tokenizer = Tokenizer.from_str(json.dumps(spec)).pre_tokenizer
        tokenizer.init_kwargs["add_prefix_space"] = True
        tokenizer.add_prefix_space = True
    return tokenizer


def entities(words: list[str], tags: list[str]) -> list[dict[str, Any]]:
    """Word spans of the entities in one tagged sentence (`tag_spans`: an I- without a B- starts a new entity)."""
    return [{"type": kind, "start": start, "end": end, "text": " ".join(words[start:end])}
            for kind, start, end in tag_spans(tags)]


class TokenClassification(Task):
    name = "ner"
    default_metric = "f1"
    metric_names = ("f1", "precision", "recall", "accuracy", "strict_f1", "strict_precision", "strict_recall",
                    "truncated_words")
    pipeline_tag = "token-classification"
    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"

    label_names: list[str]

    # ---- data -----------------------------------------------------------------------------------
    def read_file(self, path: Path) -> Dataset:
        kind, _ = data.split_suffix(path)
        if kind in data.TABLE_SUFFIXES:  # JSON/JSONL/Parquet with token and tag lists
            return Task.read_file(self, path)  # a table, read with data.delimiter / data.header_names
        sentences, tags, lines = read_conll(path)
        cols = self.recipe.data.columns
        return Dataset.from_dict({cols.text: sentences, cols.label: tags, LINES_COLUMN: lines})

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        """Canonical `tokens`/`tags` columns of word and IOB2 tag-name lists. Tags in IOB1, IOE, BIOES or
        BILOU are converted to IOB2 (one note on stderr says so); tags of any other shape are an error
        naming the file and line."""
        cols = self.recipe.data.columns
        data.require_columns(ds, [cols.text, cols.label], source)
        names = self.recipe.data.label_names
        inner = getattr(ds.features[cols.label], "feature", None)
        if names is None and hasattr(inner, "names"):  # Hub datasets store tags as ClassLabel ids
            names = self.recipe.data.label_names = list(inner.names)
        lines = ds[LINES_COLUMN] if LINES_COLUMN in ds.column_names else None

        def locate(row: int, word: int | None = None) -> str:
            """Where a sentence (or one of its words) is in the source: the file line for CoNLL files."""
            if lines is not None:
                return f"line {lines[row][0 if word is None else word]}"
            where = data.row_location(source, row)
            return where if word is None else f"{where}, word {word + 1}"

        all_tokens, all_tags = [], []
        for row, (tokens, tags) in enumerate(zip(ds[cols.text], ds[cols.label])):
            where = f"{source}: {locate(row)}"
            if isinstance(tokens, str):
                tokens = tokens.split()
            if isinstance(tags, str):
                tags = tags.split()
            if not isinstance(tokens, list) or not isinstance(tags, list):
                raise AdaptError(f"{where}: '{cols.text}' and '{cols.label}' must be lists of words and tags")
            if not tokens:
                raise AdaptError(f"{where} has no words; remove the example or give its words and tags")
            if len(tokens) != len(tags):
                raise AdaptError(f"{where} has {len(tokens)} words but {len(tags)} tags; give one tag per word")
            for word, token in enumerate(tokens):
                if token is None or not str(token).strip():
                    raise AdaptError(f"{source}: {locate(row, word)}: the word is empty; every word needs text")
            all_tokens.append([str(t) for t in tokens])
            all_tags.append([self._tag_name(t, names, f"{source}: {locate(row, word)}") for word, t in enumerate(tags)])
        scheme = detect_scheme(all_tags, lambda row, word: f"{source}: {locate(row, word)}")
        if scheme != "IOB2":
            all_tags = [to_iob2(tags) for tags in all_tags]
            print(f"note: {source}: tags are in the {scheme} scheme; converted to IOB2 on reading "
                  f"({SCHEME_NOTES[scheme]})", file=sys.stderr)
        return Dataset.from_dict({"tokens": all_tokens, "tags": all_tags})

    @staticmethod
    def _tag_name(tag, names: list[str] | None, where: str) -> str:
        if isinstance(tag, int) or str(tag).isdigit():
            if names is None:
                raise AdaptError(f"{where}: tag {tag} is a number; set data.label_names to the tag names")
            if not 0 <= int(tag) < len(names):
                raise AdaptError(f"{where}: tag {tag} is outside data.label_names (0..{len(names) - 1})")
            tag = names[int(tag)]
        if tag is None or split_tag(str(tag)) is None:
            raise AdaptError(f"{where}: tag {str(tag)!r} has no known shape; use {TAG_FORMS}")
        return str(tag)

    def setup(self, splits: dict[str, Dataset]) -> None:
        configured = self.recipe.data.label_names
        seen = {tag for tags in splits["train"]["tags"][:] for tag in tags} | {OUTSIDE}
        if configured and all(is_iob2(name) for name in configured):
            self.label_names = list(configured)
        else:  # no names, or names of another scheme (data read as ids of them is already converted to IOB2)
            self.label_names = [OUTSIDE, *sorted(seen - {OUTSIDE})]
        known = set(self.label_names)
        for split_name, ds in splits.items():
            source = getattr(self.recipe.data, split_name, None) or self.recipe.data.train
            unknown = sorted({tag for tags in ds["tags"][:] for tag in tags} - known)
            if unknown:
                raise AdaptError(
                    f"{source}: tag '{unknown[0]}' in the {split_name} split never appears in train "
                    f"(train tags: {', '.join(self.label_names)}); fix the data or set data.label_names"
                )

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        """Sentences for `adapt predict`, split into words at whitespace; JSON Lines (as the task's data files)
        give their word column (data.columns.text: a list of words, or a string)."""
        column = self.recipe.data.columns.text
        sentences = []
        for number, text in enumerate(texts, 1):
            value = predict_input(text, [column], number, "name the word column with --set data.columns.text=KEY")
            words = [str(w) for w in value] if isinstance(value, list) else str(value).split()
            if not words:
                raise AdaptError(f"input {number}: the sentence has no words")
            sentences.append(words)
        return Dataset.from_dict({"tokens": sentences})

    # ---- model: a label-carrying config (id2label/label2id), as sequence classification -----------------
    def build_model(self, path: str):
        return label_head_model(self, path)

    def restore_from_model(self, model) -> None:
        self.label_names = config_label_names(model.config)

    def load_tokenizer(self, path: str):
        """The model's tokenizer, set to give every word its leading space (`prefix_space_for_words`)."""
        return prefix_space_for_words(super().load_tokenizer(path))

    def featurize_key(self) -> list[str]:
        # features cached before words got their leading space must not be reused
        return [*super().featurize_key(), f"add_prefix_space={getattr(self.tokenizer, 'add_prefix_space', None)}"]

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
        that tokenize to nothing) are tagged O and counted in `truncated_words`. The tags are rewritten as
        valid IOB2 (`to_iob2`: a predicted entity starting with I- gets its B-), so the returned tags, the
        returned entities and the scores all count the same entities."""
        predictions = []
        for output, starts, words in zip(outputs, features["word_starts"], raw["tokens"]):
            tags = to_iob2([self.label_names[int(output["pred"][p])] if p >= 0 else OUTSIDE for p in starts])
            predictions.append({"tags": tags, "entities": entities(words, tags),
                                "truncated_words": sum(p < 0 for p in starts)})
        return predictions

    def score(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        scores = seqeval_scores([p["tags"] for p in predictions], raw["tags"][:])
        scores["truncated_words"] = sum(p["truncated_words"] for p in predictions)
        return scores

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        return [{"tokens": row["tokens"], "tags": row["tags"], "prediction": p["tags"], "entities": p["entities"]}
                for row, p in zip(raw.to_list(), predictions)]
