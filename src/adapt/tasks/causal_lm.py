"""Causal language modelling: plain text packed into fixed-length, document-masked blocks (each document
attends only to itself), or prompt/completion pairs with the loss on the completion only; scored by
token-weighted perplexity, and used for text generation."""

from __future__ import annotations

import inspect
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from pydantic import Field, field_validator

from adapt import data
from adapt.data import split_passages
from adapt.errors import AdaptError
from adapt.metrics import perplexity_from_nll
from adapt.metrics.generation import ROUGE_TYPES, exact_match_score, max_reference_rouge, translation_scores
from adapt.tasks.base import (Task, TaskOptions, apply_generation_settings, ensure_pad_token, model_inputs,
                               pad_batch, predict_input, summed_cross_entropy, target_cross_entropy)


def synced_generation(model: torch.nn.Module) -> bool:
    """Whether `generate()` runs synchronised across processes (`synced_gpus`): a model sharded with FSDP,
    marked for transformers by `adapt.fsdp.mark_for_generation` (on the module whose `generate` runs)."""
    from transformers.distributed.fsdp import is_fsdp_managed_module

    return any(is_fsdp_managed_module(module) for module in model.modules())


class CausalLMOptions(TaskOptions):
    block_size: int = Field(256, ge=2, description="tokens per packed block of plain-text data")
    passage_chars: int = Field(2000, ge=1, description="a plain-text file is cut at blank lines into passages of "
                                                       "at least this many characters (the unit of the train/validation split)")
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    chat_template: bool = Field(False, description="render prompts with the tokenizer's chat template")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1)
    prompt_template: str = Field("{prompt}", description="text around every prompt before rendering, with the "
                                                         "placeholder {prompt}, e.g. 'Translate English to German: {prompt}'")
    generation_metrics: bool | None = Field(None, description="evaluation of prompt/completion data also generates "
                                                              "each completion and scores BLEU, chrF, ROUGE and exact "
                                                              "match against the reference (default: on for pairs)")
    generation_max_examples: int | None = Field(256, ge=1, description="validation examples generated per evaluation "
                                                                       "during training (the first N; null: all); test "
                                                                       "and `adapt eval` generate for every example")
    source_lang: str | None = Field(None, description="parallel line files: language suffix of the prompt file (en in "
                                                      "train.en.gz); its twin with target_lang holds the completions")
    target_lang: str | None = Field(None, description="parallel line files: language suffix of the completion file; "
                                                      "also picks sacreBLEU's tokenizer for BLEU (zh, ja, ko)")

    @field_validator("prompt_template")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("the template needs the placeholder {prompt}, where each prompt goes")
        return value


# scores of the generated completions (`generation_scores`); the rest are the teacher-forced perplexity's
GENERATION_METRICS = ("bleu", "chrf", *ROUGE_TYPES, "exact_match", "gen_len")


def forward(model, batch: dict[str, torch.Tensor]):
    """The model's output on a batch's model inputs, without a KV cache: training and scoring never reuse one,
    and transformers reads packed documents from `position_ids` (block-diagonal causal mask) only when no
    cache is passed (`masking_utils._preprocess_mask_arguments`), while `config.use_cache` defaults to true."""
    return model(**model_inputs(batch), use_cache=False)


def trains_packed(model) -> bool:
    """Whether `loss` flattens a batch into one packed row for `model` (a transformers causal LM, maybe wrapped
    by peft or DDP): its attention runs packed sequences without a [tokens, tokens] mask (adapt's padding-free
    attention, flash-attention), and its forward takes `logits_to_keep`. With sdpa or eager attention a packed
    row would cost a [tokens, tokens] mask, so batches stay padded."""
    from accelerate.utils import extract_model_from_parallel

    from adapt.speed.padding_free import ATTENTION

    model = extract_model_from_parallel(model)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(model, "config", None)
    return (getattr(config, "_attn_implementation", None) in (ATTENTION, "flash_attention_2", "flash_attention_3")
            and "logits_to_keep" in inspect.signature(model.forward).parameters)


def packed_targets_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`CausalLM.loss` on a packed row: the batch's rows (right-padded, or full blocks of documents with
    `position_ids`) joined into one row of real tokens with position_ids restarting per row (or keeping the
    blocks' own), as `DataCollatorWithFlattening` packs; logits are computed only where a target is scored
    (transformers' `logits_to_keep` with the packed positions), so no [batch, length, vocabulary] tensor and no
    logits of prompt or pad tokens exist. The targets are those of the padded batch: labels[b, t + 1] scored
    from position (b, t) within each row. Returns (summed cross-entropy in fp32, target count)."""
    input_ids, labels = batch["input_ids"], batch["labels"]
    mask = batch.get("attention_mask")
    real = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
    positions = batch.get("position_ids")
    positions = (real.long().cumsum(1) - 1) if positions is None else positions.expand_as(input_ids)
    rows, columns = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    offsets = real.sum(1).cumsum(0) - real.sum(1)  # each row's first position in the packed row
    logits = model(input_ids=input_ids[real][None], position_ids=positions[real][None], use_cache=False,
                   logits_to_keep=offsets[rows] + columns).logits[0]
    targets = labels[rows, columns + 1]
    return target_cross_entropy(logits, targets), targets.new_tensor(targets.numel())


def pack_blocks(token_lists: list[list[int]], ends_document: list[bool], eos_id: int,
                block_size: int) -> dict[str, list[list[int]] | list[int]]:
    """Concatenate the token lists (EOS after each one that ends a document) and cut the stream into blocks of
    `block_size`, dropping the ragged tail. Consecutive lists join into one document until one ends it
    (the passages of a plain-text file; every row of a table is a document of its own).

    Blocks are document-masked, as transformers' `DataCollatorWithFlattening` packs sequences into one row:
    `position_ids` restart at 0 at every document start inside a block, so that, fed without an
    `attention_mask`, transformers builds a block-diagonal causal mask from the restarts
    (`masking_utils.find_packed_sequence_indices`) and adapt's padding-free path derives `cu_seq_lens` from
    them; no token attends to another document. The piece at a block's start that continues a document from
    the previous block also gets positions 0, 1, ...: attention cannot reach the previous block, so to the
    model that piece is a document that starts there; with rotary positions (Llama, Qwen2, ...) only
    relative positions count, so any offset would give the same result, and with absolute position embeddings
    (GPT-2) positions stay below `block_size` (<= the model's maximum) rather than growing with the document.

    Labels are the input ids except the first token of each document that starts inside a block (not at
    index 0), which is -100: it would be predicted from the previous document's last token (its EOS), as
    `DataCollatorWithFlattening` masks the first label of each packed sequence. The EOS that ends a document
    stays a target (predicted from that document's own tokens). A block's first token is never a target
    anyway (the loss shifts labels by one).

    Returns columns for `Dataset.from_dict`, one row per block: `input_ids`, `position_ids`, `labels`
    ([blocks][block_size] each) and `example`, the row of `token_lists` the block's first token came from.
    Example: documents [1 2 3] [4 5] (ending), block_size 4, eos 0 -> stream 1 2 3 0 4 5 0 -> one block
    input_ids [1 2 3 0], position_ids [0 1 2 3], labels [1 2 3 0]; the tail "4 5 0" is dropped.
    """
    pieces = [list(ids) + ([eos_id] if ends else []) for ids, ends in zip(token_lists, ends_document)]
    lengths = np.array([len(piece) for piece in pieces], dtype=np.int64)
    stream = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64, count=int(lengths.sum()))
    owner = np.repeat(np.arange(len(pieces)), lengths)
    # a document starts at the stream's start and right after every EOS that ends one
    document_start = np.zeros(len(stream) + 1, dtype=bool)
    document_start[0] = True
    document_start[np.cumsum(lengths)[np.asarray(ends_document, dtype=bool)]] = True
    blocks = len(stream) // block_size
    used = blocks * block_size
    input_ids = stream[:used].reshape(blocks, block_size)
    starts = document_start[:used].reshape(blocks, block_size)
    index = np.broadcast_to(np.arange(block_size), (blocks, block_size))
    restarts = starts.copy()
    restarts[:, 0] = True  # a continued piece restarts too (see above)
    position_ids = index - np.maximum.accumulate(np.where(restarts, index, 0), axis=1)
    labels = np.where(starts & (index > 0), -100, input_ids)
    return {"input_ids": input_ids.tolist(), "position_ids": position_ids.tolist(), "labels": labels.tolist(),
            "example": owner[:used:block_size].tolist()}


class CausalLM(Task):
    name = "clm"
    Options = CausalLMOptions
    default_metric = "perplexity"
    # generation metrics need prompt/completion data (checked in `setup`)
    metric_names = ("perplexity", "nll", "loss", "tokens", *GENERATION_METRICS)
    greater_is_better = False
    pipeline_tag = "text-generation"
    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"

    options: CausalLMOptions

    def __init__(self, recipe):
        super().__init__(recipe)
        # perplexity (the default) falls as the model improves; BLEU, chrF, ROUGE and exact match rise
        if recipe.train.metric_for_best in GENERATION_METRICS:
            self.greater_is_better = True

    # ---- data -----------------------------------------------------------------------------------
    def read_file(self, path: Path) -> Dataset:
        """Tables hold one document (or prompt/completion pair) per row. A plain-text file is one document
        cut into passages, so a carved validation split takes whole passages and no text is in both splits.
        With task_options.source_lang/target_lang, plain line files are a parallel corpus instead: line i of
        train.en.gz is the prompt and line i of train.de.gz its completion (`data.read_parallel_lines`)."""
        if not data.is_plain_text_file(str(path)):
            return Task.read_file(self, path)  # a table, read with data.delimiter / data.header_names
        if self.options.source_lang or self.options.target_lang:
            o = self.options
            return data.read_parallel_lines(path, o.source_lang, o.target_lang, o.prompt_column, o.completion_column)
        text = data.read_text(path).replace("\r\n", "\n")
        if not text.strip():
            raise AdaptError(f"{path}: the file has no text; give a plain-text file to train on")
        passages = split_passages(text, self.options.passage_chars)
        carved = not self.recipe.data.validation and str(path) == str(Path(self.recipe.data.train or ""))
        if carved and len(passages) < 2:
            raise AdaptError(
                f"{path}: the text ({len(text):,} characters) is a single passage, and the validation split is "
                f"carved from whole passages (cut at blank lines, or at line ends in a file without blank lines, "
                f"once they reach task_options.passage_chars={self.options.passage_chars}); lower "
                "task_options.passage_chars or give --validation")
        # only the file's end is a document boundary; passages of one file join without EOS
        return Dataset.from_dict({"text": passages, "ends_document": [False] * (len(passages) - 1) + [True]})

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        o = self.options
        plain = data.is_plain_text_file(source)
        parallel = plain and bool(o.source_lang or o.target_lang)  # as `read_file` reads such files
        if plain and not parallel:
            return ds
        if o.prompt_column in ds.column_names and o.completion_column in ds.column_names:
            ds = ds.select_columns([o.prompt_column, o.completion_column])
            for column in (o.prompt_column, o.completion_column):
                for row, value in enumerate(ds[column]):
                    if not isinstance(value, str) or not value.strip():
                        what = ("null" if value is None else "empty" if isinstance(value, str)
                                else f"not text ({value!r})")
                        if parallel:
                            file = source if column == o.prompt_column else f"the {o.target_lang} twin of {source}"
                            raise AdaptError(f"{file}: line {row + 1} is {what}; every line pair of a parallel "
                                             "corpus needs text on both sides (fix or remove that line in both files)")
                        raise AdaptError(f"{source}: {data.row_location(source, row)}: '{column}' is {what}; every "
                                         "prompt/completion pair needs text in both (fix or remove that line)")
            renames = {o.prompt_column: "prompt", o.completion_column: "completion"}
            return ds.rename_columns({k: v for k, v in renames.items() if k != v})
        text = self.recipe.data.columns.text
        if text not in ds.column_names:
            raise AdaptError(
                f"{source}: no column '{text}' for plain text, nor '{o.prompt_column}' and '{o.completion_column}' "
                f"for prompt/completion pairs (columns: {', '.join(ds.column_names)}); set data.columns.text or "
                "task_options.prompt_column / task_options.completion_column")
        ds = data.document_column(ds, text, source)  # blank rows would only add EOS tokens
        return ds.add_column("ends_document", [True] * len(ds))

    def setup(self, splits: dict[str, Dataset]) -> None:
        kinds = {name: "prompt/completion" if "prompt" in ds.column_names else "plain text" for name, ds in splits.items()}
        if len(set(kinds.values())) > 1:
            raise AdaptError(f"the splits mix data kinds ({', '.join(f'{k}: {v}' for k, v in kinds.items())}); "
                             "give every split as plain text or every split as prompt/completion pairs")
        self.check_generation(splits["validation"])

    # ---- generation metrics ---------------------------------------------------------------------
    # the normalized columns that hold something to generate for (subclasses: their own layout, e.g. chat)
    generation_columns = ("prompt", "completion")

    def generation_enabled(self, raw: Dataset) -> bool:
        """Whether evaluation of `raw` generates and scores completions: task_options.generation_metrics, by
        default on whenever the data has prompt/completion pairs (`generation_columns`; plain text has none)."""
        return (self.options.generation_metrics is not False
                and all(column in raw.column_names for column in self.generation_columns))

    def references(self, raw: Dataset) -> list[str]:
        """The reference completion of each raw example, which the generated one is scored against."""
        return list(raw["completion"])

    def check_generation(self, validation: Dataset) -> None:
        """Before any training: generation options and metric_for_best must fit the data.

        Raises:
            AdaptError: generation_metrics true on plain text, or train.metric_for_best naming a generation
                metric while nothing is generated."""
        enabled = self.generation_enabled(validation)
        self.generates = enabled  # evaluation batches are sized for generation (adapt.train.predict)
        if self.options.generation_metrics and not enabled:
            raise AdaptError("task_options.generation_metrics is true but the data is plain text, with no "
                             "prompt/completion pairs to generate for; give pairs or set it to false")
        best = self.recipe.train.metric_for_best
        if best in GENERATION_METRICS and not enabled:
            why = ("task_options.generation_metrics is false" if self.options.generation_metrics is False
                   else "the data is plain text, with no prompt/completion pairs to generate for")
            raise AdaptError(f"train.metric_for_best '{best}' scores generated completions, but {why}; use "
                             "perplexity or give prompt/completion pairs with generation_metrics on")

    def prompt_token_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of rendered prompts: a chat template writes its own special tokens; plain prompts get the
        tokenizer's usual ones (BOS)."""
        return self.tokenizer(prompts, add_special_tokens=not self.options.chat_template)["input_ids"]

    def generation_count(self, examples: int, role: str) -> int:
        """How many of a split's first examples evaluation generates for: the validation split during training
        its first task_options.generation_max_examples; other roles (test, `adapt eval`) all."""
        cap = self.options.generation_max_examples if role == "validation" else None
        return min(examples, cap) if cap else examples

    def add_generation_prompts(self, features: Dataset, prompt_ids: list[list[int]]) -> Dataset:
        """`features` plus `prompt_ids`: the token ids of example i's prompt to generate from (`prompt_ids[i]`,
        its last train.max_length tokens) on the first feature row of each example i < len(prompt_ids)
        (`generation_count`), [] elsewhere."""
        max_length = self.recipe.train.max_length
        column, seen = [], set()
        for example in features["example"]:
            first = example not in seen
            seen.add(example)
            column.append(list(prompt_ids[example])[-max_length:] if first and example < len(prompt_ids) else [])
        self.generates = True
        return features.add_column("prompt_ids", column)

    def generation_scores(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        """Scores of the generated completions against their references, over the examples that were generated
        (`generated_examples`): sacreBLEU corpus BLEU (tokenizer from task_options.target_lang, else 13a for
        text that is not Chinese/Japanese/Korean) and chrF, ROUGE-1/2/L/Lsum F-measure (0..1, rouge_score with
        stemming, sentences split for Lsum), exact match (0..1, after stripping whitespace), and `gen_len`, the
        mean number of generated tokens (EOS included). Empty when nothing was generated."""
        done = [(p["generated_text"], ref, p["gen_len"]) for p, ref in zip(predictions, self.references(raw))
                if "generated_text" in p]
        if not done:
            return {}
        hypotheses = [h.strip() for h, _, _ in done]
        golds = [r.strip() for _, r, _ in done]
        scores = translation_scores(hypotheses, [[r] for r in golds], self.options.target_lang)
        scores.update(max_reference_rouge(hypotheses, [[r] for r in golds]))
        scores["exact_match"] = exact_match_score(hypotheses, golds)
        scores["gen_len"] = float(np.mean([n for _, _, n in done]))
        scores["generated_examples"] = len(done)
        return scores

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        """Prompts for `adapt predict`: plain lines as they are; JSON Lines (as the task's data files) give
        their prompt column (task_options.prompt_column, else data.columns.text)."""
        columns = list(dict.fromkeys([self.options.prompt_column, self.recipe.data.columns.text]))
        prompts = [str(predict_input(text, columns, number, "name the prompt column with --set "
                                     "task_options.prompt_column=KEY")) for number, text in enumerate(texts, 1)]
        return Dataset.from_dict({"prompt": prompts})

    # ---- model ------------------------------------------------------------------------------------
    def load_tokenizer(self, path: str):
        tokenizer = super().load_tokenizer(path)
        if tokenizer.eos_token_id is None:
            raise AdaptError(f"the tokenizer of {path} has no EOS token; a causal LM here needs one to end "
                             "documents and completions (set one in its tokenizer_config.json)")
        ensure_pad_token(tokenizer)  # GPT-2 style tokenizers: batching and pipelines need a pad token
        return tokenizer

    def build_model(self, path: str):
        model = super().build_model(path)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        # the saved generation_config carries the recipe's decoding settings to pipelines and `adapt predict`;
        # a checkpoint's list of EOS ids (Llama-3, Qwen2.5: end of text and end of turn) is kept
        ids = model.generation_config.eos_token_id
        ids = list(ids) if isinstance(ids, (list, tuple)) else [] if ids is None else [ids]
        if self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        apply_generation_settings(model, {"pad_token_id": self.tokenizer.pad_token_id,
                                          "eos_token_id": ids[0] if len(ids) == 1 else ids,
                                          **self.generation_kwargs()}, self.recipe.model)
        return model

    def stop_token_ids(self, model) -> int | list[int]:
        """The EOS id(s) generation stops at: the model's generation config (a list for chat checkpoints),
        else the tokenizer's EOS."""
        config = getattr(model, "generation_config", None)
        ids = getattr(config, "eos_token_id", None)
        return ids if ids is not None else self.tokenizer.eos_token_id

    def generation_kwargs(self, max_new_tokens: int | None = None, temperature: float | None = None,
                          top_p: float | None = None) -> dict[str, Any]:
        """`model.generate` decoding settings: task_options.max_new_tokens/temperature/top_p, each replaced by the
        argument given (`adapt serve`'s request values); temperature 0 is greedy decoding (no top_p)."""
        o = self.options
        max_new_tokens = o.max_new_tokens if max_new_tokens is None else max_new_tokens
        temperature = o.temperature if temperature is None else temperature
        if temperature == 0:
            return {"max_new_tokens": max_new_tokens, "do_sample": False}
        return {"max_new_tokens": max_new_tokens, "do_sample": True, "temperature": temperature,
                "top_p": o.top_p if top_p is None else top_p}

    # ---- features -------------------------------------------------------------------------------
    def featurize(self, raw: Dataset, role: str) -> Dataset:
        if "text" in raw.column_names:
            return self.featurize_text(raw, role)
        return self.featurize_pairs(raw, role)

    def featurize_text(self, raw: Dataset, role: str) -> Dataset:
        """Document-masked blocks of `block_size` tokens packed from the text (`pack_blocks`: `position_ids`
        restart per document, the first token of a document inside a block is no target, and no
        `attention_mask`, so that transformers masks attention per document from the position ids). The ragged
        tail of the token stream that fills no whole block is not used, and its size is kept on the last block
        (`tokens_dropped`, reported by `score` and in a note on stderr)."""
        block_size = self.options.block_size
        ends = list(raw["ends_document"])
        token_lists = self.tokenizer(list(raw["text"]), add_special_tokens=False)["input_ids"]
        columns = pack_blocks(token_lists, ends, self.tokenizer.eos_token_id, block_size)
        blocks = len(columns["input_ids"])
        total = sum(len(ids) for ids in token_lists) + sum(ends)
        if not blocks:
            raise AdaptError(f"the {role} split has {total} tokens, less than one block of task_options.block_size="
                             f"{block_size}; give more text or lower task_options.block_size")
        dropped = total - blocks * block_size
        if dropped:
            print(f"note: the {role} split's last {dropped} of {total:,} tokens fill no whole block of "
                  f"task_options.block_size={block_size} and are not used", file=sys.stderr)
        return Dataset.from_dict({**columns, "length": [block_size] * blocks,
                                  "tokens_dropped": [0] * (blocks - 1) + [dropped]})

    def featurize_key(self) -> list[str]:
        # the features' layout: blocks of earlier adapt versions (attending across documents) are not reused
        return [*super().featurize_key(), "blocks=document-masked"]

    def render_prompt(self, prompt: str) -> str:
        """The prompt as the model reads it: put into task_options.prompt_template, then, with
        task_options.chat_template, rendered as a user turn with the generation prompt."""
        prompt = self.options.prompt_template.replace("{prompt}", prompt)
        if not self.options.chat_template:
            return prompt
        if not self.tokenizer.chat_template:
            raise AdaptError("task_options.chat_template is true but the tokenizer has no chat template; "
                             "set it to false or use an instruct model's tokenizer")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def featurize_pairs(self, raw: Dataset, role: str = "train") -> Dataset:
        """Prompt tokens then completion tokens then EOS; only the completion and EOS are targets. Training
        pairs are cut to train.max_length from the right; prompts alone (generation) keep their last tokens.
        Each row is one example with its own `attention_mask`; with the speed layer's padding-free training a
        batch is flattened into one row of several examples (position ids restarting per example) by
        `adapt.speed`, which leaves these labels as they are: each example's first label is a prompt token's
        -100, so no example's first token is predicted from the previous example (the separator label that
        `DataCollatorWithFlattening` writes is already there). Evaluation roles (not "train"/"predict") with
        the generation metrics on also get the prompts' ids to generate from (`add_generation_prompts`)."""
        max_length = self.recipe.train.max_length
        has_completion = "completion" in raw.column_names
        prompts = self.prompt_token_ids([self.render_prompt(p) for p in raw["prompt"]])
        rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "length": [], "example": []}
        if has_completion:
            rows["labels"] = []
            completions = self.tokenizer(list(raw["completion"]), add_special_tokens=False)["input_ids"]
        for i, prompt in enumerate(prompts):
            if has_completion:
                target = list(completions[i]) + [self.tokenizer.eos_token_id]
                ids = (list(prompt) + target)[:max_length]
                rows["labels"].append(([-100] * len(prompt) + target)[:max_length])
            else:
                ids = list(prompt)[-max_length:]
            rows["input_ids"].append(ids)
            rows["attention_mask"].append([1] * len(ids))
            rows["length"].append(len(ids))
            rows["example"].append(i)
        features = Dataset.from_dict(rows)
        if has_completion and role != "train" and self.generation_enabled(raw):
            features = self.add_generation_prompts(features, prompts[:self.generation_count(len(prompts), role)])
        return features

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        """Training/scoring rows padded on the right; prompts to continue padded on the left (so every row's
        last token is its prompt's last token). Evaluation rows with `prompt_ids` (`add_generation_prompts`)
        also give `prompt_input_ids`/`prompt_attention_mask` [generated rows, prompt width] (left-padded) and
        `generate_rows`, the batch rows they belong to."""
        if "labels" not in rows:
            return left_pad(rows["input_ids"], self.tokenizer.pad_token_id)
        batch = pad_batch(rows, self.tokenizer.pad_token_id, skip=("length", "example", "tokens_dropped", "prompt_ids"))
        if "prompt_ids" in rows:  # a split that generates: `generate_rows` says which rows of this batch (maybe none)
            generate = [i for i, ids in enumerate(rows["prompt_ids"]) if ids]
            batch["generate_rows"] = torch.tensor(generate, dtype=torch.long)
            if generate:
                prompts = left_pad([rows["prompt_ids"][i] for i in generate], self.tokenizer.pad_token_id)
                batch.update(prompt_input_ids=prompts["input_ids"], prompt_attention_mask=prompts["attention_mask"])
        return batch

    # ---- loss and evaluation --------------------------------------------------------------------------
    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed next-token cross-entropy, targets): logits at position i score labels[i + 1]; on a packed row
        where the model's attention runs one (`trains_packed`, `packed_targets_loss`)."""
        if trains_packed(model):
            return packed_targets_loss(model, batch)
        logits = forward(model, batch).logits
        return summed_cross_entropy(logits[:, :-1], batch["labels"][:, 1:])

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Prompts only: the generated ids. Labelled rows: summed NLL and target count per row (teacher-forced),
        and for the rows with a prompt to generate from (`generate_rows`) also `generated` [batch, new tokens]
        (pad ids on other rows), `gen_len` (tokens up to and including the first EOS) and `has_generation`."""
        from accelerate.utils import extract_model_from_parallel

        # DDP/DataParallel wrappers have neither `generate` nor the checkpoint's `generation_config` (stop ids)
        model = extract_model_from_parallel(model)
        if "labels" not in batch:
            return {"generated": self.generate(model, batch)}
        targets = batch["labels"][:, 1:]
        scored = targets != -100  # only these rows of the logits are upcast, as in `summed_cross_entropy`
        per_target = F.cross_entropy(forward(model, batch).logits[:, :-1][scored].float(), targets[scored],
                                     reduction="none")
        nll = per_target.new_zeros(targets.shape[0]).index_add_(0, scored.nonzero()[:, 0], per_target)
        out = {"nll": nll, "tokens": scored.sum(-1)}
        rows = batch.get("generate_rows")
        if rows is not None and not len(rows) and synced_generation(model):
            # a sharded model: every process must run as many generate() calls (each token's forward gathers
            # weights from all), so one with nothing to generate in this batch decodes a 1-token prompt unused
            self.generate(model, {"input_ids": batch["input_ids"][:1, :1], "attention_mask": batch["attention_mask"][:1, :1]})
        if rows is not None and len(rows):
            new = self.generate(model, {"input_ids": batch["prompt_input_ids"],
                                        "attention_mask": batch["prompt_attention_mask"]})
            lengths, _ = self.generated_lengths(model, new)
            size = nll.shape[0]
            generated = new.new_full((size, new.shape[1]), self.tokenizer.pad_token_id)
            generated[rows] = new
            out["generated"] = generated
            out["gen_len"] = lengths.new_zeros(size).index_copy(0, rows, lengths)
            out["has_generation"] = torch.zeros(size, dtype=torch.bool, device=nll.device).index_fill(0, rows, True)
        return out

    def generate(self, model, batch: dict[str, torch.Tensor], settings: dict[str, Any] | None = None,
                 streamer=None) -> torch.Tensor:
        """New token ids [rows, new tokens] per row of left-padded prompts (`input_ids`, `attention_mask`
        [rows, width]; padded with the pad id after a row's stop token), decoded with a KV cache and `settings`
        (default: the recipe's, `generation_kwargs`: greedy unless task_options.temperature > 0), stopping at
        `stop_token_ids`. `model` is the bare model (not a DDP wrapper); `streamer` is handed to
        `model.generate` (a transformers streamer, one row only)."""
        prompt_width = batch["input_ids"].shape[1]
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=True,
                             pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_token_ids(model),
                             streamer=streamer, **(settings or self.generation_kwargs()))
        return out[:, prompt_width:]

    def generated_lengths(self, model, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens per row of `new` [rows, new tokens] up to and including its first stop token (all of them
        when it has none), whether the row ended at a stop token) [rows] each: the generated completion
        without the padding `generate` writes after it."""
        stops = self.stop_token_ids(model)
        stops = list(stops) if isinstance(stops, (list, tuple)) else [stops]
        is_stop = torch.isin(new, torch.tensor(stops, device=new.device))
        ended = is_stop.any(-1)
        return torch.where(ended, is_stop.int().argmax(-1) + 1, new.shape[1]), ended

    def postprocess(self, outputs: list[dict[str, Any]], features: Dataset, raw: Dataset) -> list[dict[str, Any]]:
        if outputs and "nll" not in outputs[0]:  # prompts only (`adapt predict`)
            texts = self.tokenizer.batch_decode([o["generated"] for o in outputs], skip_special_tokens=True)
            return [{"generated_text": t} for t in texts]
        # blocks may span rows of the raw data: each block's NLL counts for the row where it starts
        per_row = [{"nll": 0.0, "tokens": 0} for _ in range(len(raw))]
        for row, out in zip(list(features["example"]), outputs):
            per_row[row]["nll"] += float(out["nll"])
            per_row[row]["tokens"] += int(out["tokens"])
            if out.get("has_generation", False):
                per_row[row]["generated_text"] = self.tokenizer.decode(out["generated"], skip_special_tokens=True)
                per_row[row]["gen_len"] = int(out["gen_len"])
        if "tokens_dropped" in features.column_names:  # packed text: the unused ragged tail, on the last row
            per_row[-1]["tokens_dropped"] = sum(features["tokens_dropped"])
        return per_row

    def score(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        """Token-weighted perplexity per token of the model's own tokenizer (`tokens` scored; not per word or
        character, so it compares only between models sharing a tokenizer); packed plain text also reports
        `tokens_dropped`, the ragged tail that filled no whole block and was not scored. Examples with a
        generated completion add the generation metrics (`generation_scores`)."""
        scores = perplexity_from_nll(sum(p["nll"] for p in predictions), sum(p["tokens"] for p in predictions))
        scores = {**scores, "loss": scores["nll"], "perplexity_unit": "model token"}
        if any("tokens_dropped" in p for p in predictions):
            scores["tokens_dropped"] = sum(p.get("tokens_dropped", 0) for p in predictions)
        if any("generated_text" in p for p in predictions):
            scores.update(self.generation_scores(predictions, raw))
        return scores

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        rows = []
        for row, p in zip(raw.to_list(), predictions):
            row.pop("ends_document", None)
            ppl = perplexity_from_nll(p["nll"], p["tokens"])["perplexity"] if p["tokens"] else None
            rows.append({**row, **p, "perplexity": ppl})
        return rows


def left_pad(id_lists: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` [rows, longest row] with the padding on the left, as decoder-only
    generation needs (each row's last position is its last real token)."""
    width = max(len(ids) for ids in id_lists)
    return {"input_ids": torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in id_lists]),
            "attention_mask": torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in id_lists])}
