"""Shared test fixtures: a tiny random BERT checkpoint (built once per session) and small labelled files."""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path

import pytest

# 40 short reviews of clearly different lengths (so batches pad and length grouping matters), half each label.
POSITIVE = [
    "great film", "a wonderful and moving story", "loved it", "brilliant acting, sharp writing and a fine score",
    "funny", "a joy from start to finish", "beautifully shot", "the best movie of the year by far, go see it",
    "charming", "clever and warm", "an absolute delight for the whole family", "superb",
    "a triumph of style", "moving and honest", "i smiled all the way through this gentle comedy", "fresh",
    "excellent pacing", "a rare gem", "touching performances from the entire cast", "wonderful",
]
NEGATIVE = [
    "awful film", "a dull and tedious story", "hated it", "wooden acting, lazy writing and a forgettable score",
    "boring", "a chore from start to finish", "ugly to look at", "the worst movie of the year by far, skip it",
    "tiresome", "clumsy and cold", "an absolute mess that nobody should sit through", "dreadful",
    "a failure of style", "shallow and false", "i checked my watch all the way through this grim comedy", "stale",
    "sluggish pacing", "a total dud", "flat performances from the entire cast", "terrible",
]


def sentiment_rows() -> list[tuple[str, str]]:
    """(text, label) pairs, labels interleaved so any prefix has both classes."""
    return [pair for pos, neg in zip(POSITIVE, NEGATIVE) for pair in ((pos, "positive"), (neg, "negative"))]


def build_tiny_bert(folder: Path, **config_overrides) -> Path:
    """A randomly initialised 2-layer BERT encoder (hidden 32) saved as a standard safetensors checkpoint
    with the embedded MiniLM tokenizer; any Auto*ForX class loads it and adds its own head."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from adapt.assets import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded:minilm"))
    settings = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    settings.update(config_overrides)
    torch.manual_seed(0)
    model = BertModel(BertConfig(**settings))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


_SESSION_ADAPT_CACHE = os.environ.get("ADAPT_CACHE")


@functools.lru_cache(maxsize=1)
def smollm2_dir() -> str:
    """The embedded SmolLM2 as a local folder (its tokenizer: 49,152 tokens, a chat template), resolved once per
    session in the cache the session started with, not in a test's fresh ADAPT_CACHE (`adapt_cache`), where it
    would be dequantized from its GGUF again (~20 s a test)."""
    from adapt.assets import resolve_model_path

    with pytest.MonkeyPatch.context() as patch:
        if _SESSION_ADAPT_CACHE is None:
            patch.delenv("ADAPT_CACHE", raising=False)
        else:
            patch.setenv("ADAPT_CACHE", _SESSION_ADAPT_CACHE)
        return resolve_model_path("embedded:smollm2")


SMOLLM2_TEMPLATE = object()  # build_tiny_llama: keep the SmolLM2 tokenizer's own chat template


def build_tiny_llama(folder: Path, chat_template=SMOLLM2_TEMPLATE, **config_overrides) -> Path:
    """A randomly initialised (seed 0) 2-layer Llama (hidden 32, 2 heads, 1 key/value head, intermediate 64,
    256 positions) with the embedded SmolLM2 tokenizer (49,152 tokens; bos 1, eos = pad 2), saved as a
    safetensors checkpoint. `chat_template` replaces the tokenizer's (None removes it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    if chat_template is not SMOLLM2_TEMPLATE:
        tokenizer.chat_template = chat_template
    settings = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, max_position_embeddings=256, vocab_size=len(tokenizer),
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    settings.update(config_overrides)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    AutoModelForCausalLM.from_config(LlamaConfig(**settings)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_builder():
    """`build_tiny_bert(folder, **config_overrides)`, for tests that need a variant (e.g. no dropout)."""
    return build_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """Folder of a tiny random BERT (hidden 32, 2 layers, 2 heads, intermediate 64, MiniLM vocabulary)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def write_table(path: Path, rows: list[tuple], header: tuple[str, ...] = ("text", "label")) -> Path:
    """A CSV (quoted where needed) or an unquoted TSV, chosen by the file suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        if path.suffix == ".tsv":
            handle.write("\t".join(header) + "\n")
            handle.writelines("\t".join(map(str, row)) + "\n" for row in rows)
        else:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return path


@pytest.fixture
def sentiment_csv(tmp_path) -> Path:
    """40 labelled reviews (text,label with labels positive/negative) as a CSV file."""
    return write_table(tmp_path / "sentiment.csv", sentiment_rows())


@pytest.fixture(scope="session")
def sentiment_csv_shared(tmp_path_factory) -> Path:
    """The same file as `sentiment_csv`, written once per session, for session/module-scoped runs."""
    return write_table(tmp_path_factory.mktemp("sentiment") / "sentiment.csv", sentiment_rows())


@pytest.fixture
def adapt_cache(tmp_path, monkeypatch) -> Path:
    """Point adapt's cache (tokenized features) at a fresh folder for this test."""
    cache = tmp_path / "adapt_cache"
    monkeypatch.setenv("ADAPT_CACHE", str(cache))
    return cache


# Overrides for fast in-process runs of the `sentiment` recipe on the tiny model: no trackers, small
# batches, a handful of steps, evaluation and a checkpoint along the way.
TINY_RUN = (("tracking", []), ("train.batch_size", 8), ("train.max_steps", 6), ("train.eval_steps", 2),
            ("train.log_steps", 2), ("train.save_steps", 6), ("train.seed", 7), ("train.lr", 1e-3))


def run_tiny_finetune(model: Path, train: Path, output_dir: Path, cache: Path, overrides=(), **kwargs) -> dict:
    """`adapt.train.finetune` of the sentiment recipe on `model`/`train`, with the feature cache in `cache`."""
    from adapt.recipe import resolve_recipe
    from adapt.train import finetune

    pairs = [("model", str(model)), ("data.train", str(train)), ("output_dir", str(output_dir)), *TINY_RUN,
             *overrides]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPT_CACHE", str(cache))
        return finetune(resolve_recipe("sentiment", pairs), **kwargs)


@pytest.fixture(scope="session")
def tiny_run(tiny_bert, sentiment_csv_shared, tmp_path_factory) -> tuple[Path, dict]:
    """(output folder, returned metrics) of one short fine-tuning run of the tiny BERT, shared by the
    tests that inspect a finished run."""
    root = tmp_path_factory.mktemp("tiny_run")
    final = run_tiny_finetune(tiny_bert, sentiment_csv_shared, root / "run", root / "cache")
    return root / "run", final
