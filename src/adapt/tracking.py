"""Experiment trackers, through Accelerate's tracker API: the recipe's `tracking` list (default ["tensorboard"];
also "mlflow", "wandb", or any other Accelerate tracker name; [] for none).

Every tracker gets the same record of a run: params = the resolved recipe (flattened to dotted keys, e.g.
`train.lr`), the metrics that `train_log.jsonl` holds (`train/loss`, `eval/accuracy`, ... per optimizer step),
the final validation/test scores (`final/validation/...`), and the model card README.md as an artefact.

Where each one writes:
- tensorboard: `<run>/tensorboard/` (hparams, scalars, the card as the text summary `model_card`);
- mlflow: the store named by MLFLOW_TRACKING_URI, else the local file store `<runs folder>/mlruns` beside the run
  folder (`mlflow ui --backend-store-uri file:runs/mlruns`; for a file store adapt sets MLflow 3's opt-in
  MLFLOW_ALLOW_FILE_STORE=true unless it is set); experiment = the recipe's name, run name = the run folder's
  name; the card is the run artefact `README.md`;
- wandb: W&B project = the recipe's name, files under `<run>/wandb/` (WANDB_MODE=offline keeps them there for a
  later `wandb sync`); the card is the artefact `<recipe>-model-card` (type "model-card").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from adapt.recipe import Recipe

CARD_ARTIFACT_TYPE = "model-card"


def recipe_params(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as tracker params: nested fields flattened to dotted keys ("train.lr"); numbers,
    strings and booleans as they are, lists and None as their JSON text (TensorBoard's hparams and MLflow's
    params take only scalars)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value)

    walk("", recipe.model_dump(mode="json"))
    return flat


def mlflow_tracking_uri(output_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else the local file store `runs folder/mlruns` (beside the run folder)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"file:{Path(output_dir).resolve().parent / 'mlruns'}"


def log_with(recipe: Recipe, output_dir: Path) -> list | None:
    """Accelerate's `log_with` for the recipe's trackers: MLflow and W&B as tracker objects named after the recipe
    and the run folder (see the module docstring), any other tracker by its name. None for no tracking."""
    if not recipe.tracking:
        return None
    from accelerate.tracking import MLflowTracker, WandBTracker

    trackers: list = []
    for name in recipe.tracking:
        if name == "mlflow":
            import mlflow

            uri = mlflow_tracking_uri(output_dir)
            if uri.startswith("file:") or "://" not in uri:  # MLflow 3 wants this opt-in for its file store
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(uri)
            trackers.append(MLflowTracker(experiment_name=recipe.name, run_name=Path(recipe.output_dir).name))
        elif name == "wandb":
            trackers.append(WandBTracker(recipe.name, dir=str(output_dir), name=Path(recipe.output_dir).name))
        else:
            trackers.append(name)
    return trackers


def start(accelerator, recipe: Recipe) -> None:
    """Start the accelerator's trackers with the resolved recipe as params (`recipe_params`)."""
    if recipe.tracking:
        accelerator.init_trackers("tensorboard" if "tensorboard" in recipe.tracking else recipe.name,
                                  config=recipe_params(recipe))


def finish(accelerator, recipe: Recipe, final: dict[str, Any], card: Path, step: int) -> None:
    """Log the run's final validation/test scores (`final/validation/<metric>`, `final/test/<metric>`) at `step`
    and the model card `card` as an artefact to every started tracker (main process only, as Accelerate's
    trackers are), then finish the trackers (what `accelerator.end_training()` does besides ending the process
    group, which `train.finetune` ends only once the model is freed)."""
    if not recipe.tracking or not accelerator.is_main_process:
        return
    scores = {f"final/{split}/{key}": value for split in ("validation", "test")
              for key, value in (final.get(split) or {}).items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)}
    if scores:
        accelerator.log(scores, step=step)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_text("model_card", card.read_text(encoding="utf-8"), global_step=step)
            tracker.writer.flush()
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_artifact(str(card), run_id=tracker.active_run.info.run_id)
        elif tracker.name == "wandb":
            import wandb

            artifact = wandb.Artifact(f"{recipe.name}-model-card", type=CARD_ARTIFACT_TYPE)
            artifact.add_file(str(card), name="README.md")
            tracker.run.log_artifact(artifact)
    for tracker in accelerator.trackers:
        tracker.finish()
