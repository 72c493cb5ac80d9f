"""`adapt runs`: find finished runs (folders holding metrics.json and recipe.yaml) and summarise each."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import yaml

from adapt.errors import AdaptError

RUN_FILES = ("metrics.json", "recipe.yaml")
SKIPPED_FOLDERS = {"checkpoints", "tensorboard"}  # never hold a run; not worth walking


def find_run_dirs(root: Path) -> list[Path]:
    """Run folders under root (root itself included), at any depth."""
    found = []
    stack = [root]
    while stack:
        folder = stack.pop()
        if all((folder / name).is_file() for name in RUN_FILES):
            found.append(folder)
        stack += [p for p in folder.iterdir() if p.is_dir() and p.name not in SKIPPED_FOLDERS
                  and not p.name.startswith(".")]
    return found


def key_metric(metrics: dict[str, Any]) -> tuple[str | None, float | None]:
    """The metric the run selected its best checkpoint by (the loop writes it as `best_<name>`), with its
    final validation value."""
    names = [k[len("best_"):] for k in metrics if k.startswith("best_") and k != "best_step"]
    if not names:
        return None, None
    value = metrics.get("validation", {}).get(names[0], metrics[f"best_{names[0]}"])
    return names[0], value


def summarize_run(folder: Path) -> dict[str, Any]:
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        recipe = yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8")) or {}
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        return {"path": str(folder), "name": folder.name, "error": f"unreadable run files ({type(err).__name__})"}
    metric, value = key_metric(metrics)
    finished = dt.datetime.fromtimestamp((folder / "metrics.json").stat().st_mtime)
    return {
        "path": str(folder),
        "name": recipe.get("name", folder.name),
        "task": recipe.get("task"),
        "model": recipe.get("model"),
        "steps": metrics.get("train_steps"),
        "wall_seconds": metrics.get("wall_seconds"),
        "metric": metric,
        "value": value,
        "date": finished.isoformat(timespec="seconds"),
    }


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run under root, newest first."""
    root = Path(root)
    if not root.is_dir():
        raise AdaptError(f"runs directory {root} does not exist; pass the folder your runs were written to")
    runs = [summarize_run(folder) for folder in find_run_dirs(root)]
    return sorted(runs, key=lambda r: r.get("date", ""), reverse=True)


def runs_table(runs: list[dict[str, Any]], root: Path):
    from rich.table import Table

    table = Table(title=f"adapt runs in {root}", header_style="bold")
    for column, justify in (("run", "left"), ("task", "left"), ("model", "left"), ("steps", "right"),
                            ("wall time", "right"), ("validation metric", "right"), ("date", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for run in runs:
        if "error" in run:
            table.add_row(run["path"], "-", "-", "-", "-", run["error"], "-")
            continue
        wall = run["wall_seconds"]
        metric = f"{run['metric']} {run['value']:.4f}" if isinstance(run["value"], (int, float)) else "-"
        table.add_row(run["path"], str(run["task"]), str(run["model"]), str(run["steps"]),
                      format_duration(wall) if wall is not None else "-", metric, run["date"].replace("T", " "))
    return table


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
