"""The peer system for `make bench`: plain `transformers.Trainer` fine-tuning the embedded MiniLM on the same
SST-2 examples with adapt's sentiment recipe, in one of four standard configurations; prints one JSON line."""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import psutil

# Each configuration adds one standard Trainer speed-up to the previous one.
CONFIGS = {
    "padded": {"pad_to_max": True, "group_by_length": False, "bf16": False},  # run_glue.py default
    "dynamic": {"pad_to_max": False, "group_by_length": False, "bf16": False},  # DataCollatorWithPadding
    "grouped": {"pad_to_max": False, "group_by_length": True, "bf16": False},
    "bf16": {"pad_to_max": False, "group_by_length": True, "bf16": True},
}
MAX_LENGTH = 128
EVAL_BATCH_SIZE = 256  # adapt's sentiment recipe evaluates in batches of 256 too


def read_sst2(path: Path):
    """A GLUE SST-2 TSV as a Dataset. GLUE TSVs are unquoted, so quotes are literal (as adapt reads them)."""
    import pandas as pd
    from datasets import Dataset

    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, dtype={"sentence": str})
    return Dataset.from_pandas(frame[["sentence", "label"]], preserve_index=False)


def training_examples(data_dir: Path, n_examples: int, seed: int):
    """The same selection as adapt's `--max-train-examples N --seed S`: a seeded shuffle, then the first N."""
    train = read_sst2(data_dir / "train.tsv")
    if n_examples < len(train):
        train = train.shuffle(seed=seed).select(range(n_examples))
    return train


def recipe_warmup_ratio() -> float:
    """Warmup as in adapt's sentiment recipe, so both systems follow the same learning-rate schedule."""
    from adapt.recipe import resolve_recipe

    return resolve_recipe("sentiment").train.warmup_ratio


def run(data_dir: Path, model: str, config_name: str, n_examples: int, seed: int, batch_size: int, lr: float,
        epochs: float, attn_implementation: str | None = None) -> dict:
    """One Trainer fine-tune; `attn_implementation` ("sdpa", "flash_attention_2", ...) as transformers'
    `from_pretrained` takes it, None for transformers' default."""
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, default_data_collator, set_seed)

    from adapt.assets import resolve_model_path

    config = CONFIGS[config_name]
    model_path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train = training_examples(data_dir, n_examples, seed)
    dev = read_sst2(data_dir / "dev.tsv")

    def tokenize(batch):
        padding = "max_length" if config["pad_to_max"] else False
        return tokenizer(batch["sentence"], padding=padding, truncation=True, max_length=MAX_LENGTH)

    train = train.map(tokenize, batched=True, remove_columns=["sentence"]).rename_column("label", "labels")
    dev = dev.map(tokenize, batched=True, remove_columns=["sentence"]).rename_column("label", "labels")
    real_tokens = int(sum(sum(mask) for mask in train["attention_mask"]))

    set_seed(seed)  # the classifier head is initialised from this seed, as adapt does before building the model
    classifier = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=2, use_safetensors=True,
        **({"attn_implementation": attn_implementation} if attn_implementation else {}))

    steps = math.ceil(epochs * math.ceil(len(train) / batch_size))
    use_cpu = not torch.cuda.is_available()
    # transformers 5 replaced group_by_length=True with train_sampling_strategy="group_by_length"
    sampling = {"train_sampling_strategy": "group_by_length" if config["group_by_length"] else "random"}
    if "train_sampling_strategy" not in TrainingArguments.__dataclass_fields__:
        sampling = {"group_by_length": config["group_by_length"]}
    with tempfile.TemporaryDirectory(prefix="trainer-peer-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=batch_size, per_device_eval_batch_size=EVAL_BATCH_SIZE,
            learning_rate=lr, num_train_epochs=epochs, weight_decay=0.01, seed=seed,
            # an integer step count: adapt rounds ratio*steps down, Trainer rounds a float ratio up
            warmup_steps=int(recipe_warmup_ratio() * steps), lr_scheduler_type="linear", max_grad_norm=1.0,
            bf16=config["bf16"], use_cpu=use_cpu, dataloader_num_workers=0, eval_strategy="no",
            save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True, **sampling,
        )

        def accuracy(prediction):
            return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

        collator = default_data_collator if config["pad_to_max"] else DataCollatorWithPadding(tokenizer)
        trainer = Trainer(model=classifier, args=args, train_dataset=train, eval_dataset=dev, data_collator=collator,
                          processing_class=tokenizer, compute_metrics=accuracy)
        train_metrics = trainer.train().metrics
        eval_metrics = trainer.evaluate()
    return {
        "system": f"trainer-{config_name}", "config": config_name, "model": model, "examples": len(train), "seed": seed,
        "train_steps": steps, "train_runtime": train_metrics["train_runtime"],
        "train_samples_per_s": train_metrics["train_samples_per_second"],
        "train_tokens_per_s": real_tokens / train_metrics["train_runtime"],
        "dev_accuracy": eval_metrics["eval_accuracy"],
        "mixed_precision": "bf16" if config["bf16"] else "no", "device": str(args.device),
        "attn_implementation": classifier.config._attn_implementation,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--model", default="embedded:minilm", help="as adapt's --model: embedded:NAME, Hub id or folder")
    parser.add_argument("--config", choices=list(CONFIGS), default="bf16")
    parser.add_argument("--examples", type=int, default=2000, help="training examples (seeded sample)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--attn-implementation", default=None, help="sdpa, flash_attention_2, ... (default: transformers')")
    parser.add_argument("--out", type=Path, help="also write the JSON line to this file")
    args = parser.parse_args(argv)
    result = run(args.data, args.model, args.config, args.examples, args.seed, args.batch_size, args.lr, args.epochs,
                 args.attn_implementation)
    report(result, args.out)


def report(result: dict, out: Path | None) -> None:
    """Print a peer's result as one JSON line (and write it to `out`), with this process's wall time since its
    start and its peak RSS, as the benches read them."""
    result["wall_seconds"] = round(time.time() - psutil.Process().create_time(), 2)  # from process start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    line = json.dumps(result)
    if out:
        out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
