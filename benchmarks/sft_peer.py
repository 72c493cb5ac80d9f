"""The peer of `make bench`'s SFT workload: plain `transformers.Trainer` fine-tuning the embedded SmolLM2 on
prompt/completion pairs, padding-free with `DataCollatorWithFlattening` (each batch one row of real tokens,
`position_ids` restarting per example, the prompt tokens' labels -100), with the hyperparameters of adapt's
`clm-instruct` recipe; prints one JSON line.

    python benchmarks/sft_peer.py --train train.jsonl --validation validation.jsonl [--batch-size 8 ...]

Each JSONL line is one {"prompt": ..., "completion": ...} object (as adapt's `--data pairs.jsonl`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # launched by path (benchmarks/launch.py)
import trainer_peer  # noqa: E402

RECIPE = "clm-instruct"


def read_pairs(path: Path) -> list[dict[str, str]]:
    """The {"prompt", "completion"} objects of a JSONL file, in file order."""
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def featurize(tokenizer, pairs: list[dict[str, str]], max_length: int, chat_template: bool) -> dict[str, list]:
    """Token ids and labels of prompt/completion pairs, as adapt's `clm` task builds them
    (`CausalLM.featurize_pairs`) and as TRL's SFT prepares prompt/completion data: the prompt (rendered as a
    user turn of the tokenizer's chat template when `chat_template`, with the tokenizer's own special tokens
    otherwise), then the completion and EOS, cut to `max_length` tokens from the right; labels are -100 on
    the prompt (completion-only loss). Returns columns `input_ids` and `labels` ([pairs][tokens] each)."""
    if chat_template:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                               add_generation_prompt=True) for p in pairs]
    else:
        texts = [p["prompt"] for p in pairs]
    prompts = tokenizer(texts, add_special_tokens=not chat_template)["input_ids"]
    completions = tokenizer([p["completion"] for p in pairs], add_special_tokens=False)["input_ids"]
    columns: dict[str, list] = {"input_ids": [], "labels": []}
    for prompt, completion in zip(prompts, completions):
        target = list(completion) + [tokenizer.eos_token_id]
        columns["input_ids"].append((list(prompt) + target)[:max_length])
        columns["labels"].append(([-100] * len(prompt) + target)[:max_length])
    return columns


def precision_for_this_machine() -> str:
    """"bf16", "fp16" or "no": what adapt's `train.mixed_precision: auto` resolves to with the speed layer off
    (autocast where the hardware has native bf16: CUDA, or a CPU with AVX512-BF16/AMX; else fp32), so the peer
    autocasts exactly where adapt trains in bf16."""
    from adapt.recipe import resolve_recipe
    from adapt.speed import mixed_precision_mode

    return mixed_precision_mode(resolve_recipe(RECIPE, [("train.speed_layer", False)]).train)


def step_timer():
    """A TrainerCallback summing the time of the training steps only, as adapt's `train_seconds` does: from
    the start of the epoch's batch loop to the end of its last optimizer step (fetching and collating each
    batch, forward, backward, clipping, optimizer and scheduler step), without Trainer's set-up before the
    loop or its evaluation after it."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        seconds = 0.0
        _mark = None

        def on_epoch_begin(self, args, state, control, **kwargs):
            self._mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.seconds += now - self._mark
            self._mark = now

    return StepTimer()


def run(train_path: Path, validation_path: Path, model: str, batch_size: int, lr: float, epochs: float,
        max_length: int, seed: int, precision: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, Trainer,
                              TrainingArguments, set_seed)

    from adapt.assets import resolve_model_path
    from adapt.recipe import resolve_recipe

    recipe = resolve_recipe(RECIPE)
    model_path = resolve_model_path(model)  # the folder adapt loads: the same weights and tokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    chat_template = recipe.task_options["chat_template"]
    train = Dataset.from_dict(featurize(tokenizer, read_pairs(train_path), max_length, chat_template))
    validation = Dataset.from_dict(featurize(tokenizer, read_pairs(validation_path), max_length, chat_template))
    real_tokens = sum(len(ids) for ids in train["input_ids"])

    set_seed(seed)
    causal_lm = AutoModelForCausalLM.from_pretrained(model_path, use_safetensors=True, dtype=torch.float32)
    steps = math.ceil(epochs * math.ceil(len(train) / batch_size))
    timer = step_timer()
    with tempfile.TemporaryDirectory(prefix="sft-peer-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=recipe.train.eval_batch_size, learning_rate=lr, num_train_epochs=epochs,
            weight_decay=recipe.train.weight_decay, max_grad_norm=recipe.train.max_grad_norm, seed=seed,
            # an integer step count: adapt rounds ratio*steps down, Trainer rounds a float ratio up
            warmup_steps=int(recipe.train.warmup_ratio * steps), lr_scheduler_type="linear",
            bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0, eval_strategy="no", save_strategy="no", report_to="none",
            logging_strategy="no", disable_tqdm=True,
        )
        # padding-free: one row per batch, position_ids restart per example, labels -100 at each example's start
        collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
        trainer = Trainer(model=causal_lm, args=args, train_dataset=train, eval_dataset=validation,
                          data_collator=collator, processing_class=tokenizer, callbacks=[timer])
        train_metrics = trainer.train().metrics
        eval_metrics = trainer.evaluate()
    return {
        "system": "trainer-flattening", "model": model, "examples": len(train), "seed": seed, "train_steps": steps,
        "train_seconds": timer.seconds, "train_runtime": train_metrics["train_runtime"],
        "train_samples_per_s": len(train) * epochs / timer.seconds,
        "train_tokens_per_s": real_tokens * epochs / timer.seconds,
        "trainer_samples_per_second": train_metrics["train_samples_per_second"],
        "train_loss": train_metrics["train_loss"], "eval_loss": eval_metrics["eval_loss"],
        # Trainer's eval_loss is a mean over batches of per-batch token means: close to, not exactly, adapt's
        # token-weighted perplexity
        "validation_perplexity": math.exp(eval_metrics["eval_loss"]),
        "mixed_precision": precision, "device": str(args.device),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="JSONL of prompt/completion pairs to train on")
    parser.add_argument("--validation", type=Path, required=True, help="JSONL of pairs scored after training")
    parser.add_argument("--model", default="embedded:smollm2", help="as adapt's --model: embedded:NAME, Hub id or folder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=256, help="prompt + completion tokens, cut from the right")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "no"], default="auto",
                        help="autocast precision (auto: bf16 where the hardware has it natively, else fp32)")
    parser.add_argument("--out", type=Path, help="also write the JSON line to this file")
    args = parser.parse_args(argv)
    precision = precision_for_this_machine() if args.precision == "auto" else args.precision
    result = run(args.train, args.validation, args.model, args.batch_size, args.lr, args.epochs, args.max_length,
                 args.seed, precision)
    trainer_peer.report(result, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
