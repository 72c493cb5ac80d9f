"""Terminal output: the live training progress bar and the end-of-run summary table (rich).

User text, label names, paths and file content are always shown literally: the consoles read no rich markup
or emoji codes (so "because [the leads] are" keeps its brackets), and styling is given as styles, not markup."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from adapt.outputs import scalar_metrics

console = Console(stderr=False, markup=False, emoji=False)
error_console = Console(stderr=True, markup=False, emoji=False)


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


def training_progress(enabled: bool = True):
    if not enabled:
        return _Silent()
    return Progress(
        TextColumn("{task.description}", style="bold blue", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("steps"), TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        console=console, transient=False, refresh_per_second=4,
    )


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)


def summary_table(recipe, final: dict, output_dir: Path, metric: str) -> Table:
    table = Table(title=f"adapt finetune: {recipe.name}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    if metric in final.get("initial_validation", {}):
        table.add_row(f"before training: validation {metric}", _fmt(final["initial_validation"][metric]))
    for split in ("validation", "test"):
        for key, value in scalar_metrics(final.get(split, {})).items():
            style = "bold green" if key == metric else None
            table.add_row(f"{split} {key}", _fmt(value), style=style)
    for key in ("train_steps", "train_samples", "train_seconds", "train_samples_per_s", "train_tokens_per_s",
                "trainable_params", "mixed_precision", "best_step"):
        table.add_row(key.replace("_", " "), _fmt(final.get(key)))
    table.caption = f"saved to {output_dir}"
    return table


def recipes_listing(rows: list[tuple[str, ...]]) -> str:
    """Aligned plain-text columns: names, models and data paths are never cut or wrapped mid-word
    (they are what people copy), whatever the terminal width."""
    header = ("recipe", "task", "model", "train data", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in [header, *rows]]
    return "\n".join(lines)


def display_input(given: dict) -> str:
    """The part of a prediction's input a person recognises: its text, question, source or prompt."""
    for key in ("text", "question", "source", "prompt"):
        if isinstance(given.get(key), str):
            return given[key]
    if isinstance(given.get("tokens"), list):
        return " ".join(map(str, given["tokens"]))
    return str(given)


def prediction_table(records: list[dict]) -> Table:
    table = Table(header_style="bold")
    table.add_column("input", overflow="fold", max_width=60)
    table.add_column("prediction", overflow="fold")
    for record in records:
        shown = {k: v for k, v in record.items() if k != "input"}
        text = display_input(record["input"])
        table.add_row(Text(str(text)), Text(", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())))
    return table
