"""Recipes: typed schema, YAML loading, `key=value` overrides, and writing the resolved recipe."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapt.errors import AdaptError

# Recipes live at the repository root (`recipes/`); the package is installed editable by the Makefile.
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Columns(Strict):
    """Which columns of the raw data hold what; each task reads the ones it needs."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    target: str = "target"


class DataConfig(Strict):
    train: str | None = Field(None, description="train data: a local file, a Hub dataset id or embedded:NAME")
    validation: str | None = Field(None, description="validation data; carved from train when absent")
    test: str | None = Field(None, description="optional test data, scored after training")
    hub_config: str | None = Field(None, description="Hub dataset configuration name")
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    columns: Columns = Columns()
    label_names: list[str] | None = Field(
        None, description="names for integer labels 0..N-1 (e.g. [negative, positive])"
    )
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)


class TrainConfig(Strict):
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(32, ge=1, description="examples per optimizer step per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    eval_batch_size: int = Field(256, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    max_length: int = Field(128, ge=8)
    eval_steps: int | None = Field(None, ge=1, description="evaluate every N steps (and always at the end)")
    eval_on_start: bool = Field(False, description="also score the untrained model first: the baseline, "
                                                   "reported as initial_validation")
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N steps (and at the end)")
    save_total_limit: int = Field(2, ge=1, description="keep the last K step checkpoints")
    metric_for_best: str | None = Field(None, description="metric picking the best checkpoint; task default")
    greater_is_better: bool | None = None
    early_stopping_patience: int | None = Field(None, ge=1)
    seed: int = 42
    mixed_precision: Literal["auto", "bf16", "bf16-master", "fp16", "no"] = Field(
        "auto", description="bf16/fp16: autocast; bf16-master: bf16 weights, fp32 master weights in the optimizer; "
                            "auto: bf16 on GPUs, bf16-master on CPUs with native bf16, else no")
    group_by_length: bool = True
    gradient_checkpointing: bool = False
    padding_free: bool = Field(True, description="BERT-family encoders: linear layers, norms, dropout (and on CPU "
                                                 "attention) run on real tokens only (see adapt.padding_free); "
                                                 "other models ignore it")
    compile: bool = False
    log_steps: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        return "no" if value is False else value  # YAML reads a bare `no` as false


class PeftConfig(Strict):
    method: str = Field("lora", description="any peft method name: lora, ia3, loha, ...")
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | str | None = Field(None, description="default: per architecture")
    options: dict[str, Any] = {}


class Recipe(Strict):
    name: str = "custom"
    description: str = ""
    task: str
    model: str = Field(..., description="Hub id, local directory, or embedded:NAME")
    tokenizer: str | None = None
    trust_remote_code: bool = False
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    task_options: dict[str, Any] = Field({}, description="task-specific settings, validated by the task")
    peft: PeftConfig | None = None
    output_dir: str | None = Field(None, description="default: runs/<recipe name>")
    tracking: list[str] = Field(["tensorboard"], description="accelerate trackers")


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; see `adapt recipes show` for the valid keys"
    return f"{source}: bad value for '{key}': {first['msg']}"


def available_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def load_recipe_dict(name_or_path: str) -> tuple[dict[str, Any], str]:
    """Read a recipe by name (from the packaged recipes) or by path to a YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        recipes = available_recipes()
        if name_or_path not in recipes:
            raise AdaptError(
                f"unknown recipe '{name_or_path}'; choose one of {', '.join(recipes)} or give a path to a YAML file"
            )
        path = recipes[name_or_path]
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise AdaptError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise AdaptError(f"{path}: a recipe must be a YAML mapping of keys to values")
    raw.setdefault("name", path.stem)
    return raw, str(path)


def apply_override(raw: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating intermediate mappings (the schema then validates it)."""
    node = raw
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise AdaptError(f"override '{dotted_key}': '{part}' is not a section")
        node = child
    node[leaf] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`key=value` strings; values are parsed as YAML scalars/lists so `lr=3e-5` is a float."""
    parsed = []
    for item in items:
        if "=" not in item:
            raise AdaptError(f"override '{item}' is not of the form key=value (e.g. train.lr=3e-5)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
            value = float(value)  # YAML 1.1 wants a dot in floats, so it reads 3e-5 as a string
        parsed.append((key.strip(), value))
    return parsed


def resolve_recipe(name_or_path: str, overrides: list[tuple[str, Any]] = ()) -> Recipe:
    raw, source = load_recipe_dict(name_or_path)
    for key, value in overrides:
        apply_override(raw, key, value)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise AdaptError(_format_validation_error(err, source)) from None
    if recipe.output_dir is None:
        recipe.output_dir = str(Path("runs") / recipe.name)
    return recipe


def recipe_from_dict(raw: dict[str, Any], source: str) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise AdaptError(_format_validation_error(err, source)) from None


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


# command-line flags shared by finetune, data inspect and estimate -> recipe keys
FLAG_KEYS = {
    "model": "model", "data": "data.train", "validation": "data.validation", "test": "data.test",
    "epochs": "train.epochs", "lr": "train.lr", "batch_size": "train.batch_size", "max_steps": "train.max_steps",
    "output_dir": "output_dir", "seed": "train.seed", "max_train_examples": "data.max_train_examples",
    "eval_steps": "train.eval_steps", "save_steps": "train.save_steps", "grad_accum": "train.grad_accum",
}


def resolve_with_flags(name_or_path: str, flags: dict[str, Any], overrides: list[str] | None) -> Recipe:
    """A recipe with the set command-line flags applied, then the `key=value` overrides (which win)."""
    pairs = [(FLAG_KEYS[k], v) for k, v in flags.items() if v is not None]
    return resolve_recipe(name_or_path, pairs + parse_overrides(list(overrides or [])))
