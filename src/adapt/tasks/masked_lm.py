"""Masked language modelling (BERT's pre-training objective): continue pre-training an encoder on unlabelled
in-domain text, as the transformers example `examples/pytorch/language-modeling/run_mlm.py` does, and save a plain
`AutoModelForMaskedLM` checkpoint whose encoder the classification / NER / QA recipes take as `--model`.

Data: a plain-text file (one document per line, or paragraphs separated by blank lines) or a table column
(data.columns.text). Texts are tokenized with the tokenizer's special tokens ([CLS] ... [SEP] per document) and
concatenated into blocks of train.max_length tokens (run_mlm's `group_texts`), or kept one document per example
(`task_options.line_by_line`, run_mlm's `--line_by_line`). Masking is transformers' own
`DataCollatorForLanguageModeling` (15% of tokens, of which 80% [MASK], 10% a random token, 10% unchanged; with
`whole_word_mask` every sub-token of a chosen word, all replaced by [MASK]: transformers 5's whole-word masking
does no random replacement). Training batches are masked afresh every time they are drawn (dynamic masking,
from the collator's generator seeded with train.seed; a resumed run restarts that stream, so its masks after the
resume point differ from an uninterrupted run's); validation and test blocks are masked once, with a seed per
block, so every evaluation of a run (and of any model on the same text and settings) scores the same masked
tokens. Score: masked-token perplexity."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from pydantic import Field

from adapt import data
from adapt.errors import AdaptError
from adapt.metrics import perplexity_from_nll
from adapt.data import is_plain_text_file, split_passages
from adapt.tasks.base import Task, TaskOptions, model_inputs, pad_batch

# validation/test block i is masked with the seed EVAL_MASK_SEED + i: fixed, so that masks depend only on the
# text, the tokenizer and the masking options (not on train.seed), and scores of different runs compare
EVAL_MASK_SEED = 1_000_003


class MaskedLMOptions(TaskOptions):
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of tokens chosen for prediction")
    mask_replace_prob: float = Field(0.8, ge=0, le=1, description="of the chosen tokens, the share set to [MASK]")
    random_replace_prob: float = Field(0.1, ge=0, le=1, description="of the chosen tokens, the share set to a "
                                                                    "random token (the rest stay unchanged)")
    whole_word_mask: bool = Field(False, description="choose whole words: all their sub-tokens become [MASK] "
                                                     "(transformers' whole-word masking has no random replacement)")
    line_by_line: bool = Field(False, description="one example per document (cut at train.max_length) instead "
                                                  "of documents concatenated into full blocks")


def documents_of_text(text: str) -> list[str]:
    """The documents of a plain-text file: its paragraphs when blank lines separate them (lines of a paragraph
    joined by a space), else its lines; blank ones dropped. (`split_passages` with a 1-character minimum cuts
    exactly there.) Example: "a\\nb\\n\\nc\\n" -> ["a b", "c"]; "a\\nb\\n" -> ["a", "b"]."""
    return [" ".join(p.split("\n")).strip() for p in split_passages(text.replace("\r\n", "\n"), 1) if p.strip()]


def group_texts(encodings: dict[str, list[list]], block_size: int) -> tuple[dict[str, list[list]], list[int]]:
    """run_mlm's `group_texts`: the token lists of all documents concatenated and cut into blocks of `block_size`
    (each column of `encodings`, e.g. input_ids and special_tokens_mask, the same way). Unlike run_mlm the
    shorter last block is kept (padding holds it), so every token of a validation text is scored.

    Returns (the blocks per column, for each block the index of the document its first token comes from).
    Example: input_ids [[1 2 3] [4 5]], block_size 2 -> [[1 2] [3 4] [5]], documents [0 0 1]."""
    lengths = [len(ids) for ids in encodings["input_ids"]]
    owner = list(itertools.chain.from_iterable([i] * n for i, n in enumerate(lengths)))
    blocks = {}
    for key, lists in encodings.items():
        stream = list(itertools.chain.from_iterable(lists))
        blocks[key] = [stream[start:start + block_size] for start in range(0, len(stream), block_size)]
    return blocks, owner[::block_size]


class MaskedLM(Task):
    name = "mlm"
    Options = MaskedLMOptions
    default_metric = "perplexity"
    metric_names = ("perplexity", "nll", "loss", "tokens")
    greater_is_better = False
    pipeline_tag = "fill-mask"
    auto_class = "AutoModelForMaskedLM"
    peft_task_type = None  # peft has no masked-LM task type; adapters are refused (see __init__)
    inputs_from_features = False  # random replacement feeds any token id: every embedding row is trained

    def __init__(self, recipe):
        super().__init__(recipe)
        if recipe.peft is not None:
            raise AdaptError("task 'mlm' trains the whole encoder, whose saved checkpoint other recipes take as "
                             "--model (an adapter folder is no such checkpoint); remove the recipe's peft section")
        o = self.options
        if o.mask_replace_prob + o.random_replace_prob > 1:
            raise AdaptError(f"recipe task_options.mask_replace_prob ({o.mask_replace_prob}) + "
                             f"task_options.random_replace_prob ({o.random_replace_prob}) exceed 1; they are shares of "
                             "the chosen tokens (the rest stay unchanged): lower one of them")
        self._collators: dict[bool, Any] = {}

    # ---- data -----------------------------------------------------------------------------------
    def read_file(self, path: Path) -> Dataset:
        """Tables as usual; a plain-text file as one document per line, or per paragraph when blank lines
        separate paragraphs (`documents_of_text`).

        Raises:
            AdaptError: a text file without any non-blank line."""
        if not is_plain_text_file(str(path)):
            return Task.read_file(self, path)  # a table, read with data.delimiter / data.header_names
        documents = documents_of_text(data.read_text(path))
        if not documents:
            raise AdaptError(f"{path}: the file has no text (it is empty or every line is blank); give a plain-text "
                             "file with one document per line, or paragraphs separated by blank lines")
        return Dataset.from_dict({"text": documents})

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        """The table's text column (data.columns.text) as `text`, blank rows dropped.

        Raises:
            AdaptError: no such column, a value that is not text, or no row with text, naming the file."""
        if is_plain_text_file(source):
            return ds
        column = self.recipe.data.columns.text
        if column not in ds.column_names:
            raise AdaptError(f"{source}: no column '{column}' holding the text to train on (columns: "
                             f"{', '.join(ds.column_names)}); set data.columns.text (e.g. data.columns.text=sentence)")
        ds = data.document_column(ds, column, source)
        if len(ds) == 0:
            raise AdaptError(f"{source}: every row's '{column}' is empty; give rows with text (or set "
                             "data.columns.text to the column that holds it)")
        return ds

    # ---- model ------------------------------------------------------------------------------------
    def load_tokenizer(self, path: str):
        tokenizer = super().load_tokenizer(path)
        if tokenizer.mask_token is None:
            raise AdaptError(f"{path}: its tokenizer has no mask token, so it cannot be trained as a masked language "
                             "model; task 'mlm' needs an encoder with an MLM head (BERT, RoBERTa, ...), use task "
                             "'clm' for a decoder")
        return tokenizer

    # ---- features ---------------------------------------------------------------------------------
    def featurize(self, raw: Dataset, role: str) -> Dataset:
        """Blocks of at most train.max_length tokens with `input_ids`, `attention_mask`, `special_tokens_mask`
        (and `offset_mapping` for whole-word masking), `length` and `example` (the raw row where the block starts).
        Training blocks stay unmasked (the collate masks each batch when drawn); other roles are masked here
        once (`labels`: the original id at masked positions, -100 elsewhere), block i with seed
        EVAL_MASK_SEED + i."""
        max_length = self.recipe.train.max_length
        wwm = self.options.whole_word_mask
        texts = list(raw["text"])
        line_by_line = self.options.line_by_line
        # without line_by_line, documents longer than the model are fine: they are cut into blocks below
        encodings = self.tokenizer(texts, return_special_tokens_mask=True, return_offsets_mapping=wwm,
                                   return_attention_mask=False, return_token_type_ids=False,
                                   truncation=line_by_line, max_length=max_length if line_by_line else None)
        columns = ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if wwm else [])
        encodings = {key: [list(v) for v in encodings[key]] for key in columns}
        if wwm:
            encodings["offset_mapping"] = [[list(pair) for pair in row] for row in encodings["offset_mapping"]]
        if line_by_line:
            rows, examples = encodings, list(range(len(texts)))
        else:
            rows, examples = group_texts(encodings, max_length)
        rows["attention_mask"] = [[1] * len(ids) for ids in rows["input_ids"]]
        rows["length"] = [len(ids) for ids in rows["input_ids"]]
        rows["example"] = examples
        if role != "train":
            rows = self._mask_once(rows)
        return Dataset.from_dict(rows)

    def featurize_key(self) -> list[str]:
        return [*super().featurize_key(), f"eval-masks={EVAL_MASK_SEED}"]

    def collator(self, seeded: bool = True):
        """transformers' `DataCollatorForLanguageModeling` for the recipe's masking options: `seeded`, drawing
        training masks from its own generator seeded with train.seed (transformers gives each DataLoader worker
        seed + worker id); else drawing from torch's global generator (the fixed validation masks)."""
        if seeded not in self._collators:
            from transformers import DataCollatorForLanguageModeling

            o = self.options
            self._collators[seeded] = DataCollatorForLanguageModeling(
                self.tokenizer, mlm=True, mlm_probability=o.mlm_probability, whole_word_mask=o.whole_word_mask,
                # whole-word masking replaces every chosen token by [MASK] (transformers would warn and set this)
                mask_replace_prob=1.0 if o.whole_word_mask else o.mask_replace_prob,
                random_replace_prob=0.0 if o.whole_word_mask else o.random_replace_prob,
                seed=self.recipe.train.seed if seeded else None)
        return self._collators[seeded]

    def _mask(self, rows: dict[str, list], seeded: bool = True) -> dict[str, torch.Tensor]:
        """Pad `rows` (a batch of unmasked blocks) once and mask the padded tensors with `collator(seeded)`'s
        `torch_mask_tokens` (its special_tokens_mask padded with 1: padding is never chosen): input_ids with the
        chosen tokens replaced, attention_mask, labels (the original id at chosen positions, -100 elsewhere).
        The same masks as calling the collator on the rows, from the same generator: made once per process as
        the collator makes it (seed in the main process, seed + worker id in a DataLoader worker)."""
        batch = pad_batch(rows, self.tokenizer.pad_token_id, skip=("length", "example", "offset_mapping"))
        offsets = None
        if "offset_mapping" in rows:  # pad_batch keeps nested columns out: pad the [start, end] pairs here
            width = batch["input_ids"].shape[1]
            offsets = torch.tensor([[list(pair) for pair in r] + [[0, 0]] * (width - len(r))
                                    for r in rows["offset_mapping"]], dtype=torch.long).reshape(-1, width, 2)
        collator = self.collator(seeded)
        if collator.seed is not None and collator._generator_pid != os.getpid():  # as its torch_call decides
            collator.create_rng("pt")
        batch["input_ids"], batch["labels"] = collator.torch_mask_tokens(
            batch["input_ids"], special_tokens_mask=batch.pop("special_tokens_mask"), offset_mapping=offsets)
        return batch

    def _mask_once(self, rows: dict[str, list]) -> dict[str, list]:
        """Each block masked with its own seed EVAL_MASK_SEED + i (see `featurize`), unpadded again; torch's
        global generator is left as it was."""
        out: dict[str, list] = {"input_ids": [], "labels": [], "attention_mask": [], "length": rows["length"],
                                "example": rows["example"]}
        keys = [k for k in rows if k not in ("length", "example")]
        for i, length in enumerate(rows["length"]):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(EVAL_MASK_SEED + i)
                batch = self._mask({key: [rows[key][i]] for key in keys}, seeded=False)
            out["input_ids"].append(batch["input_ids"][0, :length].tolist())
            out["labels"].append(batch["labels"][0, :length].tolist())
            out["attention_mask"].append([1] * length)
        return out

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        if "labels" in rows:  # evaluation blocks, masked in featurize
            return pad_batch(rows, self.tokenizer.pad_token_id, skip=("length", "example"))
        return self._mask(rows)

    # ---- loss and evaluation --------------------------------------------------------------------------
    # loss / count_targets: the Task defaults (summed cross-entropy over the positions whose label is not -100,
    # i.e. the masked tokens, and their number)

    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per block: the summed NLL of its masked tokens (nats) and their number."""
        labels = batch["labels"]
        chosen = labels != -100  # the masked positions (~mlm_probability of the tokens): only they are scored
        logits = model(**model_inputs(batch)).logits[chosen].float()  # [masked tokens, V]
        token_nll = F.cross_entropy(logits, labels[chosen], reduction="none")
        nll = token_nll.new_zeros(labels.shape[0]).index_add_(0, chosen.nonzero()[:, 0], token_nll)
        return {"nll": nll, "tokens": chosen.sum(-1)}

    def postprocess(self, outputs: list[dict[str, Any]], features: Dataset, raw: Dataset) -> list[dict[str, Any]]:
        """Per raw row: the NLL and number of the masked tokens of the blocks that start in it."""
        per_row = [{"nll": 0.0, "tokens": 0} for _ in range(len(raw))]
        for row, out in zip(list(features["example"]), outputs):
            per_row[row]["nll"] += float(out["nll"])
            per_row[row]["tokens"] += int(out["tokens"])
        return per_row

    def score(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        """Masked-token perplexity: exp(summed NLL of all masked tokens / their number), the mean `nll` (= `loss`)
        and `tokens` (masked tokens scored); as run_mlm reports perplexity = exp(eval_loss)."""
        total = sum(p["tokens"] for p in predictions)
        if total == 0:
            raise AdaptError("no token of the evaluation text was masked (it is too short for "
                             f"task_options.mlm_probability={self.options.mlm_probability}); give more text")
        scores = perplexity_from_nll(sum(p["nll"] for p in predictions), total)
        return {**scores, "loss": scores["nll"], "perplexity_unit": "masked model token"}

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        return [{**row, **p, "perplexity": perplexity_from_nll(p["nll"], p["tokens"])["perplexity"] if p["tokens"] else None}
                for row, p in zip(raw.to_list(), predictions)]


