"""Preflight: every check of a run that can be made before its first write to the output directory and
before any model weights are loaded. Each failure is one `AdaptError` line naming the recipe field or file
and the fix, so a bad run stops in seconds with nothing written instead of failing after hours.

Two stages, one home:

- `check_recipe(recipe)`: the recipe and this machine (metric name, peft method and sizes, trackers,
  mixed precision, the output directory, the model and tokenizer folders' files). No data and no model
  configuration are read; `adapt finetune` runs it before it reads any data.
- `check_run(recipe, task, model_path, raw)`: `check_recipe` plus what needs the model's configuration
  (loaded with `AutoConfig`, weights never read): sequence lengths against the model's positions, that the
  task has a model class for the architecture, and the peft settings applied to a meta-device copy of the
  model. The training loop runs it right after loading the data; `adapt estimate` and `adapt data inspect`
  run it too, so all three refuse the same recipes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from adapt import assets
from adapt.errors import AdaptError

# Model types whose learned position table is offset by `pad_token_id + 1` (RoBERTa's padding_idx trick):
# their usable length is max_position_embeddings - pad_token_id - 1 (514 -> 512 for RoBERTa).
PADDING_OFFSET_POSITIONS = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "roberta-prelayernorm",
    "data2vec-text", "xmod", "ibert", "mpnet", "esm",
})
# Config attributes that bound the positions a model can read, in the order transformers' configs use them.
POSITION_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length",
                       "seq_length", "n_ctx")
# scores the training loop adds to every task's (adapt.train.evaluate: the number of examples scored)
LOOP_METRICS = ("examples",)
WEIGHT_SUFFIXES = (".safetensors",)
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


# ---- stage 1: the recipe and this machine ------------------------------------------------------------
def check_recipe(recipe, task=None, *, output: bool = True) -> None:
    """Checks that need neither data nor the model's configuration.

    Args:
        recipe: the resolved `adapt.recipe.Recipe`.
        task: its task instance (built with `adapt.tasks.get_task` when not given).
        output: also check that `recipe.output_dir` can be written (False for commands that write no run).

    Raises:
        AdaptError: one line naming the field or file and the fix.
    """
    if task is None:
        from adapt.tasks import get_task

        task = get_task(recipe)
    check_metric(recipe, task)
    check_schedule(recipe.train)
    if recipe.peft is not None:
        check_peft_method(recipe.peft.method)
    check_tracking(recipe.tracking)
    check_mixed_precision(recipe.train.mixed_precision, recipe.train.speed_layer)
    for field, ref in model_refs(recipe, task):
        check_model_files(ref, field, recipe.trust_remote_code)
    check_tokenizer_files(recipe.tokenizer or recipe.model, "tokenizer" if recipe.tokenizer else "model",
                          recipe.trust_remote_code)
    if output:
        check_output_dir(Path(recipe.output_dir))


def check_metric(recipe, task) -> None:
    """`train.metric_for_best` must be one of the metrics the task reports (`task.metric_names`)."""
    name = recipe.train.metric_for_best
    if name is not None and name not in (*task.metric_names, *LOOP_METRICS):
        raise AdaptError(f"train.metric_for_best '{name}' is not a metric of task '{task.name}'; use one of "
                         f"{', '.join(task.metric_names)} (default {task.default_metric})")


def check_schedule(train) -> None:
    """Settings that would be silently ignored: early stopping without periodic evaluation."""
    if train.early_stopping_patience and not train.eval_steps:
        raise AdaptError(f"train.early_stopping_patience={train.early_stopping_patience} needs periodic evaluation, "
                         "but train.eval_steps is not set (the run would evaluate only at its end); set "
                         "train.eval_steps (or --eval-steps), or drop train.early_stopping_patience")


def check_peft_method(method: str) -> None:
    """`peft.method` must name a peft method (peft's own registry of config classes)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    known = sorted(str(getattr(k, "value", k)).lower() for k in PEFT_TYPE_TO_CONFIG_MAPPING)
    if method.lower() not in known:
        common = [m for m in ("lora", "loha", "lokr", "ia3", "adalora", "boft", "oft", "vera") if m in known]
        raise AdaptError(f"peft.method '{method}' is not a peft method; use one of {', '.join(common)} "
                         f"(or another of peft's {len(known)} methods), e.g. peft.method=lora")


def check_tracking(names: list[str]) -> None:
    """Each `tracking` entry must be an Accelerate tracker that is installed here."""
    if not names:
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name != "all" and name not in LOGGER_TYPE_TO_CLASS:
            raise AdaptError(f"tracking: '{name}' is not an Accelerate tracker; use some of "
                             f"{', '.join(LOGGER_TYPE_TO_CLASS)}, or tracking=[] for none")
        if name != "all" and name not in available:
            installed = ", ".join(sorted(available)) or "none"
            raise AdaptError(f"tracking: '{name}' is not installed here (installed: {installed}); "
                             f"`pip install {name}`, or leave it out of tracking (e.g. tracking=[])")


def check_mixed_precision(requested: str, speed_layer: bool = True) -> None:
    """fp16 needs a CUDA GPU; bf16 needs a GPU or CPU with native bf16 (else the setting is silently ignored
    or emulated at a fraction of the speed); bf16-master weights are the speed layer's."""
    import torch

    if requested == "bf16-master" and not speed_layer:
        raise AdaptError("train.mixed_precision=bf16-master is part of adapt's speed layer, which "
                         "train.speed_layer=false switches off; use train.mixed_precision=bf16 (autocast) or auto")

    cuda = torch.cuda.is_available()
    if requested == "fp16" and not cuda:
        raise AdaptError("train.mixed_precision=fp16 needs a CUDA GPU and this machine has none (on a CPU it would "
                         "silently train in fp32); use train.mixed_precision=auto, bf16 or no")
    if requested in ("bf16", "bf16-master"):
        if cuda and not torch.cuda.is_bf16_supported():
            raise AdaptError(f"train.mixed_precision={requested}: this GPU has no bf16 support; use "
                             "train.mixed_precision=fp16 or auto")
        if not cuda and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise AdaptError(f"train.mixed_precision={requested}: this CPU has no native bf16 (AVX512-BF16/AMX), so "
                             "bf16 would be emulated many times slower; use train.mixed_precision=auto or no")


def check_output_dir(path: Path) -> None:
    """The output directory is a folder (or can be created as one) that this user may write; nothing is
    created here."""
    if path.exists() and not path.is_dir():
        raise AdaptError(f"output_dir {path} is a file, not a folder; choose another --output-dir (or move the file)")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise AdaptError(f"output_dir {path} cannot be created: {probe} is a file, not a folder; choose another "
                         "--output-dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is" if probe == path else f"would be created in {probe}, which is"
        raise AdaptError(f"output_dir {path} {what} not writable by this user; choose a writable --output-dir "
                         "or fix its permissions")


def model_refs(recipe, task) -> list[tuple[str, str]]:
    """(recipe field, model reference) of every checkpoint a run loads weights from."""
    refs = [("model", recipe.model)]
    decoder = getattr(getattr(task, "options", None), "decoder", None)
    if recipe.task == "seq2seq" and decoder:
        refs.append(("task_options.decoder", decoder))
    return refs


def check_model_files(ref: str, field: str, trust_remote_code: bool) -> None:
    """A local model folder must hold a config and safetensors weights (adapt never unpickles .bin files),
    and its model type must be known to transformers unless remote code is trusted on this command.
    Hub ids are checked from the local cache when their config is there; embedded models are known good."""
    if assets.is_embedded(ref):
        return
    folder = Path(ref)
    if folder.is_dir():
        config_file = folder / "config.json"
        if (folder / "adapter_config.json").exists():
            if not (folder / "adapter_model.safetensors").exists():
                raise AdaptError(f"{field} {folder}: the adapter has no adapter_model.safetensors; adapt loads only "
                                 "safetensors, never pickled .bin files: re-save it with safe_serialization=True")
            base = _read_config(folder / "adapter_config.json", field).get("base_model_name_or_path")
            if base and Path(base).resolve() != folder.resolve():
                check_model_files(base, f"{field} (the base model of adapter {folder})", trust_remote_code)
            return
        if not config_file.exists():
            raise AdaptError(f"{field} {folder}: no config.json, so this is not a transformers model folder; give a "
                             "model folder, a Hub model id or embedded:NAME")
        weights = [p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)]
        if not weights:
            pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in folder.glob(pattern))
            found = f"only {', '.join(pickled[:3])}" if pickled else "no weight files"
            raise AdaptError(f"{field} {folder}: no .safetensors weights ({found}); adapt loads only safetensors, "
                             "never pickled files: convert it with `model.save_pretrained(folder)` in transformers")
    else:  # a Hub id, or a missing folder (which the tokenizer and model loaders report)
        config_file = _cached_hub_config(ref)
        if config_file is None:
            return
    check_model_type(_read_config(config_file, field), config_file, field, trust_remote_code)


def check_tokenizer_files(ref: str, field: str, trust_remote_code: bool) -> None:
    """A tokenizer that ships its own code (an auto_map in tokenizer_config.json) loads only with
    trust_remote_code=true on this command (transformers would otherwise stop, or ask on a terminal)."""
    if trust_remote_code or assets.is_embedded(ref):
        return
    config_file = Path(ref) / "tokenizer_config.json"
    if not config_file.is_file():
        config_file = _cached_hub_config(ref, "tokenizer_config.json")
    if config_file is not None and config_file.is_file() and "auto_map" in _read_config(config_file, field):
        raise AdaptError(f"{field}: {config_file}: the tokenizer runs code shipped with the model (auto_map), which "
                         "adapt never runs unasked; pass trust_remote_code=true on this command if you trust that code")


def _cached_hub_config(ref: str, filename: str = "config.json") -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ref, filename)
    except Exception:  # not a valid repo id: the loaders report it
        return None
    return Path(found) if isinstance(found, str) else None


def _read_config(config_file: Path, field: str) -> dict[str, Any]:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdaptError(f"{field}: {config_file} is not valid JSON ({str(err).splitlines()[0]}); restore the "
                         "model's config.json") from None
    if not isinstance(config, dict):
        raise AdaptError(f"{field}: {config_file} is not a JSON object; restore the model's config.json")
    return config


def check_model_type(config: dict[str, Any], config_file: Path, field: str, trust_remote_code: bool) -> None:
    """A config that needs code shipped with the model (an `auto_map`, or a model type this transformers
    does not know) loads only with trust_remote_code=true given on this command."""
    from transformers import CONFIG_MAPPING, __version__

    model_type = config.get("model_type")
    if trust_remote_code:
        if model_type not in CONFIG_MAPPING and "auto_map" not in config:
            raise AdaptError(f"{field}: {config_file}: model type '{model_type}' is unknown to transformers "
                             f"{__version__} and the folder ships no code for it (no auto_map); upgrade transformers "
                             "or use another model")
        return
    if "auto_map" in config:
        raise AdaptError(f"{field}: {config_file}: model type '{model_type}' runs code shipped with the model "
                         "(auto_map), which adapt never runs unasked; pass trust_remote_code=true on this command "
                         "if you trust that code")
    if model_type not in CONFIG_MAPPING:
        raise AdaptError(f"{field}: {config_file}: model type '{model_type}' is unknown to transformers {__version__}; "
                         "it needs the model's own code (pass trust_remote_code=true on this command if you trust "
                         "it) or a newer transformers")


# ---- stage 2: the model's configuration --------------------------------------------------------------
def check_run(recipe, task, model_path: str, raw: dict | None = None, *, output: bool = True) -> None:
    """Everything knowable before a run's first write: `check_recipe`, then the sequence lengths the task
    will feed the model against its positions, the task's model class for this architecture, and the peft
    settings applied to a meta-device copy of the model (no weights are loaded).

    Args:
        recipe: the resolved recipe.
        task: its task, with the tokenizer loaded and `load_splits` done.
        model_path: the local path or Hub id the weights will load from.
        raw: the raw splits (name -> Dataset), which tell the causal-LM task which length setting applies.
        output: also check the output directory (False for `adapt estimate` / `adapt data inspect`).

    Raises:
        AdaptError: one line naming the field and the fix.
    """
    check_recipe(recipe, task, output=output)
    config = model_config(recipe, model_path)
    check_lengths(recipe, task, config, raw)
    model = meta_model(recipe, task, config)
    if recipe.peft is not None:
        import warnings

        from adapt.lora import wrap_with_peft

        with warnings.catch_warnings():  # the real wrap, after this dry run, shows any warning once
            warnings.simplefilter("ignore")
            wrap_with_peft(model, recipe.peft, task)


def model_config(recipe, model_path: str):
    """The model's `PretrainedConfig` (config.json only); an adapter folder gives its base model's."""
    from transformers import AutoConfig

    path = model_path
    adapter = Path(model_path) / "adapter_config.json"
    if adapter.exists():
        path = _read_config(adapter, "model").get("base_model_name_or_path") or model_path
        if (Path(model_path) / "config.json").exists():  # adapt saves the base config (with labels) beside it
            path = model_path
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=recipe.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise AdaptError(f"model {recipe.model}: cannot read its configuration ({str(err).splitlines()[0]}); check "
                         "--model: a local model folder, a Hub model id or embedded:NAME") from None


def position_limit(config) -> int | None:
    """Tokens one sequence may hold in this (text) config, or None when positions are unbounded
    (T5-style relative attention)."""
    if getattr(config, "relative_attention_num_buckets", None):
        return None
    for attribute in POSITION_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            if getattr(config, "model_type", None) in PADDING_OFFSET_POSITIONS:
                value -= (getattr(config, "pad_token_id", None) or 0) + 1
            return value
    return None


def position_limits(config) -> dict[str, int | None]:
    """{"encoder": n, "decoder": n} for encoder-decoders, else {"model": n}."""
    if getattr(config, "model_type", None) == "encoder-decoder":
        return {"encoder": position_limit(config.encoder), "decoder": position_limit(config.decoder)}
    if getattr(config, "is_encoder_decoder", False):
        return {"encoder": position_limit(config.get_text_config(encoder=True)),
                "decoder": position_limit(config.get_text_config(decoder=True))}
    return {"model": position_limit(config.get_text_config())}


def sequence_lengths(recipe, task, raw: dict | None) -> list[tuple[str, str, int]]:
    """(side of the model, recipe setting, its value = the most tokens it feeds that side) per length the
    task uses: train.max_length (encoder inputs, QA windows, prompt/completion pairs), the causal LM's
    task_options.block_size (plain text), a seq2seq model's target and generation lengths (decoder)."""
    options, max_length = task.options, recipe.train.max_length
    if recipe.task == "clm":
        if raw is not None:
            texts = "text" in raw["train"].column_names
        else:
            from adapt.data import is_plain_text_file

            texts = bool(recipe.data.train) and is_plain_text_file(recipe.data.train)
        if texts:
            return [("model", "task_options.block_size", options.block_size)]
        return [("model", "train.max_length", max_length)]
    if recipe.task == "seq2seq":
        lengths = [("encoder", "train.max_length", max_length),
                   ("decoder", "task_options.max_target_length", options.max_target_length)]
        if options.max_new_tokens:
            lengths.append(("decoder", "task_options.max_new_tokens", options.max_new_tokens))
        return lengths
    return [("model", "train.max_length", max_length)]


def check_lengths(recipe, task, config, raw: dict | None = None) -> None:
    """Each length setting fits the model's positions (past them the position lookup fails at step 1)."""
    limits = position_limits(config)
    if recipe.task == "seq2seq" and "model" in limits:  # one encoder-only checkpoint warm-starts both halves
        limits = {"encoder": limits["model"], "decoder": limits["model"]}
    for side, setting, tokens in sequence_lengths(recipe, task, raw):
        limit = limits.get(side)
        if limit is not None and tokens > limit:
            whose = "" if side == "model" else f"the {side} of "
            raise AdaptError(f"{setting}={tokens} is longer than {whose}the model {recipe.model} can read ({limit} "
                             f"positions; past them the run fails at its first step); set {setting} to at most {limit}")


def meta_model(recipe, task, config):
    """The task's model built from `config` on the meta device: module names and shapes, no weights."""
    import torch
    import transformers

    trust = recipe.trust_remote_code
    try:
        with torch.device("meta"):
            warm_start = getattr(task, "warm_started", False) and config.model_type != "encoder-decoder"
            if recipe.task == "seq2seq" and warm_start:
                decoder = config
                if getattr(task.options, "decoder", None):
                    decoder = model_config(recipe.model_copy(update={"model": task.options.decoder}),
                                           assets.resolve_model_path(task.options.decoder))
                pair = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(config, decoder)
                return transformers.EncoderDecoderModel(config=pair)
            return getattr(transformers, task.auto_class).from_config(config, trust_remote_code=trust)
    except ValueError as err:
        text = str(err).splitlines()[0]
        if "Unrecognized configuration class" in text:
            raise AdaptError(f"model {recipe.model}: its architecture ({config.model_type}) has no "
                             f"{task.auto_class}, so it cannot be trained for task '{task.name}'; choose a model "
                             "of another architecture") from None
        raise AdaptError(f"model {recipe.model}: cannot build it for task '{task.name}' ({text})") from None
