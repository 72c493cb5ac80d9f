"""Parameter-efficient fine-tuning with `peft`: LoRA (peft's own default target modules per architecture,
"all-linear" where peft has none), any other peft method by name, adapter folders that carry what rebuilds
their model (base config with the labels and task head, generation config) and loading them from safetensors
only. Merging an adapter run into a plain checkpoint is an export of a finished run: adapt.runner.merge_adapter."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

from adapt.errors import AdaptError
from adapt.recipe import PeftConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_ADAPTER_WEIGHTS = "adapter_model.bin"


@contextmanager
def quiet_peft():
    """peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning on every wrap and load
    that says nothing to adapt's users)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def default_target_modules(model, method: str):
    """The modules a peft `method` adapts when the recipe names none.

    None where peft has its own default for the model type (peft's TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING
    picks it, as `LoraConfig(target_modules=None)` does), and for methods that target no modules (prompt
    tuning); for adapt's warm-started encoder-decoders the union of peft's lists for the encoder and decoder
    types; otherwise peft's "all-linear" (every linear layer except the output head)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(method.upper())
    if tuner is None:  # prompt-learning methods have no target modules
        return None
    mapping = getattr(tuner, "target_module_mapping", None) or {}
    config = model.config
    if config.model_type in mapping:
        return None
    if config.model_type == "encoder-decoder":
        parts = [mapping.get(config.encoder.model_type), mapping.get(config.decoder.model_type)]
        if all(isinstance(part, list) for part in parts):
            return sorted(set(parts[0]) | set(parts[1]))
    return "all-linear"


def linear_layer_names(model) -> list[str]:
    """Distinct last name parts of the model's linear layers (what `peft.target_modules` may name)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D)) and name})


def peft_config(model, cfg: PeftConfig, task):
    """The peft config for `model` from the recipe's `peft` section; `task` is a Task or its class.

    Raises:
        AdaptError: an unknown peft method or a bad option for it.
    """
    import peft

    task_type = task.peft_task_type
    options = dict(cfg.options)
    targets = cfg.target_modules
    if targets is None and "target_modules" not in options:
        targets = default_target_modules(model, cfg.method)
    if getattr(model.config, "model_type", None) == "encoder-decoder" and "modules_to_save" not in options:
        # a warm-started encoder-decoder's cross-attention is new (randomly initialised): it trains fully and is
        # saved with the adapter, so the adapter folder rebuilds exactly the trained model
        options["modules_to_save"] = ["crossattention"]
        if "exclude_modules" not in options:
            options["exclude_modules"] = r".*crossattention.*"
    if cfg.method == "lora":
        try:
            return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                                   task_type=task_type, **options)
        except (TypeError, ValueError) as err:
            raise AdaptError(f"peft.options: {str(err).splitlines()[0]}; see peft's LoraConfig for its options") from None
    if targets is not None and "target_modules" not in options:
        options["target_modules"] = targets
    try:
        return peft.get_peft_config({"peft_type": cfg.method.upper(), "task_type": task_type, **options})
    except (KeyError, ValueError, TypeError) as err:
        raise AdaptError(f"peft.method '{cfg.method}': {err}; see the peft documentation for its options") from None


def wrap_with_peft(model, cfg: PeftConfig, task):
    """The model with only adapter (and task-head) weights trainable; `task` is a Task or its class (its
    `peft_task_type` is peft's task type for the adapter).

    Raises:
        AdaptError: `peft.target_modules` that match no layer of the model (naming the layers it has), or
            settings peft rejects.
    """
    import peft

    config = peft_config(model, cfg, task)
    try:
        with quiet_peft():
            wrapped = peft.get_peft_model(model, config)
    except ValueError as err:
        text = str(err)
        if "not found in the base model" in text or "target_modules" in text:
            raise AdaptError(
                f"peft.target_modules: {cfg.target_modules or config.target_modules} match no layer of this "
                f"{model.config.model_type} model; name some of its linear layers "
                f"({', '.join(linear_layer_names(model)[:12])}) or leave peft.target_modules unset for peft's default"
            ) from None
        raise AdaptError(f"peft.method '{cfg.method}': {text.splitlines()[0]}; fix the recipe's peft settings") from None
    settings = wrapped.peft_config["default"]
    if not settings.base_model_name_or_path and model.config.model_type == "encoder-decoder":
        settings.base_model_name_or_path = model.config.encoder._name_or_path  # warm-started: the encoder checkpoint
    base = settings.base_model_name_or_path
    if base and Path(base).is_dir():  # a local base: its absolute path, so the adapter loads from any directory
        settings.base_model_name_or_path = str(Path(base).resolve())
    return wrapped


def hub_offline() -> bool:
    """True when the Hugging Face Hub client is told to stay offline (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def in_hub_cache(repo_id: str) -> bool:
    """True when the local Hugging Face cache holds `repo_id`'s config.json (what an offline load needs first)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def hub_model_problem(repo_id: str) -> str | None:
    """Why the model `repo_id` cannot be downloaded from the Hugging Face Hub now, from one request without
    retries (the downloads retry a failed connection for minutes), or None when it can (or a login decides).
    """
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(repo_id, timeout=10)
    except GatedRepoError:
        return None  # the download says what access it needs
    except RepositoryNotFoundError:
        return "the Hugging Face Hub has no such model (or a private one: log in with `hf auth login`)"
    except Exception as err:  # the HTTP client's connection errors have no common base in huggingface_hub
        if "HTTPError" in type(err).__name__ and getattr(getattr(err, "response", None), "status_code", 0):
            return None  # an answer from the Hub (rate limit, server error): let the download report it
        return f"the Hugging Face Hub cannot be reached ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None


def looks_like_local_path(name: str) -> bool:
    """True when a model reference can only be a local path, never a Hub model id (`owner/name`): absolute or
    relative to `.`/`~`, with backslashes, or with more than one `/`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def save_adapter_extras(model, folder: Path) -> None:
    """Write beside a saved adapter what rebuilding its model needs besides the base weights: the base model's
    config (model type, num_labels, id2label/label2id, so the task head has the trained shape and names) and
    its generation config (decoding settings, EOS ids)."""
    base = model.get_base_model()
    base.config.save_pretrained(folder)
    if base.can_generate() and getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(folder)


def restore_frozen_weights(model, fresh) -> None:
    """Copy into the frozen (base) weights of the peft `model` the values of `fresh`, the same base model newly
    built from its checkpoint. A bf16-master run rounds the frozen weights to bf16 for training; the adapter
    folder reloads them from the checkpoint in full precision, so the run's final scores and predictions must
    come from those values to be what a reload gives."""
    import torch

    values = {**dict(fresh.named_parameters()), **dict(fresh.named_buffers())}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                continue
            key = name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".original_module.", ".")
            source = values.get(key)
            if source is not None and source.shape == param.shape:
                param.copy_(source.to(param.dtype))


def check_adapter_weights(folder: Path) -> None:
    """Refuse adapter folders whose weights are not safetensors (a pickled .bin can run code when loaded).

    Raises:
        AdaptError: naming the folder and the fix.
    """
    if (folder / ADAPTER_WEIGHTS).exists():
        return
    if (folder / PICKLED_ADAPTER_WEIGHTS).exists():
        raise AdaptError(f"{folder / PICKLED_ADAPTER_WEIGHTS}: adapters load from safetensors only (a .bin file is a "
                         "pickle that can run code when loaded); re-save it in a trusted session with "
                         "`model.save_pretrained(dir, safe_serialization=True)` to get adapter_model.safetensors")
    raise AdaptError(f"{folder} has adapter_config.json but no {ADAPTER_WEIGHTS}; give a complete adapter folder")


def load_adapter_model(path: str, task):
    """The base model (with the config and generation config saved beside the adapter: labels, task head,
    decoding) plus the adapter in `path`, from safetensors only.

    Raises:
        AdaptError: pickled adapter weights, no base model named, or an adapter whose shapes do not fit.
    """
    import json

    import peft

    folder = Path(path)
    check_adapter_weights(folder)
    settings = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = settings.get("base_model_name_or_path")
    if not base:
        raise AdaptError(f"{folder / 'adapter_config.json'} names no base_model_name_or_path; set it to the base "
                         "model's folder or Hub id")
    config_file = folder / "adapter_config.json"
    fix = ("set base_model_name_or_path in that file to the base model's folder (an absolute path) or Hub id, "
           "then run the command again")
    if not Path(base).is_dir():  # no Hub round trips for a path that is missing, or offline for an uncached id
        if looks_like_local_path(base):
            raise AdaptError(f"{config_file}: base_model_name_or_path '{base}' is no folder (seen from "
                             f"{Path.cwd()}); {fix}")
        if hub_offline() and not in_hub_cache(base):
            raise AdaptError(f"{config_file}: base_model_name_or_path '{base}' is no folder here (seen from "
                             f"{Path.cwd()}) nor a model in the Hugging Face cache (HF_HUB_OFFLINE is set); {fix}")
        problem = None if hub_offline() or in_hub_cache(base) else hub_model_problem(base)
        if problem:
            raise AdaptError(f"{config_file}: base_model_name_or_path '{base}' is no folder here (seen from "
                             f"{Path.cwd()}) and {problem}; {fix}")
    try:
        model = task.adapter_base_model(folder, base)
    except AdaptError as err:
        if Path(base).is_dir() or not str(err).startswith("cannot load the model"):
            raise  # a base that was found but is unusable: model_load_error said why
        raise AdaptError(f"{config_file}: base_model_name_or_path '{base}' is neither a folder here nor a Hub model "
                         f"that can be loaded; {fix}") from None
    try:
        with quiet_peft():
            model = peft.PeftModel.from_pretrained(model, str(folder))
    except RuntimeError as err:  # size mismatch: an adapter saved without its config (labels) beside it
        raise AdaptError(f"{folder}: the adapter does not fit its base model {base} ({str(err).splitlines()[-1].strip()}); "
                         "the folder needs the config.json `adapt finetune` writes beside the adapter (labels, "
                         "head size): re-run the fine-tuning") from None
    if (folder / "generation_config.json").exists():
        from transformers import GenerationConfig

        model.get_base_model().generation_config = GenerationConfig.from_pretrained(folder)
    return model
