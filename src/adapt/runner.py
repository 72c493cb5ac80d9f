"""Using a finished model: load it with the task that trained it, predict on new inputs, score it on data, export
it (an adapter run merged into a plain checkpoint)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Iterator

from adapt.errors import AdaptError
from adapt.recipe import parse_overrides, recipe_from_dict, resolve_recipe
from adapt.tasks import get_task
from adapt.tasks.base import Task


def trained_task(model_dir: str, recipe: str | None = None, overrides: list[str] = (),
                 trust_remote_code: bool = False) -> Task:
    """The task of a saved model folder, before anything is loaded: the folder's recipe.yaml (an `adapt
    finetune` run), else `recipe` (a plain Hugging Face checkpoint). `trust_remote_code` is the current
    command's flag only (see `load_trained`).

    Raises:
        AdaptError: not a model folder, or no task known (no recipe.yaml and no `recipe`).
    """
    import yaml

    folder = Path(model_dir)
    if not (folder / "config.json").exists() and not (folder / "adapter_config.json").exists():
        raise AdaptError(f"{folder} is not a model folder (no config.json); give the output directory of a run")
    pairs = parse_overrides(list(overrides))
    if recipe:
        resolved = resolve_recipe(recipe, pairs)
    elif (folder / "recipe.yaml").exists():
        raw = yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8"))
        from adapt.recipe import apply_override

        for key, value in pairs:
            apply_override(raw, key, value)
        from adapt.recipe import override_origins

        resolved = recipe_from_dict(raw, str(folder / "recipe.yaml"), override_origins(pairs))
    else:
        raise AdaptError(f"{folder} has no recipe.yaml (not trained by adapt); pass --recipe to say which task it is")
    resolved.model = str(folder)
    resolved.trust_remote_code = trust_remote_code
    return get_task(resolved)


def load_trained(model_dir: str, recipe: str | None = None, overrides: list[str] = (),
                 trust_remote_code: bool = False) -> tuple[Task, Any]:
    """The task and model for a folder written by `adapt finetune` (its recipe.yaml says the task) or a
    plain Hugging Face checkpoint given `recipe`; `embedded:NAME` names the embedded checkpoint
    (`assets.resolve_model_path`), for `adapt predict`, `adapt eval` and `adapt serve` alike.

    Code shipped in the folder runs only when `trust_remote_code` (the current command's --trust-remote-code)
    is true: a `trust_remote_code: true` in the folder's own recipe.yaml, a recipe file or an override is ignored,
    so a downloaded run folder cannot switch it on. Weights load from safetensors only (adapters included).

    Raises:
        AdaptError: not a model folder, no task known, pickle-only weights, remote code needed without the flag.
    """
    from adapt import assets

    folder = Path(assets.resolve_model_path(model_dir))
    task = trained_task(str(folder), recipe, overrides, trust_remote_code)
    task.load_tokenizer(str(folder))
    model = task.load_trained(str(folder))
    from adapt import speed
    from adapt.tasks.base import check_finite_weights

    check_finite_weights(model, str(folder))  # NaN weights would predict NaN scores and a constant label

    model = speed.prepare_model(model, task, task.recipe.train)
    task.restore_from_model(model)
    speed.setup_done()
    return task, model


def predict_stream(task: Task, model, inputs: Iterable[str], batch_size: int = 64, chunk: int = 2048,
                   accelerator=None) -> Iterator[dict]:
    """Predictions for a stream of text inputs, `chunk` at a time, so large inputs never sit in memory whole.
    `accelerator`: one kept by the caller for many calls (`adapt serve`), `model` already on its device;
    by default a new one (`train.make_accelerator`) and the model moved to its device."""
    from adapt.train import make_accelerator, predict

    if accelerator is None:
        accelerator = make_accelerator()
        model = model.to(accelerator.device)
    buffer: list[str] = []

    def flush():
        raw = task.inputs_from_texts(buffer)
        features = task.featurize(raw, "predict")
        for row, prediction in zip(raw.to_list(), predict(task, model, features, raw, accelerator, batch_size)):
            yield {"input": row, **prediction}

    for line in inputs:
        buffer.append(line)
        if len(buffer) >= chunk:
            yield from flush()
            buffer = []
    if buffer:
        yield from flush()


def finite_records(records: Iterator[dict], model: str) -> Iterator[dict]:
    """The prediction records of `predict_stream`, refusing one that holds a NaN/inf number (a score JSON cannot
    carry); `adapt predict` and `adapt serve` both pass their records through it.

    Raises:
        AdaptError: naming the model folder, the input's number (1-based) and the field."""
    def bad(value) -> bool:
        if isinstance(value, dict):
            return any(bad(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return any(bad(v) for v in value)
        if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a numpy/torch scalar
            value = value.item()
        return isinstance(value, float) and not math.isfinite(value)

    for number, record in enumerate(records, start=1):
        field = next((key for key, value in record.items() if key != "input" and bad(value)), None)
        if field is not None:
            raise AdaptError(f"{model}: input {number} got a non-finite '{field}' ({record[field]!r}); the model's "
                             "weights or outputs hold NaN/inf: retrain it (or use an earlier checkpoint)")
        yield record


def json_value(value: Any):
    """`json.dumps(..., default=json_value)`: numpy/torch scalars as Python numbers, anything else as its str."""
    return value.item() if hasattr(value, "item") else str(value)


def evaluate_model(model_dir: str, data: str | None, recipe: str | None, overrides: list[str],
                   trust_remote_code: bool = False) -> dict:
    """Score a trained model on a labelled data file/Hub split with its task's metrics (remote code only with
    `trust_remote_code`, the current command's flag)."""
    from adapt import data as data_files
    from adapt.train import evaluate, make_accelerator

    if data and data_files.is_local(data) and not Path(data).exists():  # found before the model loads
        raise AdaptError(f"--data {data}: no such file; give a labelled data file (or a Hub dataset id)")
    task, model = load_trained(model_dir, recipe, overrides, trust_remote_code)
    source = data or task.recipe.data.test or task.recipe.data.validation
    if not source:
        raise AdaptError("no evaluation data: pass --data FILE (or a Hub id)")
    raw = task.read_source(source, task.recipe.data.test_split)
    cap = task.recipe.data.max_eval_examples  # the same first-N cut that training applies to its eval splits
    if cap and len(raw) > cap:
        raw = raw.select(range(cap))
    features = task.featurize(raw, "eval")
    accelerator = make_accelerator()
    model = model.to(accelerator.device)
    metrics, predictions = evaluate(task, model, features, raw, accelerator, task.recipe.train.eval_batch_size)
    return {"metrics": metrics, "predictions": task.example_predictions(predictions, raw), "data": source,
            "label_names": getattr(task, "label_names", None)}  # id order, for evaluate modules taking label ids


def check_export_target(run_dir: Path, target: Path, overwrite: bool) -> None:
    """Refuse, before anything is loaded or written, an export folder that would destroy a run or files adapt
    did not write: `target` equal to, inside, or holding `run_dir`; a file; a non-empty folder without
    `overwrite`; with `overwrite`, a folder that is neither an adapt export nor an adapt run (the rule of
    `adapt finetune --overwrite`, adapt.rundir). The export itself is built beside `target` and swapped in.

    Raises:
        AdaptError: naming --output and the fix.
    """
    from adapt import rundir

    source, output = run_dir.resolve(), target.resolve()
    where = ("is the run folder" if output == source else "is inside the run folder" if output.is_relative_to(source)
             else "holds the run folder" if source.is_relative_to(output) else None)
    if where:
        raise AdaptError(f"--output {target} {where} {run_dir}; exporting there would replace or alter the run: "
                         "choose an --output outside it")
    if target.exists() and not target.is_dir():
        raise AdaptError(f"--output {target} is a file; choose a folder path for the exported checkpoint")
    if not rundir.has_content(target):
        return
    if not overwrite:
        raise AdaptError(f"output directory {target} is not empty; pass --overwrite or choose another --output")
    if not (rundir.is_adapt_export(target) or rundir.is_adapt_run(target)):
        raise AdaptError(f"--overwrite: {target} is not an adapt export or run (no adapt recipe.yaml beside a model), "
                         "so adapt will not delete it; remove it yourself or choose another --output")


def merge_adapter(run_dir: str, output_dir: str, overwrite: bool = False) -> Path:
    """Write the base model with the adapter folded in: a plain checkpoint needing neither peft nor adapt.
    The folder is built beside `output_dir` and swapped in once complete (see `check_export_target` for what
    may be replaced).

    Raises:
        AdaptError: no adapter in `run_dir`, or an `output_dir` that `check_export_target` refuses.
    """
    import yaml

    from adapt import outputs

    target = Path(output_dir)
    if not (Path(run_dir) / "adapter_config.json").exists():
        raise AdaptError(f"{run_dir} holds no adapter (no adapter_config.json); only LoRA/peft runs can be merged")
    check_export_target(Path(run_dir), target, overwrite)
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
