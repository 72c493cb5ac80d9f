"""Parameter-efficient fine-tuning with `peft`: LoRA with per-architecture target modules, any other peft
method by name, adapter loading, and merging an adapter into a plain checkpoint."""

from __future__ import annotations

from pathlib import Path

from adapt.errors import AdaptError
from adapt.recipe import PeftConfig

# Linear layers LoRA adapts by default, by `config.model_type`.
DEFAULT_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "t5": ["q", "k", "v", "o", "wi", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "marian": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}

# adapt task -> peft task type (decides which heads stay trainable and how the adapter reloads)
PEFT_TASK_TYPES = {
    "classification": "SEQ_CLS", "ner": "TOKEN_CLS", "qa": "QUESTION_ANS", "clm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM",
}


def peft_config(model, cfg: PeftConfig, task_name: str):
    import peft

    task_type = PEFT_TASK_TYPES.get(task_name)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type == "encoder-decoder":
        model_type = model.config.encoder.model_type
    targets = cfg.target_modules or DEFAULT_TARGETS.get(model_type)
    if cfg.method == "lora":
        if targets is None:
            raise AdaptError(f"peft.target_modules: no default LoRA targets for model type '{model_type}'; "
                             "list the linear layer names to adapt (e.g. peft.target_modules=[q_proj,v_proj])")
        return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                               task_type=task_type, **cfg.options)
    options = dict(cfg.options)
    if targets is not None and "target_modules" not in options and cfg.method in ("loha", "lokr", "ia3", "adalora", "boft", "vera"):
        options["target_modules"] = targets
    try:
        return peft.get_peft_config({"peft_type": cfg.method.upper(), "task_type": task_type, **options})
    except (KeyError, ValueError, TypeError) as err:
        raise AdaptError(f"peft.method '{cfg.method}': {err}; see the peft documentation for its options") from None


def wrap_with_peft(model, cfg: PeftConfig, task_name: str):
    """The model with only adapter (and task-head) weights trainable."""
    import peft

    return peft.get_peft_model(model, peft_config(model, cfg, task_name))


def peft_auto_class(auto_class: str):
    """transformers' AutoModelForX -> peft's AutoPeftModelForX."""
    import peft

    name = "AutoPeftModel" + auto_class[len("AutoModel"):]
    if not hasattr(peft, name):
        raise AdaptError(f"peft has no {name} to load this adapter")
    return getattr(peft, name)


def load_adapter_model(path: str, task):
    return peft_auto_class(task.auto_class).from_pretrained(path, use_safetensors=True)


def merge_adapter(run_dir: str, output_dir: str, overwrite: bool = False) -> Path:
    """Write the base model with the adapter folded in: a plain checkpoint needing neither peft nor adapt."""
    import yaml

    from adapt import outputs
    from adapt.runner import load_trained

    target = Path(output_dir)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise AdaptError(f"output directory {target} is not empty; pass --overwrite or choose another --output")
    if not (Path(run_dir) / "adapter_config.json").exists():
        raise AdaptError(f"{run_dir} holds no adapter (no adapter_config.json); only LoRA/peft runs can be merged")
    task, model = load_trained(run_dir)
    merged = model.merge_and_unload()
    with outputs.AtomicDir(target) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        task.tokenizer.save_pretrained(tmp)
        recipe = task.recipe.model_dump(mode="json")
        recipe["peft"] = None
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        for name in ("README.md",):
            if (Path(run_dir) / name).exists():
                (tmp / name).write_text((Path(run_dir) / name).read_text().replace("library_name: peft", "library_name: transformers"))
    return target
