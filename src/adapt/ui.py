"""Terminal output: the training progress (a live rich bar on a terminal, plain lines in logs) and the end-of-run
summary table (rich).

User text, label names, paths and file content are always shown literally: the consoles read no rich markup
or emoji codes (so "because [the leads] are" keeps its brackets), and styling is given as styles, not markup."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

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


def training_progress(enabled: bool = True, output: Console | None = None,
                      clock: Callable[[], float] = time.monotonic):
    """The training loop's progress display, a context manager with rich's `Progress` interface as adapt.train uses
    it: `add_task(description, total=, completed=, status=)` -> task id, `update(task_id, completed=, status=)`.

    On an interactive terminal (or Jupyter), a live rich bar. Anywhere else (CI logs, `adapt finetune > log.txt`),
    where a live bar can only be printed once, cut to the width: plain lines, see `PlainProgress`. Not `enabled`
    (processes other than the main one): silent.

    Args:
        output: the console shown on; adapt's stdout console by default.
        clock: seconds, for the plain lines' elapsed time and ETA (a test passes a fake clock).
    """
    if not enabled:
        return _Silent()
    output = output or console
    # is_terminal looks at the stream now (stdout may be redirected after import); is_interactive adds rich's
    # opt-outs (TERM=dumb, TTY_INTERACTIVE=0)
    if not (output.is_jupyter or (output.is_terminal and output.is_interactive)):
        return PlainProgress(output, clock)
    return Progress(
        TextColumn("{task.description}", style="bold blue", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("steps"), TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        console=output, transient=False, refresh_per_second=4,
    )


class PlainProgress:
    """Training progress as plain, complete lines for output that is not a terminal, one per new status (the loop
    sets one every `train.log_steps` steps, and at the last step), printed once the step it reports is counted:

        training 20/361 steps  loss 0.6812  lr 9.80e-05  41.3 samples/s  elapsed 0:00:12  ETA 0:03:25

    The ETA is the mean time per step since `add_task` (evaluations included) times the steps left; `-:--:--`
    before the first step. Each line is flushed, so `tail -f log.txt` and CI logs show it as it happens."""

    def __init__(self, output: Console, clock: Callable[[], float] = time.monotonic):
        self.output, self.clock = output, clock
        self.tasks: dict[int, dict] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description: str, total: int, completed: int = 0, status: str = "") -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = {"description": description, "total": total, "completed": completed, "status": status,
                               "start": self.clock(), "start_completed": completed, "pending": False}
        return task_id

    def update(self, task_id: int, completed: int | None = None, status: str | None = None) -> None:
        task = self.tasks[task_id]
        if status is not None and status != task["status"]:
            task["status"], task["pending"] = status, True
        if completed is not None:
            task["completed"] = completed
            if task["pending"]:
                task["pending"] = False
                self.output.out(self.line(task), highlight=False)
                self.output.file.flush()

    def line(self, task: dict) -> str:
        elapsed = self.clock() - task["start"]
        done, left = task["completed"] - task["start_completed"], task["total"] - task["completed"]
        eta = _clock_time(elapsed / done * left) if done > 0 else "-:--:--"
        status = f"  {task['status']}" if task["status"] else ""
        return (f"{task['description']} {task['completed']}/{task['total']} steps{status}  "
                f"elapsed {_clock_time(elapsed)}  ETA {eta}")


def _clock_time(seconds: float) -> str:
    """H:MM:SS (whole seconds, rounded down), as rich's time columns show it."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


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
