"""Recipes: typed schema, YAML loading, `key=value` overrides, and writing the resolved recipe."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from adapt.errors import AdaptError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; importlib.abc.Traversable before

# The named recipes ship inside the package (src/adapt/recipes/*.yaml, package data in pyproject.toml), found
# through importlib.resources so that a wheel install has them too, not only a source checkout.
RECIPES_DIR: Traversable = files("adapt") / "recipes"
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class Strict(BaseModel):
    # allow_inf_nan=False: `train.lr=.inf` (or nan) is refused here, before any work, not trained into NaN weights
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info) -> Any:
        """Refuse true/false for an int or float field: pydantic's lax mode reads `train.seed=true` as 1."""
        if isinstance(value, bool):
            annotation = cls.model_fields[info.field_name].annotation
            kinds = set(get_args(annotation) or (annotation,))
            if bool not in kinds and kinds & {int, float}:
                raise ValueError(f"Input should be a number, not {str(value).lower()}")
        return value


class Columns(Strict):
    """Which columns of the raw data hold what; each task reads the ones it needs."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    target: str = "target"
    # question answering (flat JSONL/CSV/Parquet files and Hub datasets; SQuAD JSON files use SQuAD's keys)
    question: str = "question"
    context: str = "context"
    answers: str = "answers"
    # seq2seq: more reference columns scored beside `target` (multi-reference BLEU/chrF/ROUGE), e.g. [ref2, ref3]
    references: list[str] = []


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
    delimiter: Literal[",", "\t"] | None = Field(
        None, description="field separator of CSV/TSV data files; default by suffix (.csv comma, .tsv tab)")
    header_names: list[str] | None = Field(
        None, min_length=1, description="CSV/TSV files without a header line: their field names in order (later fields ignored)")
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
                            "auto: bf16-master (bf16 without train.speed_layer) on GPUs and CPUs with native "
                            "bf16, else no")
    group_by_length: bool = True
    gradient_checkpointing: bool = False
    speed_layer: bool = Field(True, description="adapt's speed layer (adapt.speed): bf16 master weights, fused "
                                                "AdamW, padding-free batches, native CPU kernels; false trains with "
                                                "plain PyTorch AdamW, transformers' forward and autocast")
    padding_free: bool = Field(True, description="with the speed layer: batches flattened to real tokens only, "
                                                 "attention per sequence, for architectures whose attention goes "
                                                 "through transformers' registry (adapt.speed.padding_free)")
    compile: bool = False
    log_steps: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        return "no" if value is False else value  # YAML reads a bare `no` as false


class PeftConfig(Strict):
    method: str = Field("lora", description="any peft method name: lora, ia3, loha, ...")
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1)
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
    # not a setting: what the command line changed about the scored data (see resolve_with_flags)
    _data_note: str | None = PrivateAttr(None)

    @property
    def data_note(self) -> str | None:
        return self._data_note

    @data_note.setter
    def data_note(self, note: str | None) -> None:
        self._data_note = note


def _format_validation_error(err: ValidationError, source: str, origins: dict[str, str] | None = None) -> str:
    """One line for the first schema error. `origins` maps a dotted key to where its value came from on the
    command line (`override train.lr=inf`, `--lr inf`); such a key is blamed on that, not on the recipe file."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    origin = next((origins[k] for k in (origins or {}) if key == k or key.startswith(k + ".")), None)
    where = origin or source
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key '{key}'; see `adapt recipes show` for the valid keys"
    return f"{where}: bad value for '{key}': {first['msg'].removeprefix('Value error, ')}"


def available_recipes() -> dict[str, Traversable]:
    """{name: file} of the recipes shipped in the package (`RECIPES_DIR/*.yaml`), sorted by name. A file is a
    `pathlib.Path` for an installed or editable package, another `Traversable` for a zipped one."""
    found = {f.name.removesuffix(".yaml"): f for f in RECIPES_DIR.iterdir() if f.name.endswith(".yaml") and f.is_file()}
    return dict(sorted(found.items()))


def recipe_path(name_or_path: str) -> Path | Traversable:
    """The YAML file a recipe name (one of the packaged recipes) or path refers to.

    Raises AdaptError naming the fix when the name is unknown, the path is missing or is a directory."""
    recipes = available_recipes()
    path = Path(name_or_path)
    path_like = path.suffix in (".yaml", ".yml") or "/" in name_or_path or "\\" in name_or_path
    if name_or_path in recipes and not path_like:
        return recipes[name_or_path]
    if path.is_dir():
        inside = next((f for f in (path / "recipe.yaml", path / "recipe.yml") if f.is_file()), None)
        hint = f" (e.g. {inside})" if inside else ""
        raise AdaptError(f"recipe {path} is a directory, not a recipe file; give the path of a recipe YAML file"
                         f"{hint} or a recipe name ({', '.join(recipes)})")
    if path.is_file():
        return path
    if path_like:
        raise AdaptError(f"recipe file {path} does not exist; check the path, or use a recipe name "
                         f"({', '.join(recipes)})")
    raise AdaptError(
        f"unknown recipe '{name_or_path}'; choose one of {', '.join(recipes)} or give a path to a YAML file"
    )


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (YAML forbids it;
    PyYAML would silently keep the last value, dropping e.g. a whole earlier `train:` section)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: the schema reports it
            if key in seen:
                raise _DuplicateKey(f"line {line}: key '{key}' is given twice (also on line {seen[key]}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_recipe_dict(name_or_path: str) -> tuple[dict[str, Any], str]:
    """Read a recipe by name (from the packaged recipes) or by path to a YAML file.

    Raises AdaptError (one line naming the file and the fix) for a missing file, a directory, a file that is
    not UTF-8 text, not YAML, or not a mapping of keys to values."""
    path = recipe_path(name_or_path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise AdaptError(f"{path}: line {line}: not UTF-8 text (byte 0x{err.object[err.start]:02x}); a recipe is a "
                         "UTF-8 YAML file: re-save it as UTF-8") from None
    except OSError as err:
        raise AdaptError(f"{path}: cannot read the recipe ({err.strerror}); check the path and its "
                         "permissions") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise AdaptError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise AdaptError(f"{path}: {where}not valid YAML ({problem}); fix the YAML syntax "
                         "(see `adapt recipes show sentiment` for an example)") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AdaptError(f"{path}: a recipe must be a YAML mapping of keys to values (e.g. `task: classification`), "
                         f"not a {type(raw).__name__}")
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
    """`key=value` strings -> [(dotted key, value)], in order.

    A key the schema types as text (`str` or `str | None`, see `_field_kinds`; for `task_options.NAME`, the type
    the tasks' Options declare) takes the text after the first `=` as is, spaces included: a `: `, `#`, leading
    `[` or inner quote is part of it (`task_options.source_prefix=summarize: ` gives "summarize: "). Two
    exceptions: a value wholly in YAML quotes is unquoted (`"summarize: "` -> summarize: , `"null"` -> null), and
    a YAML null (`null`, `~` or nothing) unsets an optional text key (None); for a `str`-only key it is text.
    Every other value is parsed as YAML: `train.lr=3e-5` is a float, `true` a bool, `[a, b]` a list, `{k: v}` a
    mapping, `null` None.

    Raises:
        AdaptError: an item without `=`, or without a key (or a key part) before it.
    """
    parsed = []
    for item in items:
        if "=" not in item:
            raise AdaptError(f"override '{item}' is not of the form key=value (e.g. train.lr=3e-5)")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or not all(part.strip() for part in key.split(".")):
            raise AdaptError(f"override '{item}' has no key{' before =' if not key else ' part between dots'}; "
                             "write section.key=value (e.g. train.lr=3e-5)")
        kinds = _field_kinds(key)
        if kinds and kinds - {type(None)} == {str}:
            parsed.append((key, _text_value(text, optional=type(None) in kinds)))
        else:
            parsed.append((key, _yaml_value(text)))
    return parsed


_YAML_NULLS = {"", "null", "Null", "NULL", "~"}


def _text_value(text: str, optional: bool) -> str | None:
    """The value of a text key's override `text` (see `parse_overrides`): as typed, unless wholly in YAML quotes
    (then unquoted) or, for an `optional` key, a YAML null (then None)."""
    stripped = text.strip()
    if optional and stripped in _YAML_NULLS:
        return None
    if len(stripped) >= 2 and stripped[0] in "'\"" and stripped[-1] == stripped[0]:
        try:
            unquoted = yaml.safe_load(stripped)
        except yaml.YAMLError:  # `"a" and "b"`: quotes inside the text, not around it
            unquoted = None
        if isinstance(unquoted, str):
            return unquoted
    return text


def _yaml_value(text: str) -> Any:
    """The value of a non-text key's override `text`, parsed as YAML (a number, bool, list, mapping, null)."""
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    if value is None and text.strip() not in _YAML_NULLS:
        value = text.strip()  # YAML read it as a comment (`peft.target_modules=#1`): keep the text
    elif isinstance(value, str) and "#" in text and "#" not in value:
        value = text.strip()  # a trailing ` #...` that YAML dropped as a comment is part of the value
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 wants a dot in floats, so it reads 3e-5 as a string
    return value


def override_origins(pairs: list[tuple[str, Any]], label: str = "override") -> dict[str, str]:
    """{dotted key: "override key=value"} for messages that blame a bad value on the command line."""
    def shown(value: Any) -> str:
        if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and value == value and abs(value) != float("inf")):
            return str(value)  # 3e-05, not YAML's 3.0e-05
        return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()  # true, null, .inf, [a, b]

    return {key: f"{label} {key}={shown(value)}" for key, value in pairs}


def _field_kinds(dotted_key: str) -> set[Any]:
    """The types the recipe schema allows for `a.b.c`: the members of its annotation's union (`str | None` ->
    {str, NoneType}; `list[str]` -> {list[str]}), empty for an unknown key or one inside a free mapping.

    `task_options.NAME` has the union over every registered task whose Options declare NAME (the task of the
    recipe is not known yet when overrides are parsed; it imports the task modules). Today no two tasks give one
    option different types; if they did, the key would not count as text and its value would be parsed as YAML."""
    *parents, leaf = dotted_key.split(".")
    if parents == ["task_options"]:
        from adapt.tasks import TASKS, task_class

        fields = [task_class(name).Options.model_fields.get(leaf) for name in TASKS]
    else:
        model: type[BaseModel] = Recipe
        for part in parents:
            sections = [t for t in _union_members(model.model_fields[part].annotation)
                        if isinstance(t, type) and issubclass(t, BaseModel)] if part in model.model_fields else []
            if not sections:
                return set()
            model = sections[0]
        fields = [model.model_fields.get(leaf)]
    return {kind for field in fields if field is not None for kind in _union_members(field.annotation)}


def _union_members(annotation: Any) -> tuple[Any, ...]:
    """(str, NoneType) for `str | None` or `Optional[str]`; (annotation,) for anything else (`list[str]` too)."""
    return get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)


def resolve_recipe(name_or_path: str, overrides: list[tuple[str, Any]] = ()) -> Recipe:
    raw, source = load_recipe_dict(name_or_path)
    return _resolve(raw, source, overrides)


def _resolve(raw: dict[str, Any], source: str, overrides, origins: dict[str, str] | None = None) -> Recipe:
    """The validated recipe `raw` with `overrides` applied. A schema error in an overridden key names the
    override (`origins`, by default `override KEY=VALUE` for each pair) instead of the recipe file."""
    overrides = list(overrides)
    for key, value in overrides:
        apply_override(raw, key, value)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        origins = override_origins(overrides) if origins is None else origins
        raise AdaptError(_format_validation_error(err, source, origins)) from None
    if recipe.output_dir is None:
        recipe.output_dir = str(Path("runs") / recipe.name)
    return recipe


def recipe_from_dict(raw: dict[str, Any], source: str, origins: dict[str, str] | None = None) -> Recipe:
    """The validated recipe of `raw` read from `source`; `origins` as in `_format_validation_error`."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise AdaptError(_format_validation_error(err, source, origins)) from None


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
    """A recipe with the set command-line flags applied, then the `key=value` overrides (which win).

    When the command line replaces the recipe's training data (`--data` or data.train=...), the recipe's
    own validation and test files go with it (they belong to the recipe's default data): validation is then
    carved from the new training data, and there is no test split, unless the command line also gives
    --validation / --test (or data.validation= / data.test=). Whenever the command line sets the training
    data, the recipe carries a one-line note of the data the run scores (`Recipe.data_note`), which
    `adapt.train` prints once every check has passed (so that a refused run prints only its error)."""
    pairs = [(FLAG_KEYS[k], v) for k, v in flags.items() if v is not None]
    origins = {FLAG_KEYS[k]: f"--{k.replace('_', '-')} {v}" for k, v in flags.items() if v is not None}
    pairs += parse_overrides(list(overrides or []))
    origins.update(override_origins(pairs[len(origins):]))
    raw, source = load_recipe_dict(name_or_path)
    given = {key for key, _ in pairs}
    own = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    dropped = {}
    if "data.train" in given and dict(pairs)["data.train"] != own.get("train"):
        for role in ("validation", "test"):
            if f"data.{role}" not in given and own.get(role):
                dropped[role] = own[role]
                pairs.append((f"data.{role}", None))
    recipe = _resolve(raw, source, pairs, origins)
    if "data.train" in given:
        recipe.data_note = scored_data_note(recipe, dropped)
    return recipe


def scored_data_note(recipe: Recipe, dropped: dict[str, str]) -> str:
    """One line: the data a run trains on, validates on and tests on, and the recipe files it no longer uses."""
    from adapt import assets, data

    cfg = recipe.data
    if cfg.validation:
        validation = cfg.validation
    elif cfg.train and (data.is_local(cfg.train) or assets.is_embedded(cfg.train)):
        validation = f"a seeded {cfg.validation_fraction:.0%} of {cfg.train} held out"
    else:
        validation = f"the '{cfg.validation_split}' split of {cfg.train}"
    note = f"note: training on {cfg.train}; validation: {validation}; test: {cfg.test or 'none'}"
    if dropped:
        files = " and ".join(f"{role} file {ref}" for role, ref in dropped.items())
        flags = " / ".join(f"--{role} FILE" for role in dropped)
        note += (f" (not the recipe's own {files}, which go with its default training data; pass {flags} "
                 "to choose)")
    return note
