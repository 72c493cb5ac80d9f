"""The `adapt data inspect`, `adapt estimate` and `adapt runs` commands: parse options and hand off to
adapt.inspect_data, adapt.estimate and adapt.runs."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

RecipeOption = Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (see `adapt recipes`) or path to a YAML recipe.")]
OverridesArgument = Annotated[Optional[list[str]], typer.Argument(help="Recipe overrides as key=value, e.g. train.max_length=64 data.columns.text=sentence.", show_default=False)]
ModelOption = Annotated[Optional[str], typer.Option(help="Model (its tokenizer is used): Hub id, local folder, or embedded:NAME.")]
DataOption = Annotated[Optional[str], typer.Option(help="Training data: CSV/TSV/JSON/JSONL/Parquet file, Hub dataset id, or embedded:NAME.")]
ValidationOption = Annotated[Optional[str], typer.Option(help="Validation data; without it a seeded share of train is held out, as in finetune.")]
TestOption = Annotated[Optional[str], typer.Option(help="Test data.")]
MaxTrainOption = Annotated[Optional[int], typer.Option(help="Use at most this many training examples (seeded sample, as in finetune).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")]


def _recipe(name: str, overrides: list[str] | None, **flags: Any):
    """The recipe exactly as `adapt finetune` resolves it from the same flags and overrides."""
    from adapt.recipe import resolve_with_flags

    return resolve_with_flags(name, flags, overrides)


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_plot_path(plot: str) -> None:
    """Refuse, before any work, a plot path whose folder does not exist or whose name has no image suffix.

    Raises:
        AdaptError: naming --plot and the fix.
    """
    from pathlib import Path

    from adapt.errors import AdaptError

    path = Path(plot)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise AdaptError(f"--plot {plot}: the file name must end in {', '.join(PLOT_SUFFIXES)} (it sets the image "
                         "format); choose e.g. lengths.png")
    if not path.parent.is_dir():
        raise AdaptError(f"--plot {plot}: the folder {path.parent} does not exist; create it first or choose a path "
                         "in an existing folder")
    if path.is_dir():
        raise AdaptError(f"--plot {plot} is a folder; give a file name ending in .png, .svg or .pdf")


def _print_json(report: dict) -> None:
    typer.echo(json.dumps(report, indent=2, ensure_ascii=False, default=str))


def data_inspect_command(
    recipe: RecipeOption = "sentiment",
    overrides: OverridesArgument = None,
    model: ModelOption = None,
    data: DataOption = None,
    validation: ValidationOption = None,
    test: TestOption = None,
    max_train_examples: MaxTrainOption = None,
    plot: Annotated[Optional[str], typer.Option(help="Write a token-length histogram to this file (.png, .svg or .pdf; its folder must exist).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Check a recipe's data before training: sizes, labels, token lengths, truncation, duplicates, leakage."""
    from adapt.inspect_data import inspect_recipe

    if plot:
        check_plot_path(plot)

    resolved = _recipe(recipe, overrides, model=model, data=data, validation=validation, test=test,
                       max_train_examples=max_train_examples)
    report, lengths = inspect_recipe(resolved)
    if plot:
        from adapt.plots import length_histogram_png

        report["plot"] = str(length_histogram_png(lengths, report["max_length"], plot,
                                                  f"{resolved.name}: tokens per example"))
    if as_json:
        _print_json(report)
        return
    from rich.text import Text

    from adapt.inspect_data import inspect_tables
    from adapt.ui import console

    for table in inspect_tables(report):
        console.print(table)
    for note in report["warnings"]:
        console.print(Text.assemble(("warning:", "yellow"), " ", note))  # the note is literal text
    if plot:
        console.print(f"length histogram written to {report['plot']}")


def estimate_command(
    recipe: RecipeOption = "sentiment",
    overrides: OverridesArgument = None,
    model: ModelOption = None,
    data: DataOption = None,
    validation: ValidationOption = None,
    test: TestOption = None,
    max_train_examples: MaxTrainOption = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the training data.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per micro-batch.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Micro-batches accumulated per optimizer step.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (overrides --epochs).")] = None,
    eval_steps: Annotated[Optional[int], typer.Option(help="Evaluate every N optimizer steps (counted in the estimate).")] = None,
    timed_steps: Annotated[int, typer.Option(min=1, help="Real training steps to time after one untimed warm-up step.")] = 3,
    as_json: JsonOption = False,
) -> None:
    """Estimate a run before starting it: optimizer steps, training FLOPs, and duration on this machine."""
    from adapt.estimate import estimate, estimate_table

    resolved = _recipe(recipe, overrides, model=model, data=data, validation=validation, test=test,
                       max_train_examples=max_train_examples, epochs=epochs, batch_size=batch_size,
                       grad_accum=grad_accum, max_steps=max_steps, eval_steps=eval_steps)
    report = estimate(resolved, timed_steps)
    if as_json:
        _print_json(report)
    else:
        from adapt.ui import console

        console.print(estimate_table(report))


def runs_command(
    directory: Annotated[str, typer.Argument(help="Folder holding run folders (searched at any depth).")] = "runs",
    as_json: JsonOption = False,
) -> None:
    """List past runs: task, model, steps, wall time, validation metric, date (newest first)."""
    from pathlib import Path

    from adapt.runs import list_runs, runs_table

    runs = list_runs(Path(directory))
    if as_json:
        _print_json({"runs": runs})
        return
    from adapt.ui import console

    if not runs:
        console.print(f"no runs in {directory} (a run folder holds metrics.json and recipe.yaml)")
        return
    console.print(runs_table(runs, Path(directory)))
