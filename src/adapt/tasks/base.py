"""The protocol every task implements, and the shared pieces (source dispatch, splits, padding, loss) that
most tasks reuse. The training loop in `adapt.train` only talks to a task through this interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from datasets import Dataset
from pydantic import BaseModel, ConfigDict, ValidationError

from adapt import assets, data
from adapt.errors import AdaptError
from adapt.recipe import Recipe

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Task:
    """One task: how to read its data, build its model, batch it, score it. Subclasses override the
    `NotImplementedError` methods; the rest has sensible shared defaults."""

    name: ClassVar[str]
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    default_metric: ClassVar[str]
    # every scalar metric `score` reports (what train.metric_for_best may name; checked before a run)
    metric_names: ClassVar[tuple[str, ...]]
    greater_is_better: ClassVar[bool] = True
    pipeline_tag: ClassVar[str]
    auto_class: ClassVar[str]  # the transformers Auto class that loads this task's models
    # raw column used to split train/validation by group (e.g. SQuAD articles); None = by example
    group_column: ClassVar[str | None] = None
    # evaluation generates text token by token, where wide batches pay more than a capped forward saves
    generates: ClassVar[bool] = False
    # peft's task type for adapters of this task (decides which heads stay trainable and how an adapter reloads)
    peft_task_type: ClassVar[str | None] = None
    # training batches feed the model only token ids of the train features' input_ids (and special tokens), so
    # the speed layer may leave the other input-embedding rows out of the optimizer; False when the collate
    # writes other ids (masked-LM random replacement)
    inputs_from_features: ClassVar[bool] = True

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        try:
            self.options = self.Options.model_validate(recipe.task_options)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            what = "unknown key" if first["type"] == "extra_forbidden" else f"bad value ({first['msg']}) for"
            raise AdaptError(f"recipe task_options: {what} '{key}' for task '{self.name}'") from None
        self.tokenizer = None

    # ---- data -----------------------------------------------------------------------------------
    def read_source(self, ref: str, split: str) -> Dataset:
        """Raw examples in this task's canonical columns, from a file, embedded:NAME or a Hub id."""
        if assets.is_embedded(ref):
            ds = self.load_embedded(ref)
        elif data.is_local(ref):
            ds = self.read_file(Path(ref))
        else:
            ds = data.load_hub_split(ref, self.recipe.data.hub_config, split)
        ds = self.normalize(ds, ref)
        data.check_not_empty(ds, ref)
        # one validation path for finetune, eval and `data inspect`: no example without input text
        data.check_texts(ds, data.input_columns(ds, self.group_column), ref)
        return ds

    def read_file(self, path: Path) -> Dataset:
        return data.read_table(path, self.recipe.data.delimiter, self.recipe.data.header_names)

    def load_embedded(self, ref: str) -> Dataset:
        raise AdaptError(f"task '{self.name}' has no embedded dataset '{ref}'")

    def normalize(self, ds: Dataset, source: str) -> Dataset:
        """Map raw columns to the task's canonical ones; check they exist."""
        return ds

    def load_splits(self) -> dict[str, Dataset]:
        cfg = self.recipe.data
        if not cfg.train:
            raise AdaptError("the recipe has no training data: set --data (data.train) to a file, Hub id or embedded:NAME")
        train = self.read_source(cfg.train, cfg.train_split)
        if cfg.validation:
            validation = self.read_source(cfg.validation, cfg.validation_split)
        elif data.is_local(cfg.train) or assets.is_embedded(cfg.train):
            train, validation = data.carve_validation(
                train, cfg.validation_fraction, self.recipe.train.seed, self.group_column, source=cfg.train
            )
        else:  # Hub dataset: use its own validation split
            validation = self.read_source(cfg.train, cfg.validation_split)
        splits = {"train": train, "validation": validation}
        if cfg.test:
            splits["test"] = self.read_source(cfg.test, cfg.test_split)
        if cfg.max_train_examples and len(train) > cfg.max_train_examples:
            splits["train"] = train.shuffle(seed=self.recipe.train.seed).select(range(cfg.max_train_examples))
        if cfg.max_eval_examples:
            for name in ("validation", "test"):
                if name in splits and len(splits[name]) > cfg.max_eval_examples:
                    splits[name] = splits[name].select(range(cfg.max_eval_examples))
        self.setup(splits)
        return splits

    def setup(self, splits: dict[str, Dataset]) -> None:
        """Learn what the data defines (e.g. label names) and check the splits agree."""

    def inputs_from_texts(self, texts: list[str]) -> Dataset:
        """Raw examples from plain text lines, for `adapt predict`."""
        raise AdaptError(f"task '{self.name}' cannot predict from plain text; give a data file")

    # ---- model ------------------------------------------------------------------------------------
    def load_tokenizer(self, path: str):
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.recipe.trust_remote_code,
                                                           **self.tokenizer_kwargs())
        except OSError as err:  # the Hub client reports a missing folder or model id as OSError
            raise AdaptError(f"cannot load a tokenizer from '{path}' ({str(err).splitlines()[0]}); check --model: "
                             "a local model folder, a Hub model id or embedded:NAME") from None
        except ValueError as err:  # custom tokenizer code without trust_remote_code, unknown model type
            raise model_load_error(path, err) from None
        return self.tokenizer

    def tokenizer_kwargs(self) -> dict[str, Any]:
        """Extra `AutoTokenizer.from_pretrained` arguments this task's options ask for."""
        return {}

    def build_model(self, path: str):
        """A model to fine-tune, from a pretrained checkpoint."""
        return self.load_trained(path)

    def load_trained(self, path: str):
        """A saved model of this task (adapter folders load their base model plus the adapter)."""
        if (Path(path) / "adapter_config.json").exists():
            from adapt.lora import load_adapter_model

            return load_adapter_model(path, self)
        return self.pretrained_model(path)

    def pretrained_model(self, path: str, **kwargs):
        """`auto_class.from_pretrained(path, **kwargs)` from safetensors weights only (never a pickle), running
        model code shipped with a checkpoint only when the recipe's trust_remote_code is true.

        Raises:
            AdaptError: one line naming the folder and the fix when the weights are not safetensors, the model
                type needs remote code, or the folder/model id cannot be loaded.
        """
        import transformers

        try:
            return getattr(transformers, self.auto_class).from_pretrained(
                path, use_safetensors=True, trust_remote_code=self.recipe.trust_remote_code, **kwargs)
        except (OSError, ValueError) as err:
            raise model_load_error(path, err) from None

    def adapter_base_model(self, folder: Path, base: str):
        """The base model an adapter saved in `folder` attaches to: `base`'s pretrained weights with the model
        config saved beside the adapter (label names, head size), or `base`'s own config when none was saved."""
        if not (folder / "config.json").exists():
            return self.pretrained_model(base)
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=self.recipe.trust_remote_code)
        except (OSError, ValueError) as err:
            raise model_load_error(str(folder), err) from None
        return self.pretrained_model(base, config=config)

    def restore_from_model(self, model) -> None:
        """Recover what `setup` learned (labels, ...) from a saved model, for predict/eval."""

    def finalize_validation(self, model, metrics: dict[str, Any]) -> None:
        """Called once the saved weights' validation `metrics` are known, before the test split is scored and
        the model saved: a task that calibrates on validation (a tuned decision threshold) fixes it here, in
        its own state and in `model.config`."""

    # ---- features and batches -------------------------------------------------------------------------
    def featurize(self, raw: Dataset, role: str) -> Dataset:
        """Tokenized features with a `length` column (for length-grouped batching)."""
        raise NotImplementedError

    def featurize_key(self) -> list[str]:
        """Everything besides the data and tokenizer that changes featurize's output."""
        return [self.name, str(self.recipe.train.max_length), self.options.model_dump_json()]

    def collate(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        return pad_batch(rows, self.tokenizer.pad_token_id or 0)

    # ---- loss and evaluation --------------------------------------------------------------------------
    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of per-target losses, number of targets): the loop divides by the targets of the whole
        global batch, so gradient accumulation and multi-process runs equal one big batch."""
        logits = model(**model_inputs(batch)).logits
        return summed_cross_entropy(logits, batch["labels"])

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != -100).sum())

    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-example outputs (first dimension = batch), reduced on device before leaving it."""
        raise NotImplementedError

    def postprocess(self, outputs: list[dict[str, Any]], features: Dataset, raw: Dataset) -> list[dict[str, Any]]:
        """Outputs per feature (ordered by feature index) -> one prediction per raw example."""
        raise NotImplementedError

    def score(self, predictions: list[dict[str, Any]], raw: Dataset) -> dict[str, Any]:
        raise NotImplementedError

    def example_predictions(self, predictions: list[dict], raw: Dataset) -> list[dict]:
        """Per-example records written next to metrics (inputs, gold, prediction)."""
        return predictions

    def card_details(self) -> dict[str, Any]:
        """Extra rows for the model card's settings table (e.g. a training objective and its settings)."""
        return {}


def model_load_error(path: str, err: Exception) -> AdaptError:
    """One actionable line for a checkpoint transformers could not load (`err` from `from_pretrained`)."""
    text = str(err)
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    folder = Path(path)
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        return AdaptError(f"{path}: holds only pickle weights (*.bin), and adapt loads safetensors only (a pickle "
                          "can run code); convert it once with `model.save_pretrained(dir, safe_serialization=True)` "
                          "in a trusted session, or use a checkpoint that ships model.safetensors")
    if "does not appear to have a file named" in text and "safetensors" in text:
        return AdaptError(f"{path}: no safetensors weights ({first}); adapt loads safetensors only: use a checkpoint "
                          "that ships model.safetensors")
    if "trust_remote_code" in text or "does not recognize this architecture" in text:
        return AdaptError(f"{path}: its model type needs code shipped with the checkpoint ({first}); review that code, "
                          "then pass --trust-remote-code (adapt finetune: trust_remote_code=true), or use a model "
                          "type transformers supports")
    return AdaptError(f"cannot load the model '{path}' ({first}); check --model: a local model folder, a Hub model id "
                      "or embedded:NAME")


def first_nonfinite(named_tensors) -> str | None:
    """The name of the first of (name, tensor) pairs holding NaN or inf, or None (one device sync)."""
    named = list(named_tensors)
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in named])
    return None if bool(finite.all()) else named[int((~finite).nonzero()[0])][0]


def check_finite_weights(model, source: str) -> None:
    """Refuse a loaded model whose parameters hold NaN or inf (a damaged checkpoint; buffers are not read, some
    hold -inf masks by design), right after loading, before any training, prediction or output-directory write.
    `source` names the checkpoint (a model folder, Hub id, or run folder) in the message; peft's wrapper
    prefixes are removed from the weight name, so it reads as in the checkpoint.

    Raises:
        AdaptError: "<source>: the checkpoint holds NaN/inf in weight <name>; ..."
    """
    name = first_nonfinite(model.named_parameters())
    if name is None:
        return
    name = name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".default.", ".")
    raise AdaptError(f"{source}: the checkpoint holds NaN/inf in weight {name}; it is damaged: use an intact copy "
                     "of the model (download or save it again)")


# generation-config flags that only one decoding mode reads; transformers refuses to save a modified config
# that sets them for another mode (e.g. a checkpoint's `temperature: 0.6` under greedy decoding)
SAMPLING_ONLY_FLAGS = ("temperature", "top_p", "top_k", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff")
BEAM_ONLY_FLAGS = ("early_stopping", "length_penalty")


def apply_generation_settings(model, settings: dict[str, Any], model_ref: str) -> None:
    """Put adapt's decoding `settings` into `model.generation_config` (saved with the model, so `generate()`
    on the output folder decodes as evaluation did), unset the checkpoint's flags that the chosen mode does not
    read (sampling flags when greedy/beam search, beam flags with one beam), and check the result the way
    transformers' `save_pretrained` will, now, before any training.

    Raises:
        AdaptError: the combined generation config is still invalid, naming the checkpoint and the problem.
    """
    config = model.generation_config
    config.update(**settings)
    if not config.do_sample:
        for key in SAMPLING_ONLY_FLAGS:
            setattr(config, key, None)
    if (config.num_beams or 1) == 1:
        for key in BEAM_ONLY_FLAGS:
            setattr(config, key, None)
    try:
        config.validate(strict=True)
    except ValueError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3] if line.strip()) or str(err)
        raise AdaptError(f"{model_ref}: its generation_config.json with the recipe's decoding settings would not save "
                         f"({detail}); change task_options (decoding) or fix generation_config.json") from None


def label_head_model(task: Task, path: str, **config_kwargs):
    """`task.pretrained_model(path)` with a fresh head of one output per `task.label_names` (their names in
    `config.id2label`/`label2id`, as pipelines report them), `config_kwargs` added (e.g. `problem_type`), and
    a pad id for decoder heads (GPT-2, Llama, Qwen2 and Mistral classifiers read each row's last non-pad token
    and refuse batches of more than one row without one)."""
    names = task.label_names
    model = task.pretrained_model(path, num_labels=len(names), id2label=dict(enumerate(names)),
                                  label2id={n: i for i, n in enumerate(names)}, **config_kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = task.tokenizer.pad_token_id
    return model


def config_label_names(config) -> list[str]:
    """The label names a saved model's config holds, in output order."""
    return [config.id2label[i] for i in range(len(config.id2label))]


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a padding token (GPT-2, Llama, Qwen2 style) its EOS token as pad, so batches
    of several rows can be padded (and decoder classifiers find each row's last real token)."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the cross-entropies of the targets in fp32, number of targets): `logits` [..., classes], `labels`
    [...] class ids with -100 where there is no target. Only the targets' rows are gathered and upcast: of a
    language model's logits ([batch, length, vocabulary]) most rows are prompt or pad positions, and upcasting
    and normalising all of them cost more than the rest of a small model's step."""
    scored = labels != -100
    return target_cross_entropy(logits[scored], labels[scored]), scored.sum()


def target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over rows of -log softmax(logits[i])[targets[i]], computed in fp32: `logits` [rows, classes] (any float
    dtype), `targets` [rows] class ids. Vocabulary-sized rows go through `ChunkedCrossEntropy`, the others
    through `F.cross_entropy` on the upcast logits."""
    if logits.shape[-1] < ChunkedCrossEntropy.MIN_CLASSES:
        return F.cross_entropy(logits.float(), targets, reduction="sum")
    return ChunkedCrossEntropy.apply(logits, targets)


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of logits [rows, vocabulary] in fp32, a block of rows at a time: upcasting all of a
    language model's logits at once (`F.cross_entropy(logits.float())`) makes fp32 copies of them (the upcast
    and its log-softmax, ~270 MB each for 1,400 targets of a 49k vocabulary; fp32 logits still get the
    log-softmax) that training reads and writes at memory speed. The forward keeps each row's log-sum-exp (fp32 [rows]); the backward recomputes
    softmax - one_hot per block, in fp32, scaled by the incoming gradient and cast to the logits' dtype, as
    autograd's log-softmax backward computes it."""

    MIN_CLASSES = 4096  # below this one upcast of the whole tensor is small
    ROWS = 64  # rows per block: 12.6 MB of fp32 for a 49k vocabulary

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.contiguous()
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        step = ChunkedCrossEntropy.ROWS
        for start in range(0, logits.shape[0], step):
            lse[start:start + step] = logits[start:start + step].float().logsumexp(-1)
        picked = logits.gather(1, targets[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, targets, lse)
        return (lse - picked).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        out = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ChunkedCrossEntropy.ROWS):
            end = start + ChunkedCrossEntropy.ROWS
            block = (logits[start:end].float() - lse[start:end, None]).exp_()
            rows = torch.arange(block.shape[0], device=block.device)
            block[rows, targets[start:end]] -= 1.0
            out[start:end] = block.mul_(grad)
        return out, None


PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "labels": -100, "special_tokens_mask": 1}


# Padded widths are rounded up to this multiple. On GPUs a handful of distinct shapes lets kernels
# (cuBLAS, cuDNN attention plans) be chosen once and reused, and multiples of 8 fill tensor cores; on
# CPUs every extra column is wasted work. The training loop sets it for its device.
_pad_multiple = 1


def set_pad_multiple(multiple: int) -> None:
    global _pad_multiple
    _pad_multiple = max(1, multiple)


def pad_batch(rows: dict[str, list], pad_token_id: int, pad_values: dict[str, int] | None = None,
              skip: tuple[str, ...] = ("length",)) -> dict[str, torch.Tensor]:
    """Pad every list-valued column to the longest row in this batch (dynamic padding, rounded up to
    the device's pad multiple) and stack scalar columns; columns in `skip` are dropped."""
    values = {**PAD_VALUES, "input_ids": pad_token_id, **(pad_values or {})}
    batch = {}
    for key, column in rows.items():
        if key in skip:
            continue
        first = column[0]
        if isinstance(first, (list, tuple)):
            if first and isinstance(first[0], (list, tuple)):
                continue  # nested (e.g. offset mappings): stays with the features, not the batch
            width = -(-max(len(r) for r in column) // _pad_multiple) * _pad_multiple
            fill = values.get(key, 0)
            batch[key] = torch.tensor([list(r) + [fill] * (width - len(r)) for r in column])
        elif isinstance(first, (int, float, bool)):
            batch[key] = torch.tensor(column)
    return batch


def json_input(text: str) -> dict | None:
    """The JSON object an input line of `adapt predict` holds (a line of a JSON Lines `--file`), else None
    (plain text, including text that merely starts with a brace)."""
    import json

    if not text.lstrip().startswith("{"):
        return None
    try:
        item = json.loads(text)
    except json.JSONDecodeError:
        return None
    return item if isinstance(item, dict) else None


def predict_input(text: str, columns: list[str], number: int, fix: str) -> Any:
    """One input line of `adapt predict`. A line holding a JSON object (a `--file` in JSON Lines, as the
    task's own data files) gives the value of the first of `columns` it has; any other line is the input.

    Raises:
        AdaptError: a JSON object with none of `columns`, naming the input's number and `fix`.
    """
    item = json_input(text)
    if item is None:
        return text
    for column in columns:
        if column in item and item[column] is not None:
            return item[column]
    raise AdaptError(f"input {number}: the JSON object has no {' or '.join(repr(c) for c in columns)} "
                     f"(keys: {', '.join(map(str, item)) or 'none'}); {fix}")
