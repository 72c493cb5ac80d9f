"""Sequence-to-sequence generation (summarization, translation): featurize, train and score source/target pairs.

Models are T5/BART/Marian checkpoints, or an encoder-decoder warm-started from encoder checkpoints (BERT,
the embedded MiniLM). Evaluation decodes with beam search. With several references per example (SciTLDR
dev/test) ROUGE takes, per example, the best-matching reference (the SciTLDR paper's "max" protocol);
BLEU and chrF use every reference as a sacreBLEU reference stream."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset
from pydantic import Field

from adapt import assets, data
from adapt.errors import AdaptError
from adapt.metrics.generation import ROUGE_TYPES, max_reference_rouge, translation_scores
from adapt.tasks.base import (Task, TaskOptions, apply_generation_settings, model_load_error, predict_input,
                              summed_cross_entropy)

TRANSLATION_METRICS = ("bleu", "chrf")


class Seq2SeqOptions(TaskOptions):
    source_prefix: str = Field("", description="text put before every source, e.g. T5's 'summarize: '")
    decoder: str | None = Field(None, description="decoder checkpoint for a warm-started encoder-decoder "
                                                  "(when `model` is an encoder such as BERT); default: the same")
    max_target_length: int = Field(128, ge=1, description="target tokens kept for training")
    max_new_tokens: int | None = Field(None, ge=1, description="tokens to generate; default max_target_length")
    num_beams: int = Field(4, ge=1)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(0, ge=0)
    temperature: float = Field(0.0, ge=0, description="> 0 samples instead of beam search")
    top_p: float = Field(1.0, gt=0, le=1)
    metric_family: Literal["rouge", "bleu"] | None = Field(
        None, description="rouge (summarization) or bleu (translation); default from train.metric_for_best")
    source_lang: str | None = Field(None, description="parallel line files: language suffix of the source file")
    target_lang: str | None = Field(None, description="parallel line files: language suffix of the target file")
    src_lang: str | None = Field(None, description="multilingual tokenizers (mBART, NLLB, M2M100): source language "
                                                   "code, e.g. en_XX")
    tgt_lang: str | None = Field(None, description="multilingual tokenizers: target language code, e.g. de_DE; "
                                                   "generation starts with its token")


class Seq2Seq(Task):
    name = "seq2seq"
    Options = Seq2SeqOptions
    default_metric = "rougeL"
    metric_names = (*ROUGE_TYPES, "gen_len")  # translation (metric_family bleu): bleu, chrf, gen_len
    pipeline_tag = "text2text-generation"
    auto_class = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    generates = True

    options: Seq2SeqOptions

    def __init__(self, recipe):
        super().__init__(recipe)
        family = self.options.metric_family
        if family is None:
            family = "bleu" if recipe.train.metric_for_best in TRANSLATION_METRICS else "rouge"
        self.metric_family = family
        self.default_metric = "bleu" if family == "bleu" else "rougeL"
        self.metric_names = (*TRANSLATION_METRICS, "gen_len") if family == "bleu" else (*ROUGE_TYPES, "gen_len")
        self.pipeline_tag = "translation" if family == "bleu" else "summarization"

    # ---- data -----------------------------------------------------------------------------------
    def read_file(self, path: Path) -> Dataset:
        kind, _ = data.split_suffix(path)
        if kind in data.TABLE_SUFFIXES:
            return super().read_file(path)
        return self.read_parallel_lines(path)

    def read_parallel_lines(self, source_path: Path) -> Dataset:
        """Line i of the source file pairs with line i of the target file, whose name swaps the language
        suffix (train.en.gz -> train.de.gz); see `data.read_parallel_lines`."""
        cols = self.recipe.data.columns
        return data.read_parallel_lines(source_path, self.options.source_lang, self.options.target_lang,
                                        cols.text, cols.target)

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        """Canonical columns: `source` (text), `target` (the training target) and `references` (every
        reference, for scoring). List-valued sources (sentences) are joined with spaces; list-valued
        targets give several references, the first of which is trained on; `data.columns.references`
        names further reference columns (a test file with ref1, ref2, ... columns). A null or empty source
        or target is an error naming the file and line."""
        cols = self.recipe.data.columns
        data.require_columns(ds, [cols.text, cols.target, *cols.references], source)
        parallel = data.is_local(source) and data.split_suffix(Path(source))[0] not in data.TABLE_SUFFIXES

        def where(index: int) -> str:
            if parallel:  # line i of the source file pairs with line i of the target file
                return f"{source}: line {index + 1} (and that line of its target file)"
            return f"{source}: {data.row_location(source, index)}"

        out: dict[str, list] = {"source": [], "target": [], "references": []}
        reference_columns = [cols.target, *cols.references]
        for index, row in enumerate(ds.select_columns(list(dict.fromkeys([cols.text, *reference_columns])))):
            text = source_text(row[cols.text])
            if not text.strip():
                raise AdaptError(f"{where(index)}: '{cols.text}' is {'null' if row[cols.text] is None else 'empty'}; "
                                 "give every example a source text (or remove it)")
            references = [str(v) for column in reference_columns
                          for v in (row[column] if isinstance(row[column], list) else [row[column]])
                          if v is not None and str(v).strip()]
            if not references:
                raise AdaptError(f"{where(index)}: '{cols.target}' is null or empty; give every example a target text")
            out["source"].append(text)
            out["target"].append(references[0])
            out["references"].append(references)
        return Dataset.from_dict(out)

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        """Sources for `adapt predict`: plain lines as they are; JSON Lines (`--file test.jsonl`, as the task's
        data files) give their source column (data.columns.text; a list of sentences is joined)."""
        column = self.recipe.data.columns.text
        sources = []
        for number, text in enumerate(texts, 1):
            value = source_text(predict_input(text, [column], number,
                                              "name the source column with --set data.columns.text=KEY"))
            if not value.strip():
                raise AdaptError(f"input {number}: the source text is empty")
            sources.append(value)
        return Dataset.from_dict({"source": sources})

    # ---- model ------------------------------------------------------------------------------------
    def tokenizer_kwargs(self) -> dict[str, Any]:
        return {key: value for key, value in (("src_lang", self.options.src_lang), ("tgt_lang", self.options.tgt_lang))
                if value}

    def load_tokenizer(self, path: str):
        tokenizer = super().load_tokenizer(path)
        for key in ("src_lang", "tgt_lang"):
            code = getattr(self.options, key)
            if code and tokenizer.convert_tokens_to_ids(code) in (None, tokenizer.unk_token_id):
                raise AdaptError(f"task_options.{key}: '{code}' is no language code of the tokenizer of {path}; use "
                                 "one of its codes (e.g. en_XX, de_DE for mBART) or leave it unset")
            if code and getattr(tokenizer, key, code) != code:  # tokenizers that ignore the keyword
                setattr(tokenizer, key, code)
        return tokenizer

    def adapter_base_model(self, folder: Path, base: str):
        """Warm-started encoder-decoders rebuild their base from the encoder/decoder checkpoints (the
        cross-attention, new in fine-tuning, is saved with the adapter); others load `base` as usual."""
        if self.warm_started:
            return self.build_model(assets.resolve_model_path(base))
        return super().adapter_base_model(folder, base)

    @cached_property
    def model_config(self):
        from transformers import AutoConfig

        path = assets.resolve_model_path(self.recipe.model)
        try:
            return AutoConfig.from_pretrained(path, trust_remote_code=self.recipe.trust_remote_code)
        except (OSError, ValueError) as err:
            raise model_load_error(path, err) from None

    @property
    def warm_started(self) -> bool:
        """True when `model` is an encoder (BERT-like) that becomes both halves of an EncoderDecoderModel;
        adapt's saved encoder-decoders count too (their labels were built the same way)."""
        config = self.model_config
        return config.model_type == "encoder-decoder" or not getattr(config, "is_encoder_decoder", False)

    @cached_property
    def decoder_token_ids(self) -> dict[str, int]:
        """decoder_start / eos / pad ids: a warm-started pair uses the encoder tokenizer's [CLS] as start
        and [SEP] as end (as BERT saw them in pre-training); seq2seq checkpoints bring their own."""
        tok = self.tokenizer
        if self.warm_started:
            start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
            eos = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
            ids = {"decoder_start_token_id": start, "eos_token_id": eos, "pad_token_id": tok.pad_token_id}
        else:
            config = self.model_config
            ids = {"decoder_start_token_id": config.decoder_start_token_id, "eos_token_id": config.eos_token_id,
                   "pad_token_id": config.pad_token_id if config.pad_token_id is not None else tok.pad_token_id}
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise AdaptError(f"model '{self.recipe.model}': its tokenizer/config define no {', '.join(missing)}; "
                             "use a tokenizer with [CLS]/[SEP]/[PAD] (or BOS/EOS/PAD) tokens")
        return ids

    def build_model(self, path: str):
        if not self.warm_started:
            model = super().build_model(path)
        else:
            from transformers import EncoderDecoderModel

            decoder_path = assets.resolve_model_path(self.options.decoder) if self.options.decoder else path
            trust = self.recipe.trust_remote_code
            # the layers new to the pair (cross-attention, a decoder LM-head transform) start from the run's seed
            # on a private RNG, so an adapter folder rebuilds exactly the base it was trained on
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.recipe.train.seed)
                try:
                    model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                        path, decoder_path, encoder_use_safetensors=True, decoder_use_safetensors=True,
                        encoder_trust_remote_code=trust, decoder_trust_remote_code=trust)
                except (OSError, ValueError) as err:
                    raise model_load_error(path, err) from None
            # the decoder's LM head stays tied to its own input embeddings (BertLMHeadModel's default)
            ids = self.decoder_token_ids
            for key, value in ids.items():
                setattr(model.config, key, value)
            model.config.vocab_size = model.config.decoder.vocab_size
            model.generation_config.update(**ids, bos_token_id=ids["decoder_start_token_id"])
        # saved with the model, so plain `generate()` on the output folder decodes as evaluation did
        apply_generation_settings(model, self.generation_settings(), self.recipe.model)
        return model

    def generation_settings(self) -> dict[str, Any]:
        opts = self.options
        settings = {"max_new_tokens": opts.max_new_tokens or opts.max_target_length, "num_beams": opts.num_beams,
                    "length_penalty": opts.length_penalty, "no_repeat_ngram_size": opts.no_repeat_ngram_size,
                    "do_sample": opts.temperature > 0}
        if opts.temperature > 0:
            settings.update(temperature=opts.temperature, top_p=opts.top_p, num_beams=1)
        if opts.tgt_lang and self.tokenizer is not None:  # multilingual decoders start with the target language
            settings["forced_bos_token_id"] = self.tokenizer.convert_tokens_to_ids(opts.tgt_lang)
        return settings

    # ---- features ---------------------------------------------------------------------------------
    def featurize(self, raw: Dataset, role: str) -> Dataset:
        has_target = "target" in raw.column_names
        prefix = self.options.source_prefix
        start = self.decoder_token_ids["decoder_start_token_id"]

        def encode(batch):
            enc = self.tokenizer([prefix + s for s in batch["source"]], truncation=True,
                                 max_length=self.recipe.train.max_length)
            features = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
            features["length"] = [len(ids) for ids in enc["input_ids"]]
            if has_target:
                labels = self.tokenizer(text_target=batch["target"], truncation=True,
                                        max_length=self.options.max_target_length + 1)["input_ids"]
                # the shift in `loss` prepends the decoder start token, so a tokenizer-added one (BERT's
                # [CLS]) is dropped here rather than predicted twice
                labels = [ids[1:] if ids and ids[0] == start else ids for ids in labels]
                features["labels"] = [truncate_keeping_end(ids, self.options.max_target_length) for ids in labels]
                features["length"] = [n + len(ids) for n, ids in zip(features["length"], features["labels"])]
            return features

        return raw.map(encode, batched=True, remove_columns=raw.column_names, desc=f"tokenizing {role}")

    # ---- loss and evaluation --------------------------------------------------------------------------
    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers.models.encoder_decoder.modeling_encoder_decoder import shift_tokens_right

        ids = self.decoder_token_ids
        decoder_input_ids = shift_tokens_right(batch["labels"], ids["pad_token_id"], ids["decoder_start_token_id"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=decoder_input_ids).logits
        return summed_cross_entropy(logits, batch["labels"])

    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from accelerate.utils import extract_model_from_parallel

        generator = extract_model_from_parallel(model)
        tokens = generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    **self.decoder_token_ids, **self.generation_settings())
        return {"tokens": tokens}

    def postprocess(self, outputs: list[dict[str, Any]], features: Dataset, raw: Dataset) -> list[dict[str, Any]]:
        pad, eos = self.decoder_token_ids["pad_token_id"], self.decoder_token_ids["eos_token_id"]
        predictions = []
        for record in outputs:
            tokens = [int(t) for t in record["tokens"]]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=True)
            generated = tokens[1:]  # tokens[0] is the decoder start token
            if eos in generated:  # a batch's shorter outputs are padded after their end, by pad or by eos
                generated = generated[:generated.index(eos) + 1]
            length = sum(t != pad for t in generated)
            predictions.append({"generated_text": text.strip(), "generated_tokens": length})
        return predictions

    def score(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        hypotheses = [p["generated_text"] for p in predictions]
        references = raw["references"]
        if self.metric_family == "bleu":
            metrics = translation_scores(hypotheses, references, self.options.target_lang)
        else:
            metrics = max_reference_rouge(hypotheses, references)
        metrics["gen_len"] = float(np.mean([p["generated_tokens"] for p in predictions]))
        return metrics

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        return [{"source": row["source"], "references": row["references"], "prediction": p["generated_text"]}
                for row, p in zip(raw.to_list(), predictions)]


def source_text(value) -> str:
    """A source as one string: a list of sentences is joined with spaces; null is empty."""
    if value is None:
        return ""
    return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def truncate_keeping_end(ids: list[int], limit: int) -> list[int]:
    """At most `limit` tokens, keeping the final (end-of-sequence) token."""
    return ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:]
